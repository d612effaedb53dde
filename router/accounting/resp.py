"""A lean Redis client for the limiter: one connection, commands pipelined, replies parsed by hiredis.

redis-py's asyncio client checks a connection out of a pool for every command; on the request
path that cost as much CPU as the router's own work. Here every command goes to one connection
and its reply is matched in order (Redis answers in order), so concurrent requests share the
connection without waiting for each other. The commands of one event-loop iteration leave in
one write (one system call for a burst's admissions and settlements), and one watchdog per
connection, not a timer per command, notices a server that stopped answering. Errors are
redis-py's exception types, so callers need to know only one family.
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
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()  # with the time each was sent
        self._outgoing: list[bytes] = []  # commands of this loop iteration, written together
        self._opening = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []  # the connection's reader and watchdog

    async def call(self, *args: Any) -> Any:
        """Send one command and return its reply (ResponseError for an error reply)."""
        if self._writer is None:
            await self._open()
        reply = await self._queue(args)
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    def send(self, *args: Any) -> asyncio.Future[Any] | None:
        """Send one command without waiting for its reply (None when not connected).

        The reply, or the error, completes the returned future; read it with `reply_of`.
        """
        return None if self._writer is None else self._queue(args)

    def _queue(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((future, loop.time()))
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(hiredis.pack_command(args))
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self._writer is not None and outgoing:
            self._writer.write(b"".join(outgoing))

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
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._read(reader, writer)), loop.create_task(self._watch(writer))]
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
                        future, _ = self._pending.popleft()
                        if not future.done():
                            future.set_result(reply)
        except (OSError, hiredis.ProtocolError):
            pass
        if self._writer is writer:
            self._drop(ConnectionError("Redis closed the connection"))

    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        """Redis hangs: the oldest command waited TIMEOUT_S, so every command on the connection fails."""
        loop = asyncio.get_running_loop()
        while self._writer is writer:
            await asyncio.sleep(min(1.0, self._timeout_s / 4))
            if self._pending and loop.time() - self._pending[0][1] >= self._timeout_s:
                self._drop(RedisTimeoutError(f"Redis did not answer within {self._timeout_s:g} s"))

    def _drop(self, error: Exception) -> None:
        """Forget the connection; every command waiting on it (or not yet written) fails with ERROR."""
        writer, self._writer = self._writer, None
        pending, self._pending, self._outgoing = self._pending, deque(), []
        for future, _ in pending:
            if not future.done():
                future.set_exception(error)
        if writer is not None:
            writer.close()
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()


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
