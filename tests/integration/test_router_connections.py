"""Slow and silent clients (slowloris) and too many connections: the router closes or refuses them
and keeps serving everyone else. Raw sockets against a router on a real port."""

from __future__ import annotations

import json
import math
import selectors
import socket
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
import requests

from launcher.core.settings import RouterSettings, SettingsError
from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend

ROOT = Path(__file__).resolve().parents[2]
PER_KIND = 100  # three kinds: 300 slow connections (2 CPUs; 1,000 behave the same, see docs/reliability.md)
SHORT = {"header_timeout_s": 1.0, "body_timeout_s": 1.0, "keepalive_timeout_s": 3.0}
CONNECTION_SETTINGS = ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s", "max_connections",
                       "max_response_bytes")
HALF_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nX-Slow: "


def short_body(key: str) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer " + key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": \"fake-chat\"")


def open_slow(port: int, payload: bytes, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if payload:
            sock.sendall(payload)
        socks.append(sock)
    return socks


def read_until_closed(socks: list[socket.socket], within_s: float) -> tuple[dict[socket.socket, bytes], int]:
    """What each socket received until the router closed it, and how many were still open after WITHIN_S."""
    got = {sock: b"" for sock in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + within_s
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except ConnectionError:
                data = b""
            got[sock] += data
            if not data:
                selector.unregister(sock)
    still_open = len(selector.get_map())
    selector.close()
    for sock in socks:
        sock.close()
    return got, still_open


def assert_envelope_answer(raw: bytes, status: int, code: str) -> None:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == str(status).encode(), raw[:200]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error


@pytest.fixture
def chat(make_backend: Callable[..., FakeBackend], registry: Registry) -> str:
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    return registry.add_key("alice")


def ask(router: RouterHandle, key: str) -> str:
    client = openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0, timeout=10)
    reply = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}])
    client.close()
    return reply.choices[0].message.content or ""


def test_slow_and_silent_connections_are_closed_while_others_are_served(
        make_router: Callable[..., RouterHandle], chat: str) -> None:
    router = make_router(**SHORT)
    half = open_slow(router.port, HALF_HEAD, PER_KIND)
    body = open_slow(router.port, short_body(chat), PER_KIND)
    silent = open_slow(router.port, b"", PER_KIND)
    assert ask(router, chat)  # served while 300 slow connections are open
    got, still_open = read_until_closed(half + body + silent, within_s=15)
    assert still_open == 0
    for sock in half:  # part of a request came: told why
        assert_envelope_answer(got[sock], 408, "request_timeout")
    for sock in body:
        assert_envelope_answer(got[sock], 408, "request_timeout")
    assert all(got[sock] == b"" for sock in silent)  # nothing came: nothing to answer
    assert ask(router, chat)
    deadline = time.monotonic() + 5
    while router.runner.server.connections and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)
    assert not router.runner.server.connections  # type: ignore[union-attr]


def test_an_idle_keep_alive_connection_lasts_keepalive_timeout_not_header_timeout(
        make_router: Callable[..., RouterHandle], chat: str) -> None:
    router = make_router(**SHORT)
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer " + chat.encode() + b"\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(2.0)  # past header_timeout_s, within keepalive_timeout_s: still usable
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer " + chat.encode() + b"\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    _, still_open = read_until_closed([sock], within_s=10)
    assert still_open == 0
    assert 2.0 < time.monotonic() - started < 6.0


def test_past_max_connections_a_new_connection_gets_503_and_others_recover(
        make_router: Callable[..., RouterHandle], chat: str) -> None:
    router = make_router(max_connections=20, header_timeout_s=30.0)
    held = open_slow(router.port, b"", 20)
    deadline = time.monotonic() + 5
    while len(router.runner.server.connections) < 20 and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.02)
    refused = requests.get(router.base_url + "/models", headers={"Authorization": f"Bearer {chat}"}, timeout=10)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "7"  # the test settings' retry_after_s
    assert refused.json()["error"]["code"] == "too_many_connections"
    assert refused.headers["x-request-id"]
    for sock in held:
        sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            assert ask(router, chat)
            break
        except openai.InternalServerError:
            time.sleep(0.05)
    else:
        pytest.fail("still refused after the held connections closed")


def test_connection_limits_are_finite_documented_and_cannot_be_switched_off(
        make_router: Callable[..., RouterHandle]) -> None:
    defaults = RouterSettings()
    guide = (ROOT / "docs" / "admin-guide.md").read_text()
    for name in CONNECTION_SETTINGS:
        value = getattr(defaults, name)
        assert 0 < value < math.inf, name
        assert f"| `{name}` | `{value}` |" in guide, name
    assert defaults.header_timeout_s <= 30 and defaults.body_timeout_s <= 60 and defaults.keepalive_timeout_s <= 300
    for name in CONNECTION_SETTINGS:
        with pytest.raises(SettingsError, match=name):
            make_router(**{name: 0})
