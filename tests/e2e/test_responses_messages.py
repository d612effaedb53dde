"""The Responses API and the Anthropic Messages API on the demo's real vLLM, through the router,
with the real `openai` and `anthropic` SDKs."""

from __future__ import annotations

import anthropic
import pytest

from tests.e2e.conftest import DemoStack

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

MODEL = "qwen3.5-122b-nonthinking"
ASK = [{"role": "user", "content": "Name a colour."}]


def claude(stack: DemoStack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url.removesuffix("/v1"), api_key=stack.key, max_retries=0)


def test_responses_create_plain_and_streamed(demo_stack: DemoStack) -> None:
    client = demo_stack.client()
    response = client.responses.create(model=MODEL, input="Name a prime number.", max_output_tokens=16)
    assert response.output_text and response.usage is not None
    assert 0 < response.usage.output_tokens <= 16 and response.usage.input_tokens > 0
    types = [e.type for e in client.responses.create(model=MODEL, input="Count to three.", max_output_tokens=8,
                                                     stream=True)]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types


def test_messages_create_streamed_and_count_tokens(demo_stack: DemoStack) -> None:
    client = claude(demo_stack)
    message = client.messages.create(model=MODEL, max_tokens=16, messages=ASK)  # type: ignore[arg-type]
    assert message.content and 0 < message.usage.output_tokens <= 16
    with client.messages.stream(model=MODEL, max_tokens=8, messages=ASK) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.input_tokens == message.usage.input_tokens
    counted = client.messages.count_tokens(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=demo_stack.base_url.removesuffix("/v1"), api_key="sk-llm-nope",
                            max_retries=0).messages.create(model=MODEL, max_tokens=8, messages=ASK)  # type: ignore[arg-type]
