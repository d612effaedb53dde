"""Bad input gets the OpenAI error envelope with the right status, and the router keeps serving."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from launcher.cli import main
from launcher.core.db import utcnow
from router.accounting.seam import NoAccounting
from tests.conftest import Stack

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


def call(stack: Stack, path: str = "/chat/completions", *, key: str | None = "default", method: str = "POST",
         **kwargs: Any) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {stack.key if key == 'default' else key}"
    return requests.request(method, stack.router.base_url + path, headers=headers, timeout=30, **kwargs)


def assert_envelope(reply: requests.Response, status: int, code: str | None = None) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    assert reply.headers["x-request-id"]


def still_serving(stack: Stack) -> None:
    assert call(stack, json=CHAT).status_code == 200


@pytest.mark.parametrize(("key", "code"), [(None, "missing_api_key"), ("sk-llm-wrong", "invalid_api_key")])
def test_missing_or_invalid_key_is_401(stack: Stack, key: str | None, code: str) -> None:
    assert_envelope(call(stack, json=CHAT, key=key), 401, code)
    assert_envelope(call(stack, "/models", key=key, method="GET"), 401, code)
    still_serving(stack)


def test_non_bearer_authorization_is_401(stack: Stack) -> None:
    reply = requests.post(stack.router.base_url + "/chat/completions", json=CHAT,
                          headers={"Authorization": f"Basic {stack.key}"})
    assert_envelope(reply, 401, "invalid_api_key")


def test_key_revoked_with_the_cli_is_refused(stack: Stack) -> None:
    still_serving(stack)
    result = CliRunner().invoke(main, ["--db", stack.registry.url, "keys", "revoke", "alice"])
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 10
    while (reply := call(stack, json=CHAT)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_envelope(reply, 401, "invalid_api_key")
    assert "revoked" in reply.json()["error"]["message"]


def test_expired_key_is_401(stack: Stack) -> None:
    old = stack.registry.add_key("old", expires_at=utcnow() - timedelta(minutes=1))
    time.sleep(0.3)  # the registry refresh picks the new key up
    reply = call(stack, json=CHAT, key=old)
    assert_envelope(reply, 401, "invalid_api_key")
    assert "expired" in reply.json()["error"]["message"]


def test_key_not_allowed_for_the_model_is_403(stack: Stack) -> None:
    narrow = stack.registry.add_key("narrow", models=["fake-embed"])
    time.sleep(0.3)
    assert_envelope(call(stack, json=CHAT, key=narrow), 403, "model_not_allowed")
    listed = call(stack, "/models", key=narrow, method="GET").json()["data"]
    assert [m["id"] for m in listed] == ["fake-embed"]


def test_unknown_model_is_404(stack: Stack) -> None:
    reply = call(stack, json={**CHAT, "model": "no-such-model"})
    assert_envelope(reply, 404, "model_not_found")
    assert reply.json()["error"]["param"] == "model"
    still_serving(stack)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b""])
def test_malformed_json_is_400(stack: Stack, body: bytes) -> None:
    assert_envelope(call(stack, data=body, headers={"Content-Type": "application/json"}), 400, "invalid_json")
    still_serving(stack)


@pytest.mark.parametrize("body", [{"messages": []}, {"model": ""}, {"model": 7}])
def test_missing_model_is_400(stack: Stack, body: dict[str, Any]) -> None:
    reply = call(stack, json=body)
    assert_envelope(reply, 400, "missing_model")
    assert reply.json()["error"]["param"] == "model"


def test_audio_without_model_is_400(stack: Stack) -> None:
    reply = call(stack, "/audio/transcriptions", files={"file": ("a.wav", b"RIFF")})
    assert_envelope(reply, 400, "missing_model")
    assert_envelope(call(stack, "/audio/transcriptions", data=b"x"), 400)


def test_body_too_large_is_413(stack: Stack, make_router: Any) -> None:
    # A second router on the same registry must not also enforce quotas: it runs without them.
    small = make_router(NoAccounting(), max_json_body_bytes=1000, max_body_bytes=2000)
    headers = {"Authorization": f"Bearer {stack.key}"}
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    reply = requests.post(small.base_url + "/chat/completions", json=big, headers=headers)
    assert_envelope(reply, 413, "request_too_large")
    audio = requests.post(small.base_url + "/audio/transcriptions", headers=headers,
                          files={"file": ("a.wav", b"0" * 5000)}, data={"model": "fake-whisper"})
    assert_envelope(audio, 413, "request_too_large")
    assert requests.post(small.base_url + "/chat/completions", json=CHAT, headers=headers).status_code == 200


def test_unknown_path_and_wrong_method(stack: Stack) -> None:
    assert_envelope(call(stack, "/no/such/thing", json=CHAT), 404, "unknown_url")
    assert_envelope(requests.get(stack.router.url + "/nowhere"), 404, "unknown_url")
    wrong = call(stack, "/chat/completions", method="GET")
    assert_envelope(wrong, 405, "method_not_allowed")
    assert "POST" in wrong.headers["Allow"]
    still_serving(stack)
