"""A chat job killed under a stream: the client learns it, and the service heals itself.

Runs after the other e2e modules (file order): it replaces the chat job of the shared stack.
"""

from __future__ import annotations

import subprocess
from typing import Any

import openai
import pytest
import requests

from tests.e2e.conftest import DemoStack, model_entry
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]
CHAT: dict[str, Any] = {"model": "qwen3.5-122b", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}


def test_scancel_mid_stream_ends_the_stream_with_an_error_then_503_then_the_replacement_answers(
    demo_stack: DemoStack,
) -> None:
    old_job = demo_stack.ready("smollm2-135m")["job_id"]
    stream = demo_stack.client(timeout=120).chat.completions.create(
        model="qwen3.5-122b", messages=[{"role": "user", "content": "Tell a long story about a dragon."}],
        max_tokens=1000, stream=True, extra_body={"ignore_eos": True})  # long: it is still going when killed
    received = 0
    with pytest.raises(openai.APIError):
        for _ in stream:
            received += 1
            if received == 5:
                scancel = subprocess.run(["scancel", str(old_job)], env=demo_stack.env, capture_output=True,
                                         text=True, check=False)
                assert scancel.returncode == 0, scancel.stderr
    assert received >= 5

    wait_for(lambda: model_entry(demo_stack, "qwen3.5-122b")["status"] != "ready", 30, "the router to notice")
    first = _chat(demo_stack)
    assert first.status_code == 503, first.text
    assert int(first.headers["Retry-After"]) > 0 and first.json()["error"]["code"].startswith("model_")

    answer = wait_for(lambda: _ok(demo_stack), 400, "the supervisor's replacement to answer", poll_s=2)
    assert answer["choices"][0]["message"]["content"] is not None
    assert demo_stack.ready("smollm2-135m")["job_id"] != old_job


def _chat(stack: DemoStack) -> requests.Response:
    return requests.post(f"{stack.base_url}/chat/completions", json=CHAT, timeout=60,
                         headers={"Authorization": f"Bearer {stack.key}"})


def _ok(stack: DemoStack) -> dict[str, Any] | None:
    reply = _chat(stack)
    if reply.status_code == 503:
        return None
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body
