"""A steady mix of OpenAI requests for tests: chat, embeddings and long streams, each checked whole.

`Load(url, key, ...).start()` runs clients on an event loop of their own (a thread) until `stop()`,
or until its bounds in time and count are reached; every answer that is not a 200 with its full
content, and every stream that does not end with [DONE], is a failure with a line saying why.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp

DONE = b"data: [DONE]\n\n"
LARGE_BYTES = 100 * 1024  # a request body above the 64 KiB buffer of the documented haproxy.cfg


def fake_text(tokens: int) -> str:
    """What tests.fake_backend answers with `chunks=TOKENS`."""
    return "".join(f"tok{i} " for i in range(tokens))


@dataclass
class Tally:
    """Requests answered in full, by kind; failures, one line each; the load's duration."""

    done: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Mix:
    """How many clients of each kind, the models they use, and what a full answer holds."""

    chat_model: str
    embed_model: str
    tokens: int  # the chat backend's chunks: the words of every chat answer and stream
    chat_clients: int = 2
    embed_clients: int = 2
    large_clients: int = 1  # embeddings of LARGE_BYTES: more than HAProxy can hold to retry
    stream_clients: int = 6
    stream_s: float = 0.0  # how long a stream takes: stream clients start this far apart in all
    pause_s: float = 0.05  # between two requests of a chat or embeddings client
    max_s: float = 240.0
    max_requests: int = 50_000


class Load:
    """Clients sending MIX through URL with KEY, on a thread of their own, until stopped."""

    def __init__(self, url: str, key: str, mix: Mix) -> None:
        self._url, self._key, self._mix = url, key, mix
        self._stop = threading.Event()
        self.tally = Tally()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Tally:
        """Stop sending; requests in flight finish (each is bounded by its own timeout)."""
        self._stop.set()
        if self._thread.ident is None:  # never started
            return self.tally
        self._thread.join(120)
        assert not self._thread.is_alive(), "the load generator did not stop"
        return self.tally

    async def _run(self) -> None:
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {self._key}"}
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), headers=headers,
                                         timeout=timeout) as session:
            mix = self._mix
            kinds = [("chat", self._chat, mix.pause_s)] * mix.chat_clients
            kinds += [("embeddings", self._embeddings, mix.pause_s)] * mix.embed_clients
            kinds += [("large", self._large, mix.pause_s)] * mix.large_clients
            kinds += [("stream", self._stream, 0.0)] * mix.stream_clients
            stagger = [0.0] * (mix.chat_clients + mix.embed_clients + mix.large_clients)
            # streams that start together end together: spread them so some are always mid-way
            stagger += [i * mix.stream_s / mix.stream_clients for i in range(mix.stream_clients)]
            await asyncio.gather(*(self._client(session, *kind, delay) for kind, delay in zip(kinds, stagger)))
        self.tally.seconds = time.monotonic() - started

    async def _client(self, session: aiohttp.ClientSession, kind: str,
                      send: Callable[[aiohttp.ClientSession], Awaitable[str | None]], pause_s: float,
                      delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        deadline = time.monotonic() + self._mix.max_s
        tally = self.tally
        while not self._stop.is_set() and time.monotonic() < deadline:
            if sum(tally.done.values()) + len(tally.failures) >= self._mix.max_requests:
                return
            try:
                problem = await send(session)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                tally.done[kind] += 1
            else:
                tally.failures.append(f"{kind}: {problem}")
            await asyncio.sleep(pause_s)

    async def _chat(self, session: aiohttp.ClientSession) -> str | None:
        body = {"model": self._mix.chat_model, "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(self._url + "/v1/chat/completions", json=body) as reply:
            data = await reply.read()
        if reply.status != 200:
            return f"{reply.status} {data[:300]!r}"
        content = json.loads(data)["choices"][0]["message"]["content"]
        return None if content == fake_text(self._mix.tokens) else f"partial answer {content!r}"

    async def _embeddings(self, session: aiohttp.ClientSession) -> str | None:
        return await self._embed(session, ["one two", "three four five"])

    async def _large(self, session: aiohttp.ClientSession) -> str | None:
        return await self._embed(session, ["word " * (LARGE_BYTES // 10)] * 2)

    async def _embed(self, session: aiohttp.ClientSession, texts: list[str]) -> str | None:
        body = {"model": self._mix.embed_model, "input": texts}
        async with session.post(self._url + "/v1/embeddings", json=body) as reply:
            data = await reply.read()
        if reply.status != 200:
            return f"{reply.status} {data[:300]!r}"
        vectors = [item["embedding"] for item in json.loads(data)["data"]]
        return None if len(vectors) == 2 and all(vectors) else f"partial answer {data[:300]!r}"

    async def _stream(self, session: aiohttp.ClientSession) -> str | None:
        body = {"model": self._mix.chat_model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with session.post(self._url + "/v1/chat/completions", json=body) as reply:
            data = await reply.read()  # to the end: a stream cut short raises or lacks [DONE]
        if reply.status != 200:
            return f"{reply.status} {data[:300]!r}"
        if not data.endswith(DONE):
            return f"stream without [DONE], ends with {data[-200:]!r}"
        text = "".join(_deltas(data))
        return None if text == fake_text(self._mix.tokens) else f"stream missing content: {text!r}"


def _deltas(data: bytes) -> list[str]:
    """The content pieces of an SSE chat stream, in order."""
    pieces = []
    for line in data.split(b"\n"):
        if not line.startswith(b"data: {"):
            continue
        event: dict[str, Any] = json.loads(line[len(b"data: "):])
        for choice in event.get("choices", []):
            pieces.append(choice.get("delta", {}).get("content") or "")
    return pieces
