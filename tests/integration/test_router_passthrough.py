"""Bytes pass through: what the backend sent is what the client got, with requests and curl."""

from __future__ import annotations

import json
import subprocess

import requests

from tests.conftest import Stack

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "x_client_field": [1, 2]}


def headers(stack: Stack, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.key}", **extra}


def sent_by_backends(stack: Stack) -> list[bytes]:
    return [body for backend in stack.chat for body in backend.sent]


def test_json_answer_is_byte_exact_and_request_body_unchanged(stack: Stack) -> None:
    raw = json.dumps(CHAT, indent=1).encode()  # odd formatting must survive too
    reply = requests.post(stack.router.base_url + "/chat/completions", data=raw,
                          headers=headers(stack, **{"Content-Type": "application/json"}))
    assert reply.status_code == 200
    assert [reply.content] == sent_by_backends(stack)
    received = [r.body for b in stack.chat for r in b.received]
    assert received == [raw]


def test_stream_with_client_usage_is_byte_exact(stack: Stack) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with requests.post(stack.router.base_url + "/chat/completions", json=body, headers=headers(stack),
                       stream=True) as reply:
        got = b"".join(reply.iter_content(None))
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert [got] == sent_by_backends(stack)
    assert got.endswith(b"data: [DONE]\n\n") and b'"usage":{' in got


def test_stream_without_client_usage_loses_only_the_usage_event(stack: Stack) -> None:
    body = {**CHAT, "stream": True}
    with requests.post(stack.router.base_url + "/chat/completions", json=body, headers=headers(stack),
                       stream=True) as reply:
        got = b"".join(reply.iter_content(None))
    (sent,) = sent_by_backends(stack)
    usage_events = [e for b in stack.chat for e in b.usage_events]
    assert len(usage_events) == 1  # the router asked the backend for usage...
    assert got == sent.replace(usage_events[0], b"")  # ...and the client never saw it
    assert b'"usage"' not in got and got.endswith(b"data: [DONE]\n\n")


def test_multipart_body_is_forwarded_verbatim(stack: Stack) -> None:
    audio = bytes(range(256)) * 64 + b'\r\n--not-a-boundary\r\nname="model"\r\n'
    request = requests.Request(
        "POST", stack.router.base_url + "/audio/transcriptions", headers=headers(stack),
        files={"file": ("clip.wav", audio, "audio/wav")},
        data={"model": "fake-whisper", "language": "en", "response_format": "json"},
    ).prepare()
    reply = requests.Session().send(request)
    assert reply.status_code == 200, reply.text
    (received,) = stack.whisper.received
    assert received.body == request.body
    assert received.headers["Content-Type"] == request.headers["Content-Type"]
    assert reply.json()["text"] == "hello from the fake whisper"


def test_backend_error_passes_through_unchanged(stack: Stack) -> None:
    for backend in stack.chat:
        backend.config.failure = "500"
    reply = requests.post(stack.router.base_url + "/chat/completions", json=CHAT, headers=headers(stack))
    assert reply.status_code == 500
    assert [reply.content] == sent_by_backends(stack)  # not retried, not rewritten
    assert reply.json()["error"]["code"] == "boom"


def test_request_id_is_echoed_or_made(stack: Stack) -> None:
    mine = requests.post(stack.router.base_url + "/chat/completions", json=CHAT,
                         headers=headers(stack, **{"x-request-id": "trace-123"}))
    assert mine.headers["x-request-id"] == "trace-123"
    made = requests.get(stack.router.url + "/health")
    assert len(made.headers["x-request-id"]) >= 16
    assert made.json()["status"] == "ok"


def test_curl_chat_json_and_stream(stack: Stack) -> None:
    base = ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {stack.key}",
            "-H", "Content-Type: application/json"]
    url = stack.router.base_url + "/chat/completions"
    plain = subprocess.run([*base, url, "-d", json.dumps(CHAT)], capture_output=True, check=True, timeout=30)
    assert json.loads(plain.stdout)["choices"][0]["message"]["content"].startswith("tok0")
    streamed = subprocess.run([*base, "-N", url, "-d", json.dumps({**CHAT, "stream": True})],
                              capture_output=True, check=True, timeout=30)
    assert streamed.stdout.count(b"data: ") == 6 and streamed.stdout.endswith(b"data: [DONE]\n\n")
    (stream_sent,) = [s for s in sent_by_backends(stack) if s.endswith(b"data: [DONE]\n\n")]
    (usage_event,) = [e for backend in stack.chat for e in backend.usage_events]
    assert streamed.stdout == stream_sent.replace(usage_event, b"")


def test_curl_transcription_and_models(stack: Stack, tmp_path: object) -> None:
    auth = ["-H", f"Authorization: Bearer {stack.key}"]
    clip = f"{tmp_path}/clip.wav"
    with open(clip, "wb") as f:
        f.write(b"RIFF fake wave")
    result = subprocess.run(["curl", "-sS", "--fail-with-body", *auth, stack.router.base_url + "/audio/transcriptions",
                             "-F", f"file=@{clip}", "-F", "model=fake-whisper"],
                            capture_output=True, check=True, timeout=30)
    assert json.loads(result.stdout)["text"] == "hello from the fake whisper"
    assert b"RIFF fake wave" in stack.whisper.received[0].body
    listing = subprocess.run(["curl", "-sS", "--fail-with-body", *auth, stack.router.base_url + "/models"],
                             capture_output=True, check=True, timeout=30)
    assert json.loads(listing.stdout)["object"] == "list"
