"""A lean Redis client for the limiter: one connection, commands pipelined, replies parsed by hiredis.

redis-py's asyncio client checks a connection out of a pool for every command; on the request
path that cost as much CPU as the router's own work. Here every command is written to one
connection at once and its reply is matched in order (Redis answers in order), so concurrent
requests share the connection without waiting for each other. Errors are redis-py's exception
types, so callers need to know only one family.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError, ResponseError, TimeoutError as RedisTimeoutError


class RespClient:
    """Commands to one Redis server over one lazily (re)opened connection."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"expected a redis:// URL, got {parts.scheme or url!r}")
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 6379
        self._password = unquote(parts.password) if parts.password else None
        self._db = int(parts.path.strip("/") or 0)
        self._timeout_s = timeout_s
        self._writer: asyncio.StreamWriter | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._opening = asyncio.Lock()
        self._reading: asyncio.Task[None] | None = None

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply (ResponseError for an error reply)."""
        writer = self._writer or await self._open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        writer.write(hiredis.pack_command(args))
        try:
            async with asyncio.timeout(self._timeout_s):
                reply = await future
        except TimeoutError:  # asyncio's: Redis hangs; every command on the connection fails
            error = RedisTimeoutError(f"Redis did not answer within {self._timeout_s:g} s")
            self._drop(error)
            raise error from None
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    def send(self, *args: Any) -> asyncio.Future[Any] | None:
        """Write one command now without waiting for its reply (None when not connected).

        The reply, or the error, completes the returned future; read it with `reply_of`.
        """
        if self._writer is None:
            return None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        self._writer.write(hiredis.pack_command(args))
        return future

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run SCRIPT by its digest, loading it once if the server does not know it."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call("SCRIPT", "LOAD", script.source)
        return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def close(self) -> None:
        self._drop(ConnectionError("the client was closed"))

    async def _open(self) -> asyncio.StreamWriter:
        async with self._opening:
            if self._writer is not None:
                return self._writer
            try:
                async with asyncio.timeout(self._timeout_s):
                    reader, writer = await asyncio.open_connection(self._host, self._port)
            except (OSError, asyncio.TimeoutError) as exc:
                raise ConnectionError(f"cannot connect to Redis at {self._host}:{self._port}: {exc}") from None
            self._writer = writer
            self._reading = asyncio.get_running_loop().create_task(self._read(reader, writer))
            try:
                if self._password is not None:
                    await self.call("AUTH", self._password)
                if self._db:
                    await self.call("SELECT", self._db)
            except BaseException:
                self._drop(ConnectionError("Redis refused the connection's set-up"))
                raise
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader(replyError=hiredis.ReplyError)
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    if self._pending:
                        future = self._pending.popleft()
                        if not future.done():
                            future.set_result(reply)
        except (OSError, hiredis.ProtocolError):
            pass
        if self._writer is writer:
            self._drop(ConnectionError("Redis closed the connection"))

    def _drop(self, error: Exception) -> None:
        """Forget the connection; every command waiting on it fails with ERROR."""
        writer, self._writer = self._writer, None
        pending, self._pending = self._pending, deque()
        for future in pending:
            if not future.done():
                future.set_exception(error)
        if writer is not None:
            writer.close()


def reply_of(future: asyncio.Future[Any]) -> Any:
    """The reply of a finished `send`: ResponseError for an error reply, the connection's error raised."""
    reply = future.result()
    if isinstance(reply, hiredis.ReplyError):
        raise ResponseError(str(reply))
    return reply


class Script:
    """A Lua script and its SHA1 digest, for EVALSHA."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
