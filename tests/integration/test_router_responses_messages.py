"""The Responses API and the Anthropic Messages API through the real router, with the real `openai`
and `anthropic` SDKs: passed through byte for byte, charged the backend's own counts, refused in
each API's own error shape, held to one key's limits across every endpoint."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import openai
import pytest
import requests
from sqlalchemy import select

from launcher.core.schema import UsageDaily
from launcher.core.settings import KeyLimits
from tests.conftest import LoopThread, Stack
from tests.fake_backend import AUTO

HI = [{"role": "user", "content": "hi there"}]


def oai(stack: Stack, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.router.base_url, api_key=key or stack.key, max_retries=0)


def claude(stack: Stack, key: str | None = None) -> anthropic.Anthropic:
    # the SDK appends /v1/messages itself, and sends the key as x-api-key
    return anthropic.Anthropic(base_url=stack.router.url, api_key=key or stack.key, max_retries=0)


def daily(stack: Stack) -> dict[str, Any]:
    with stack.registry.engine.connect() as conn:
        (row,) = conn.execute(select(UsageDaily).where(UsageDaily.model == "fake-chat")).mappings().all()
    return dict(row)


def reported(stack: Stack) -> list[dict[str, Any]]:
    """The usage each chat backend sent, read back from what it sent (JSON answers and usage events)."""
    found = []
    for backend in stack.chat:
        for body in backend.sent:
            if body.startswith(b"{"):
                found.append(json.loads(body)["usage"])
        for event in backend.usage_events:
            for line in event.splitlines():
                if line.startswith(b"data: ") and b'"usage"' in line:
                    doc = json.loads(line[6:])
                    found.append((doc.get("response") or doc)["usage"])
    return found


def test_responses_create_plain_and_streamed_pass_through_and_are_charged_exactly(
        stack: Stack, servers: LoopThread) -> None:
    client = oai(stack)
    plain = client.responses.create(model="fake-chat", input="hi there", max_output_tokens=64)
    assert plain.output_text == "tok0 tok1 tok2 tok3 tok4 " and plain.usage is not None
    events = list(client.responses.create(model="fake-chat", input="hi there", stream=True))
    assert [e.type for e in events][0] == "response.created" and events[-1].type == "response.completed"
    streamed_bytes = [b for backend in stack.chat for b in backend.sent if b.startswith(b"event:")]
    assert len(streamed_bytes) == 1
    servers.run(stack.router.runner.cleanup())  # a graceful stop writes what the ledger holds
    row, usages = daily(stack), reported(stack)
    assert (row["requests"], row["estimated_requests"]) == (2, 0)
    assert row["prompt_tokens"] == sum(u["input_tokens"] for u in usages) > 0
    assert row["completion_tokens"] == sum(u["output_tokens"] for u in usages) == 10
    assert row["reasoning_tokens"] == 6


def test_a_stream_the_backend_cuts_is_charged_what_was_streamed(stack: Stack, servers: LoopThread) -> None:
    for backend in stack.chat:
        backend.config.failure, backend.config.fail_after_chunks = "die_mid_stream", 2
    with requests.post(stack.router.url + "/v1/responses", stream=True, timeout=10,
                       json={"model": "fake-chat", "input": "hi", "stream": True},
                       headers={"Authorization": f"Bearer {stack.key}"}) as reply:
        body = b"".join(reply.iter_content(None))
    assert b"response.completed" not in body and body.count(b"event: response.output_text.delta") == 2
    servers.run(stack.router.runner.cleanup())
    row = daily(stack)
    assert row["estimated_requests"] == 1 and row["completion_tokens"] == 3  # created + 2 deltas seen


def test_messages_create_plain_streamed_and_count_tokens_with_the_anthropic_sdk(
        stack: Stack, servers: LoopThread) -> None:
    client = claude(stack)
    message = client.messages.create(model="fake-chat", max_tokens=64, messages=HI)  # type: ignore[arg-type]
    assert message.content[0].text == "tok0 tok1 tok2 tok3 tok4 "  # type: ignore[union-attr]
    with client.messages.stream(model="fake-chat", max_tokens=64, messages=HI) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 tok4 " and final.usage.output_tokens == 5
    counted = client.messages.count_tokens(model="fake-chat", messages=HI)  # type: ignore[arg-type]
    assert counted.input_tokens == message.usage.input_tokens > 0
    servers.run(stack.router.runner.cleanup())
    row = daily(stack)
    # count_tokens is a request and costs nothing; the stream's input came in message_start
    assert (row["requests"], row["estimated_requests"]) == (3, 0)
    assert row["prompt_tokens"] == 2 * message.usage.input_tokens and row["completion_tokens"] == 10


def test_anthropic_errors_have_anthropics_shape_and_the_sdks_exceptions(stack: Stack) -> None:
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        claude(stack, "sk-llm-nope").messages.create(model="fake-chat", max_tokens=8, messages=HI)  # type: ignore[arg-type]
    assert bad_key.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                             "message": "Incorrect API key provided"}}
    with pytest.raises(anthropic.NotFoundError) as unknown:
        claude(stack).messages.create(model="nobody", max_tokens=8, messages=HI)  # type: ignore[arg-type]
    assert unknown.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    # the same failure on an OpenAI path keeps OpenAI's envelope
    answer = requests.post(stack.router.url + "/v1/responses", json={"model": "nobody", "input": "hi"},
                           headers={"x-api-key": stack.key}, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"


def test_an_over_limit_message_is_the_sdks_rate_limit_error_and_reaches_no_backend(stack: Stack) -> None:
    key = stack.registry.add_key("tight", limits=KeyLimits(tpm=1000))
    for _ in range(100):  # /v1/me is free: wait for the registry read that brings the key
        if requests.get(stack.router.base_url + "/me", headers={"x-api-key": key}, timeout=10).ok:
            break
    for backend in stack.chat:
        backend.config.usage = {"input_tokens": 10, "output_tokens": 900}
    claude(stack, key).messages.create(model="fake-chat", max_tokens=900, messages=HI)  # type: ignore[arg-type]
    for backend in stack.chat:
        backend.config.usage = AUTO
    before = sum(len(b.received) for b in stack.chat)
    # 910 of 1000 used: 200 more output tokens do not fit, whichever API asks for them
    with pytest.raises(anthropic.RateLimitError) as refused:
        claude(stack, key).messages.create(model="fake-chat", max_tokens=200, messages=HI)  # type: ignore[arg-type]
    assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "tokens per minute" in refused.value.body["error"]["message"]  # type: ignore[index]
    assert int(refused.value.response.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        oai(stack, key).responses.create(model="fake-chat", input="hi", max_output_tokens=200)
    assert sum(len(b.received) for b in stack.chat) == before
    assert oai(stack, key).responses.create(model="fake-chat", input="hi", max_output_tokens=20).output_text


@pytest.mark.parametrize("usage", [{"input_tokens": -1, "output_tokens": 2}, {"input_tokens": 3, "output_tokens": "x"},
                                   {"input_tokens": 10 ** 15}, "lots"])
def test_hostile_usage_on_the_new_apis_is_charged_as_the_reservation(
        stack: Stack, servers: LoopThread, usage: Any) -> None:
    for backend in stack.chat:
        backend.config.usage = usage
    claude(stack).messages.create(model="fake-chat", max_tokens=100, messages=HI)  # type: ignore[arg-type]
    servers.run(stack.router.runner.cleanup())
    row = daily(stack)
    assert row["estimated_requests"] == 1 and row["completion_tokens"] == 100


async def test_rpm_holds_across_chat_responses_and_messages_on_one_key(stack: Stack) -> None:
    key = stack.registry.add_key("mixed", limits=KeyLimits(rpm=6))
    await asyncio.sleep(0.3)  # the registry read that brings the key
    bodies = {"/v1/chat/completions": {"messages": HI}, "/v1/responses": {"input": "hi"},
              "/v1/messages": {"messages": HI, "max_tokens": 8}}
    sent = [(path, body) for path, body in bodies.items()] * 8

    def one(path: str, body: dict[str, Any]) -> int:
        return requests.post(stack.router.url + path, json={"model": "fake-chat", **body}, timeout=10,
                             headers={"Authorization": f"Bearer {key}"}).status_code

    statuses = await asyncio.gather(*(asyncio.to_thread(one, p, b) for p, b in sent))
    assert statuses.count(200) == 6 and statuses.count(429) == 18


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/responses/resp_1"), ("DELETE", "/v1/responses/resp_1"), ("POST", "/v1/responses/resp_1/cancel"),
    ("GET", "/v1/responses/resp_1/input_items"),
])
def test_stored_response_paths_say_nothing_is_stored(stack: Stack, method: str, path: str) -> None:
    answer = requests.request(method, stack.router.url + path, headers={"Authorization": f"Bearer {stack.key}"},
                              timeout=10)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == "responses_not_stored" and "send the conversation with each request" in error["message"]
    assert not any(b.received for b in stack.chat)
    with pytest.raises(openai.NotFoundError):  # what the SDK raises for it
        oai(stack).responses.retrieve("resp_1")
    assert requests.request(method, stack.router.url + path, timeout=10).status_code == 401  # a key first
