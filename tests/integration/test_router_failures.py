"""Backends that are down, die, stall or lose their client: what the client and backend see."""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Callable

import openai
import pytest
import requests

from tests.conftest import LoopThread, RouterHandle, Registry, Stack
from router.state import STATE
from tests.fake_backend import FakeBackend

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


def post(stack: Stack, body: dict[str, object], **kwargs: object) -> requests.Response:
    return requests.post(stack.router.base_url + "/chat/completions", json=body,
                         headers={"Authorization": f"Bearer {stack.key}"}, timeout=30, **kwargs)  # type: ignore[arg-type]


def stop(servers: LoopThread, backend: FakeBackend) -> None:
    servers.run(backend.stop())


def test_dead_replica_fails_over_to_the_live_one(stack: Stack, servers: LoopThread) -> None:
    stop(servers, stack.chat[0])
    for _ in range(4):  # whichever replica rotation picks first, every request succeeds
        assert post(stack, CHAT).status_code == 200
    assert len(stack.chat[1].received) == 4
    listing = requests.get(stack.router.base_url + "/models", headers={"Authorization": f"Bearer {stack.key}"})
    assert {m["id"]: m["status"] for m in listing.json()["data"]}["fake-chat"] == "ready"


def test_no_replica_left_is_503_with_retry_after(stack: Stack, servers: LoopThread) -> None:
    for backend in stack.chat:
        stop(servers, backend)
    reply = post(stack, CHAT)
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "7"
    assert reply.json()["error"]["type"] == "server_error"
    again = post(stack, CHAT)  # both ejected now: refused at once, same answer
    assert again.status_code == 503 and again.headers["Retry-After"] == "7"


def test_close_after_headers_is_retried_on_the_other_replica(stack: Stack) -> None:
    stack.chat[0].config.failure = "close_after_headers"
    stack.chat[1].config.failure = None
    for _ in range(2):
        assert post(stack, CHAT).status_code == 200


def test_backend_dying_mid_stream_ends_the_stream_with_an_error(stack: Stack) -> None:
    for backend in stack.chat:
        backend.config.failure = "die_mid_stream"
    client = openai.OpenAI(base_url=stack.router.base_url, api_key=stack.key, max_retries=0)
    stream = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="mid-stream"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["tok0 ", "tok1 "]
    assert sum(len(b.received) for b in stack.chat) == 1  # never replayed


def test_stalled_backend_is_504(stack: Stack) -> None:
    for backend in stack.chat:
        backend.config.latency_ms = 3000
    reply = post(stack, CHAT)
    assert reply.status_code == 504
    assert reply.json()["error"]["code"] == "backend_timeout"
    assert sum(len(b.received) for b in stack.chat) == 1  # a stall is not retried


def test_stall_mid_stream_ends_with_an_error_event(stack: Stack) -> None:
    for backend in stack.chat:
        backend.config.failure = "stall"
    with post(stack, {**CHAT, "stream": True}, stream=True) as reply:
        body = b"".join(reply.iter_content(None))
    assert reply.status_code == 200
    events = [e for e in body.split(b"\n\n") if e]
    assert json.loads(events[-1][len(b"data: "):])["error"]["code"] == "backend_timeout"
    assert b"[DONE]" not in body


def test_client_disconnect_cancels_the_upstream_stream(stack: Stack) -> None:
    for backend in stack.chat:
        backend.config.chunks = 400
        backend.config.chunk_delay_ms = 20
    with socket.create_connection(("127.0.0.1", stack.router.port)) as sock:
        body = json.dumps({**CHAT, "stream": True}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {stack.key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert b"tok0" in _read_until(sock, b"tok0")
    deadline = time.monotonic() + 10
    while sum(b.cancelled for b in stack.chat) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sum(b.cancelled for b in stack.chat) == 1
    assert post(stack, CHAT).status_code == 200  # and the router carries on


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        data += sock.recv(65536)
    return data


def test_failed_probe_takes_a_backend_out_until_it_passes_again(
    make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle], registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="router.health")
    sick, well = make_backend(models=["fake-chat"]), make_backend(models=["fake-chat"])
    registry.add_backend("fake-chat", sick.url, secret=None)
    registry.add_backend("fake-chat", well.url, secret=None)
    key = registry.add_key("bob")
    sick.config.healthy = False
    router = make_router(health_interval_s=0.05)
    auth = {"Authorization": f"Bearer {key}"}
    view = router.app[STATE].view
    _wait(lambda: any(b.url == sick.url and not b.routable for b in view.snapshot.backends.values()))
    time.sleep(0.3)  # several more failing probe rounds
    for _ in range(4):
        assert requests.post(router.base_url + "/chat/completions", json=CHAT, headers=auth).status_code == 200
    assert [r.path for r in sick.received if r.method == "POST"] == []
    sick.config.healthy = True
    _wait(lambda: _serves(router, auth, sick))
    downs = [r for r in caplog.records if "is down" in r.getMessage() and sick.url in r.getMessage()]
    assert len(downs) == 1  # logged once, not once per probe


def _serves(router: RouterHandle, auth: dict[str, str], backend: FakeBackend) -> bool:
    requests.post(router.base_url + "/chat/completions", json=CHAT, headers=auth)
    return any(r.method == "POST" for r in backend.received)


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
