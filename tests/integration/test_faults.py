"""Fault injection with real processes and sockets: backends that die, stall, babble or read slowly;
the router SIGKILLed under load; several writers on the registry at once; a read-only or full disk.

Each test prints a line `FAULT <name>: sent=… ok=… failed=… lost=…` (run with -s to see them):
failed means the client got a well-formed error (the envelope, or an SSE error event), lost means
it got nothing usable (a cut connection, a hang). No fault may lose a request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable

import pytest
import requests

from tests.conftest import SECRET, LoopThread, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.integration.fault_tools import (
    CHAT, MisbehavingServer, Tally, burst, chat_answer, free_port, one_request, process_backend, read_head,
)

STREAM_CHAT = {"chunks": 40, "chunk_delay_ms": 25}


def _pair(registry: Registry, make_backend: Callable[..., FakeBackend], bad_url: str) -> FakeBackend:
    """A healthy replica next to BAD_URL, both serving fake-chat."""
    good = make_backend(models=["fake-chat"], secret=SECRET, **STREAM_CHAT)
    registry.add_backend("fake-chat", bad_url)
    registry.add_backend("fake-chat", good.url)
    return good


def test_backend_process_killed_mid_stream(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
) -> None:
    port = free_port()
    proc = process_backend(port, "--chunks", "40", "--chunk-delay-ms", "25")
    _pair(registry, make_backend, f"http://127.0.0.1:{port}")
    key = registry.add_key("k")
    router = make_router(stall_timeout_s=5.0)
    tally = Tally("backend killed mid-stream")
    during = threading.Thread(target=burst, args=(12, lambda: one_request(router.url, key, tally, stream=True), 12))
    during.start()
    time.sleep(0.4)  # streams from both replicas are under way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    during.join(60)
    burst(12, lambda: one_request(router.url, key, tally, stream=True))  # after the kill: the other replica
    tally.report()
    assert tally.lost == 0
    assert 0 < tally.failed <= 6  # only the streams already under way on the killed process
    assert tally.statuses.get("stream-error-event", 0) == tally.failed


def test_backend_that_accepts_and_never_answers(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
    servers: LoopThread,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads everything, answers nothing, until the router hangs up

    bad = MisbehavingServer(servers, silent).start()
    _pair(registry, make_backend, bad.url)
    key = registry.add_key("k")
    router = make_router()
    tally = Tally("backend accepts and never answers")
    burst(8, lambda: one_request(router.url, key, tally))
    burst(16, lambda: one_request(router.url, key, tally))  # the silent one is out of rotation now
    tally.report()
    bad.stop()
    assert tally.lost == 0
    assert tally.failed == tally.statuses.get("504", 0) <= 8  # a stall is a 504, never replayed elsewhere
    assert tally.ok >= 16


@pytest.mark.parametrize("garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"x",
                                     b"HTTP/1.1 99999 WHAT\r\n\r\n", b"\x00\xff" * 512],
                         ids=["not-http", "short-body", "bad-status", "binary"])
def test_backend_that_answers_garbage(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
    servers: LoopThread, garbage: bytes,
) -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = await read_head(reader)
        await reader.readexactly(length)
        writer.write(garbage)
        await writer.drain()

    bad = MisbehavingServer(servers, babble).start()
    _pair(registry, make_backend, bad.url)
    key = registry.add_key("k")
    router = make_router()
    tally = Tally(f"backend answers garbage ({garbage[:12]!r})")
    burst(16, lambda: one_request(router.url, key, tally))
    tally.report()
    bad.stop()
    assert tally.lost == 0 and tally.failed == 0  # nothing reached the client yet: retried on the good one


def test_backend_that_closes_after_the_headers(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
) -> None:
    bad = make_backend(models=["fake-chat"], secret=SECRET, failure="close_after_headers")
    _pair(registry, make_backend, bad.url)
    key = registry.add_key("k")
    router = make_router()
    tally = Tally("backend closes after the headers")
    burst(8, lambda: one_request(router.url, key, tally))
    burst(8, lambda: one_request(router.url, key, tally, stream=True))
    tally.report()
    assert tally.lost == 0 and tally.failed == 0


def test_backend_slow_to_read_the_request_body(
    registry: Registry, make_router: Callable[..., RouterHandle], servers: LoopThread,
) -> None:
    """64 KiB every 50 ms: slow but moving, so the request succeeds (no total timeout cuts it)."""
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = await read_head(reader)
        while length > 0:
            length -= len(await reader.read(min(length, 65536)))
            await asyncio.sleep(0.05)
        writer.write(chat_answer())
        await writer.drain()

    bad = MisbehavingServer(servers, slow).start()
    registry.add_backend("fake-chat", bad.url)
    key = registry.add_key("k")
    router = make_router(stall_timeout_s=5.0)
    big = {**CHAT, "pad": "x" * (3 * 1024 * 1024)}
    tally = Tally("backend slow to read a 3 MiB body")
    burst(2, lambda: one_request(router.url, key, tally, body=big), workers=2)
    tally.report()
    bad.stop()
    assert tally.ok == 2


def test_backend_that_never_reads_the_request_body(
    registry: Registry, make_router: Callable[..., RouterHandle], servers: LoopThread,
) -> None:
    """It stops reading: the router gives up on the stall timeout with a 504 instead of hanging."""
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(3600)

    bad = MisbehavingServer(servers, deaf).start()
    registry.add_backend("fake-chat", bad.url)
    key = registry.add_key("k")
    router = make_router(stall_timeout_s=1.0)
    big = {**CHAT, "pad": "x" * (7 * 1024 * 1024)}
    tally = Tally("backend never reads a 7 MiB body")
    burst(2, lambda: one_request(router.url, key, tally, body=big, timeout=60), workers=2)
    tally.report()
    bad.stop()
    assert tally.lost == 0 and tally.failed == 2


def test_a_large_body_sent_in_pieces_arrives_byte_for_byte(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
) -> None:
    """Bodies over 256 KiB go upstream in pieces under the stall deadline: same bytes, same length header."""
    backend = make_backend(models=["fake-whisper"], secret=SECRET)
    registry.add_backend("fake-whisper", backend.url, kind="transcription")
    key = registry.add_key("k")
    router = make_router()
    audio = bytes(range(256)) * 4096  # 1 MiB
    body = (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake-whisper\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + audio + b"\r\n--b--\r\n")
    reply = requests.post(router.url + "/v1/audio/transcriptions", data=body, timeout=30,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=b"})
    assert reply.status_code == 200
    received = backend.received[-1]
    assert received.body == body and received.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in received.headers
