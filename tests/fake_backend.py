"""A fake OpenAI backend: a real aiohttp server with configurable latency, chunks and failures.

Run it: `python -m tests.fake_backend --port 9001 --model fake-chat --chunks 20 --chunk-delay-ms 10`.
Import it: `FakeBackend(FakeConfig(...))`, then `await backend.start()`; it records what it received
and what it sent, so tests can compare bytes, and counts streams that a client cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import time
import wave
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests import fake_dialects

FAILURES = ("die_mid_stream", "stall", "500", "close_after_headers")


class _Auto:
    """The default of `FakeConfig.usage`: real counts computed from the request."""

    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()


@dataclass
class FakeConfig:
    models: list[str] = field(default_factory=lambda: ["fake-chat"])
    secret: str | None = None
    denied_status: int = 401  # the answer to a request without the secret
    chunks: int = 5
    chunk_delay_ms: float = 0.0
    latency_ms: float = 0.0
    embedding_dim: int = 8
    failure: str | None = None  # one of FAILURES
    fail_after_chunks: int = 2
    healthy: bool = True
    reasoning_tokens: int = 3
    # Any JSON value sent as `usage` instead of the computed one (chat, completions, streams, audio JSON).
    usage: Any = AUTO
    # False: every choice has `chunks` tokens whatever max_tokens says (a backend that ignores it).
    honour_max_tokens: bool = False
    audio_seconds: float = 3.0  # billed for audio that is not a readable WAV (a WAV: its length)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeBackend:
    """The server; mutate `config` between requests to change its behaviour."""

    def __init__(self, config: FakeConfig | None = None) -> None:
        self.config = config or FakeConfig()
        self.received: list[Received] = []
        self.sent: list[bytes] = []  # the full body of each answer, as sent
        self.usage_events: list[bytes] = []  # the usage event of each stream that had one
        self.cancelled = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        fake_dialects.mount(app, self)
        for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
            app.router.add_post(path, self._rerank)
        for path in ("/v1/score", "/score"):
            app.router.add_post(path, self._score)
        app.router.add_post("/v1/audio/transcriptions", self._audio)
        app.router.add_post("/v1/audio/translations", self._audio)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port or self.port, reuse_address=True).start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- handlers -----------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=200 if self.config.healthy else 503)

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request)) is not None:
            return denied
        if not self.config.healthy:
            return web.json_response({"error": "loading"}, status=503)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.config.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if (denied := self._denied(request)) is not None:
            return denied
        doc = json.loads(body)
        try:
            await asyncio.sleep(self.config.latency_ms / 1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.config.failure == "500":
            return self._send_json({"error": {"message": "backend exploded", "type": "server_error",
                                              "param": None, "code": "boom"}}, status=500)
        if self.config.failure == "close_after_headers":
            return await self._close_after_headers(request)
        chat = request.path.endswith("chat/completions")
        if doc.get("stream"):
            return await self._stream(request, doc, chat)
        return self._send_json(self._answer(doc, chat))

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if (denied := self._denied(request)) is not None:
            return denied
        doc = json.loads(body)
        inputs = doc["input"] if isinstance(doc["input"], list) else [doc["input"]]
        dim = self.config.embedding_dim
        data = [{"object": "embedding", "index": i, "embedding": [((i + j) % 97) / 97 - 0.5 for j in range(dim)]}
                for i in range(len(inputs))]
        tokens = sum(len(str(x).split()) for x in inputs)
        return self._send_json({"object": "list", "data": data, "model": doc["model"],
                                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _rerank(self, request: web.Request) -> web.Response:
        """vLLM's rerank answer: results by falling relevance (words shared with the query), total_tokens only."""
        body = await self._record(request)
        if (denied := self._denied(request)) is not None:
            return denied
        doc = json.loads(body)
        query, documents = doc["query"], doc["documents"]
        scored = sorted(((_overlap(query, d), i, d) for i, d in enumerate(documents)), key=lambda t: (-t[0], t[1]))
        results = [{"index": i, "document": {"text": d}, "relevance_score": score}
                   for score, i, d in scored[:doc.get("top_n") or len(documents)]]
        tokens = sum(len(str(x).split()) for x in [query, *documents])
        usage = self.config.usage if self.config.usage is not AUTO else {"total_tokens": tokens}
        return self._send_json({"id": "rerank-1", "model": doc["model"], "usage": usage, "results": results})

    async def _score(self, request: web.Request) -> web.Response:
        """vLLM's score answer: one score per text_2 against text_1."""
        body = await self._record(request)
        if (denied := self._denied(request)) is not None:
            return denied
        doc = json.loads(body)
        pairs = doc["text_2"] if isinstance(doc["text_2"], list) else [doc["text_2"]]
        data = [{"index": i, "object": "score", "score": _overlap(doc["text_1"], t)} for i, t in enumerate(pairs)]
        tokens = sum(len(str(x).split()) for x in [doc["text_1"], *pairs])
        usage = (self.config.usage if self.config.usage is not AUTO
                 else {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0})
        return self._send_json({"id": "score-1", "object": "list", "model": doc["model"], "data": data, "usage": usage})

    async def _audio(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if (denied := self._denied(request)) is not None:
            return denied
        await asyncio.sleep(self.config.latency_ms / 1000)
        text = "hello from the fake whisper"
        seconds = _wav_seconds(body) or self.config.audio_seconds
        if _form_value(body, "response_format") in ("text", "srt", "vtt"):
            # like launcher/engines/whisper/server.py: no usage in a plain answer, the length is a header
            self.sent.append(text.encode())
            return web.Response(text=text, content_type="text/plain", headers={"x-audio-seconds": "2.4"})
        usage = self.config.usage if self.config.usage is not AUTO else {"type": "duration", "seconds": seconds}
        return self._send_json({"text": text, "usage": usage})

    # --- helpers -------------------------------------------------------------------------

    def given_usage(self) -> Any:
        """The configured `usage` when one replaces the computed counts, else None."""
        return None if self.config.usage is AUTO else self.config.usage

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        self.received.append(Received(request.method, request.path, dict(request.headers), body))
        return body

    def _denied(self, request: web.Request) -> web.Response | None:
        secret = self.config.secret
        if secret and request.headers.get("Authorization") != f"Bearer {secret}":
            return web.json_response({"error": {"message": "bad backend key", "type": "invalid_request_error",
                                                "param": None, "code": None}}, status=self.config.denied_status)
        return None

    def _send_json(self, value: Any, status: int = 200) -> web.Response:
        body = json.dumps(value, separators=(",", ":")).encode()
        self.sent.append(body)
        return web.Response(body=body, status=status, content_type="application/json")

    def _usage(self, doc: dict[str, Any], chat: bool) -> Any:
        if self.config.usage is not AUTO:
            return self.config.usage
        prompt = len(json.dumps(doc.get("messages", doc.get("prompt", ""))).split())
        # Like vLLM: every sequence generated counts, best_of ones too (completions only).
        sequences = max(_count(doc.get("n")), 1 if chat else _count(doc.get("best_of")))
        completion = self._tokens(doc) * sequences
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "completion_tokens_details": {"reasoning_tokens": self.config.reasoning_tokens}}

    def _tokens(self, doc: dict[str, Any]) -> int:
        """Tokens of each choice: `chunks`, or fewer when max_tokens is honoured."""
        limit = doc.get("max_completion_tokens", doc.get("max_tokens"))
        if self.config.honour_max_tokens and isinstance(limit, int) and limit > 0:
            return min(self.config.chunks, limit)
        return self.config.chunks

    def _answer(self, doc: dict[str, Any], chat: bool) -> dict[str, Any]:
        text = "".join(f"tok{i} " for i in range(self._tokens(doc)))
        choices = []
        for index in range(_count(doc.get("n"))):
            choice: dict[str, Any] = {"index": index, "finish_reason": "stop", "logprobs": None}
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "reasoning_content": "thinking…"}
            else:
                choice["text"] = text
            choices.append(choice)
        return {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": doc.get("model"), "choices": choices,
                "usage": self._usage(doc, chat), "x_fake_unknown": {"kept": True}}

    def _chunk(self, doc: dict[str, Any], chat: bool, i: int, last: bool, index: int = 0) -> bytes:
        piece = f"tok{i} "
        choice: dict[str, Any] = {"index": index, "finish_reason": "stop" if last else None}
        if chat:
            choice["delta"] = {"content": piece, "reasoning_content": None}
        else:
            choice["text"] = piece
        event = {"id": "cmpl-fake", "object": "chat.completion.chunk" if chat else "text_completion",
                 "created": 1, "model": doc.get("model"), "choices": [choice]}
        return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

    async def _stream(self, request: web.Request, doc: dict[str, Any], chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = bytearray()
        try:
            await self._stream_body(request, response, doc, chat, sent)
        except _Died:
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        finally:
            self.sent.append(bytes(sent))
        await response.write_eof()
        return response

    async def _stream_body(self, request: web.Request, response: web.StreamResponse, doc: dict[str, Any],
                           chat: bool, sent: bytearray) -> None:
        config = self.config
        tokens, choices = self._tokens(doc), _count(doc.get("n"))
        for i in range(tokens):
            if config.failure in ("die_mid_stream", "stall") and i == config.fail_after_chunks:
                await self._fail_mid_stream(request)
            for index in range(choices):  # one event per choice and token, as vLLM sends them
                await self._write(response, self._chunk(doc, chat, i, i == tokens - 1, index), sent)
            if config.chunk_delay_ms:
                await asyncio.sleep(config.chunk_delay_ms / 1000)
        options = doc.get("stream_options") or {}
        if options.get("include_usage"):
            event: dict[str, Any] = {"id": "cmpl-fake", "object": "chat.completion.chunk", "created": 1,
                     "model": doc.get("model"), "choices": [], "usage": self._usage(doc, chat)}
            usage = b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
            self.usage_events.append(usage)
            await self._write(response, usage, sent)
        await self._write(response, b"data: [DONE]\n\n", sent)

    async def _fail_mid_stream(self, request: web.Request) -> None:
        if self.config.failure == "stall":
            await asyncio.sleep(3600)
        assert request.transport is not None
        request.transport.abort()  # the connection drops without the final chunk
        raise _Died()

    async def _write(self, response: web.StreamResponse, data: bytes, sent: bytearray) -> None:
        await response.write(data)
        sent.extend(data)

    async def _close_after_headers(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        assert request.transport is not None
        request.transport.abort()
        return response


def _overlap(query: Any, text: Any) -> float:
    """A relevance score in [0, 1]: the share of the query's words in TEXT."""
    words = set(str(query).lower().split())
    return len(words & set(str(text).lower().split())) / max(1, len(words))


def _count(value: Any) -> int:
    """A request's `n` or `best_of`: 1 unless a positive integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def _wav_seconds(body: bytes) -> float | None:
    """The length of the WAV file in a multipart BODY, read with the standard library; None if not one."""
    start = body.find(b"RIFF")
    if start < 0:
        return None
    try:
        with wave.open(io.BytesIO(body[start:])) as wav:
            return float(wav.getnframes() / wav.getframerate())
    except (wave.Error, EOFError, RuntimeError, ZeroDivisionError):  # RuntimeError: a chunk cut short
        return None


def _form_value(body: bytes, name: str) -> str | None:
    """A text field of a multipart body, found the simple way (fields the tests send are short)."""
    marker = f'name="{name}"'.encode()
    at = body.find(marker)
    if at < 0:
        return None
    start = body.find(b"\r\n\r\n", at) + 4
    return body[start:body.find(b"\r\n", start)].decode()


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI-compatible backend for tests and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret")
    parser.add_argument("--secret-env", help="Read the secret from this environment variable (not argv, which `ps` shows).")
    parser.add_argument("--model", action="append", dest="models")
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--embedding-dim", type=int, default=8)
    parser.add_argument("--failure", choices=FAILURES)
    parser.add_argument("--no-record", action="store_true", help="Keep nothing in memory (benchmarks).")
    args = parser.parse_args()
    secret = os.environ.get(args.secret_env) or None if args.secret_env else args.secret
    config = FakeConfig(models=args.models or ["fake-chat"], secret=secret, chunks=args.chunks,
                        chunk_delay_ms=args.chunk_delay_ms, latency_ms=args.latency_ms,
                        embedding_dim=args.embedding_dim, failure=args.failure)
    asyncio.run(_serve(FakeBackend(config), args.host, args.port, args.no_record))


async def _serve(backend: FakeBackend, host: str, port: int, no_record: bool) -> None:
    if no_record:
        backend.received = _Discard()
        backend.sent = _Discard()
    await backend.start(host, port)
    print(f"fake backend on {backend.url}", flush=True)
    # TERM (a job's drain or scancel): stop listening, finish the requests in flight, exit 0,
    # as the `command` engine asks of its servers.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await backend.stop()


class _Died(Exception):
    """The configured mid-stream death happened."""


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        return None


if __name__ == "__main__":
    main()
