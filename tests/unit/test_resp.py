"""The limiter's Redis client against servers that misbehave: silent, gone, or answering errors."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from router.accounting.resp import RespClient


async def serve(answer: bytes | None) -> tuple[asyncio.Server, str]:
    """A TCP server that answers every read with ANSWER (None: never answers)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            if answer is not None:
                writer.write(answer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"


async def test_a_silent_server_times_out_every_waiting_command() -> None:
    """The documented bound: unreachable once a command waited timeout_s, checked every
    min(1 s, timeout_s / 4), so at most timeout_s and a quarter of it (10 s: at most 11 s)."""
    server, url = await serve(None)
    client = RespClient(url, timeout_s=0.4)
    started = time.monotonic()
    results = await asyncio.gather(client.call("PING"), client.call("PING"), return_exceptions=True)
    waited = time.monotonic() - started
    assert all(isinstance(r, TimeoutError) for r in results)
    assert 0.4 <= waited < 0.4 * 1.25 + 0.2  # 0.2 s for a busy machine's scheduling
    server.close()


async def test_an_error_reply_is_a_response_error_and_the_connection_stays() -> None:
    server, url = await serve(b"-ERR wrong\r\n")
    client = RespClient(url)
    for _ in range(2):
        with pytest.raises(ResponseError, match="wrong"):
            await client.call("GET", "x")
    server.close()
    await client.close()


async def test_nothing_listening_is_a_connection_error() -> None:
    server, url = await serve(b"+PONG\r\n")
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionError, match="cannot connect"):
        await RespClient(url).call("PING")


def test_only_redis_urls() -> None:
    with pytest.raises(ValueError, match="redis://"):
        RespClient("http://127.0.0.1:6379")
