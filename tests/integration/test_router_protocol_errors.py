"""Requests that aiohttp's HTTP parser refuses before the app sees them get the OpenAI envelope too,
one log line and no traceback; the connection stays usable wherever HTTP allows."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.raw_http import exchange

CHAT = b'{"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture
def served(make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
           registry: Registry) -> tuple[RouterHandle, str]:
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    key = registry.add_key("alice")
    return make_router(), key


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[logging.LogRecord]]]:
    """The records of the router's and aiohttp's loggers so far; none may carry a traceback."""
    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.get_records("call") if r.name.startswith(("router", "aiohttp"))]

    with caplog.at_level(logging.DEBUG):
        yield records
    assert not [r for r in records() if r.exc_info], [r.getMessage() for r in records() if r.exc_info]


def answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP answers in DATA (Content-Length framed), in order."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        found.append((int(lines[0].split(" ")[1]), headers, rest[:length]))
        data = rest[length:]
    return found


def assert_envelope(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> None:
    got, headers, body = answer
    assert got == status, body
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    assert headers["content-type"].startswith("application/json") and headers["x-request-id"]


def request(key: str, body: bytes, **headers: str) -> bytes:
    head = {"Host": "router", "Authorization": f"Bearer {key}", "Content-Type": "application/json",
            "Content-Length": str(len(body)), **headers}
    return ("POST /v1/chat/completions HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
            + "\r\n").encode() + body


@pytest.mark.parametrize("payload", [
    b"GET /v1/models HTTP/1.1\r\nHost: router\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    b"GET /v1/" + b"m" * 9000 + b" HTTP/1.1\r\nHost: router\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: router\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
], ids=["header over 8 KB", "request line over 8 KB", "200 headers"])
def test_too_large_a_request_head_is_431_in_the_envelope(
        served: tuple[RouterHandle, str], logged: Callable[[], list[logging.LogRecord]], payload: bytes) -> None:
    router, key = served
    (answer,) = answers(exchange(router.port, payload))
    assert_envelope(answer, 431, "request_header_too_large")
    lines = [r for r in logged() if r.levelno >= logging.INFO and r.name != "router.health"]
    assert [r.getMessage() for r in lines] == ["refused a request from 127.0.0.1: 431 request_header_too_large"]
    assert requests.get(router.base_url + "/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


@pytest.mark.parametrize("payload", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
                                     b"GET /v1/models HTTP/1.1\r\nHost: router\r\nBad Header\r\n\r\n"],
                         ids=["tls on the plain port", "header without colon"])
def test_what_is_not_http_is_400_in_the_envelope(
        served: tuple[RouterHandle, str], logged: Callable[[], list[logging.LogRecord]], payload: bytes) -> None:
    router, _ = served
    (answer,) = answers(exchange(router.port, payload))
    assert_envelope(answer, 400, "invalid_http")


def test_a_body_that_is_not_the_gzip_it_claims_is_400_and_the_connection_closes_cleanly(
        served: tuple[RouterHandle, str], logged: Callable[[], list[logging.LogRecord]]) -> None:
    router, key = served
    bad = request(key, b"this is not gzip at all", **{"Content-Encoding": "gzip"})
    (answer,) = answers(exchange(router.port, bad + request(key, CHAT)))
    assert_envelope(answer, 400, "invalid_body")
    # The parser cannot find the next request after a body it failed to decode: the answer says so.
    assert answer[1]["connection"] == "close"
    with requests.Session() as session:  # a pooled client goes on, on a fresh connection
        url, auth = router.base_url + "/chat/completions", {"Authorization": f"Bearer {key}"}
        refused = session.post(url, data=b"not gzip", headers={**auth, "Content-Encoding": "gzip"})
        assert refused.status_code == 400
        assert session.post(url, data=CHAT, headers={**auth, "Content-Type": "application/json"}).status_code == 200


def test_a_refusal_the_app_makes_keeps_the_connection(
        served: tuple[RouterHandle, str], logged: Callable[[], list[logging.LogRecord]]) -> None:
    router, key = served
    good_gzip = request(key, gzip.compress(CHAT), **{"Content-Encoding": "gzip"})
    unknown = request(key, b'{"model": "nope", "messages": []}')
    last = request(key, CHAT, Connection="close")
    replies = answers(exchange(router.port, good_gzip + unknown + last))
    assert [status for status, _, _ in replies] == [200, 404, 200]
    assert_envelope(replies[1], 404, "model_not_found")
