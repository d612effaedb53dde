"""A fake OpenAI backend fast enough never to be the bottleneck: raw asyncio HTTP/1.1, uvloop.

Answers chat (JSON with usage, or SSE paced like a model, with a usage chunk when
`stream_options.include_usage`), embeddings (4096 floats, body built once) and health.
The stream length is the request's `max_tokens` (default --chunks); the pace is the body's
`bench_interval_ms` (default --interval-ms), so one backend serves every benchmark phase.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Any, cast

import orjson

from bench.http11 import Request, parse_request

DIMENSIONS = 4096


@dataclass(frozen=True)
class Config:
    """How the backend answers; `secret` is the key it demands, as vLLM's --api-key does."""

    secret: str | None = None
    chunks: int = 50
    interval_s: float = 0.01


@dataclass(frozen=True)
class Bodies:
    """Every response body that does not depend on the request, built once."""

    chat: bytes
    embeddings: bytes
    models: bytes
    content_event: bytes
    finish_event: bytes
    done_event: bytes


def _frame(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(value: Any) -> bytes:
    return _frame(b"data: " + orjson.dumps(value) + b"\n\n")


def _chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
        "model": "bench-chat",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def build_bodies() -> Bodies:
    """The precomputed bodies; the embedding is 4096 floats like qwen3-embedding-8B's."""
    usage = {"prompt_tokens": 10, "completion_tokens": 16, "total_tokens": 26}
    chat = {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench-chat",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "ok " * 16}}],
        "usage": usage,
    }
    vector = [((i * 7919) % 1000) / 1000.0 - 0.5 for i in range(DIMENSIONS)]
    embeddings = {
        "object": "list", "model": "bench-embed",
        "data": [{"object": "embedding", "index": 0, "embedding": vector}],
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    models = {"object": "list", "data": [
        {"id": name, "object": "model", "owned_by": "bench"} for name in ("bench-chat", "bench-embed")
    ]}
    return Bodies(
        chat=orjson.dumps(chat), embeddings=orjson.dumps(embeddings), models=orjson.dumps(models),
        content_event=_event(_chunk({"content": "tok"}, None)),
        finish_event=_event(_chunk({}, "stop")), done_event=_frame(b"data: [DONE]\n\n") + b"0\r\n\r\n",
    )


def usage_event(chunks: int) -> bytes:
    """The final usage chunk of a stream of CHUNKS tokens."""
    usage = {"prompt_tokens": 10, "completion_tokens": chunks, "total_tokens": 10 + chunks}
    value = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
             "model": "bench-chat", "choices": [], "usage": usage}
    return _event(value)


def response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    """A complete keep-alive response."""
    return b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status, content_type, len(body), body)


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
UNAUTHORIZED = response(401, b'{"error":{"message":"bad key","type":"invalid_request_error"}}')
NOT_FOUND = response(404, b'{"error":{"message":"not found","type":"invalid_request_error"}}')


class Stream:
    """One paced SSE answer; stops when the client goes away."""

    def __init__(self, proto: "BackendProtocol", chunks: int, interval: float, usage: bool) -> None:
        self.proto, self.chunks, self.interval, self.usage = proto, chunks, interval, usage
        self.sent = 0
        self.loop = asyncio.get_running_loop()
        self.start = self.loop.time()
        self.handle: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        self.proto.write(STREAM_HEAD)
        self.tick()

    def tick(self) -> None:
        bodies = self.proto.bodies
        if self.sent < self.chunks:
            self.proto.write(bodies.content_event)
            self.sent += 1
        if self.sent < self.chunks:
            # absolute deadlines: the pace does not drift with load
            self.handle = self.loop.call_at(self.start + self.sent * self.interval, self.tick)
            return
        tail = bodies.finish_event + (usage_event(self.chunks) if self.usage else b"")
        self.proto.write(tail + bodies.done_event)
        self.handle = None
        self.proto.stream_done()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


class BackendProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order."""

    def __init__(self, config: Config, bodies: Bodies) -> None:
        self.config, self.bodies = config, bodies
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None
        self.auth = b"Bearer " + config.secret.encode() if config.secret else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its interface
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.cancel()
        self.transport = None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.drain()

    def stream_done(self) -> None:
        self.stream = None
        self.drain()

    def drain(self) -> None:
        while self.stream is None:
            parsed = parse_request(self.buffer)
            if parsed is None:
                return
            request, length = parsed
            del self.buffer[:length]
            self.answer(request)

    def answer(self, request: Request) -> None:
        path = request.path.split(b"?")[0]
        if path in (b"/health", b"/v1/health"):
            self.write(response(200, b"{}"))
        elif self.auth is not None and request.headers.get(b"authorization") != self.auth:
            self.write(UNAUTHORIZED)
        elif path == b"/v1/models":
            self.write(response(200, self.bodies.models))
        elif path == b"/v1/embeddings":
            self.write(response(200, self.bodies.embeddings))
        elif path in (b"/v1/chat/completions", b"/v1/completions"):
            self.chat(request.body)
        else:
            self.write(NOT_FOUND)

    def chat(self, body: bytes) -> None:
        if b'"stream"' not in body:
            self.write(response(200, self.bodies.chat))
            return
        data = orjson.loads(body)
        if not data.get("stream"):
            self.write(response(200, self.bodies.chat))
            return
        chunks = int(data.get("max_tokens") or self.config.chunks)
        interval = float(data.get("bench_interval_ms", self.config.interval_s * 1000)) / 1000
        usage = bool((data.get("stream_options") or {}).get("include_usage"))
        self.stream = Stream(self, chunks, interval, usage)
        self.stream.begin()


async def serve(host: str, port: int, config: Config) -> None:
    """Serve until cancelled."""
    bodies = build_bodies()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BackendProtocol(config, bodies), host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.fast_backend --port P [--secret S] [--chunks N] [--interval-ms MS]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default=None)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    config = Config(secret=args.secret, chunks=args.chunks, interval_s=args.interval_ms / 1000)
    import uvloop

    uvloop.run(serve(args.host, args.port, config))


if __name__ == "__main__":
    main()
