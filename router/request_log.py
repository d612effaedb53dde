"""One line per request on stderr: when, which request, what, how it ended, how long, whose key.

Plain text, or JSON lines (`router.log_format = "json"`). Never the key itself and never any
body text.
"""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

import orjson

from launcher.core.settings import SettingsError
from router.accounting.seam import QuotaExceeded, Usage

LOG_FORMATS = ("text", "json")


class RequestContext:
    """What the middleware and the handlers learn about one request, for the log line."""

    __slots__ = ("request_id", "started", "model", "key_id", "outcome", "endpoint", "usage", "backend",
                 "ttft_s", "refusal")

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started
        self.model: str | None = None
        self.key_id: int | None = None
        # How a response that had already started really ended (e.g. 499, 502), for the log.
        self.outcome: int | None = None
        self.endpoint: str | None = None  # "chat", "embeddings", ... for proxied requests
        self.usage: Usage | None = None
        self.backend: str | None = None  # the URL of the backend that answered
        self.ttft_s: float | None = None  # seconds to the first streamed chunk
        self.refusal: QuotaExceeded | None = None  # the quota refusal, for metrics by limit


class RequestLog:
    """The access log: lines are batched (one write per flush, not one per request)."""

    def __init__(self, stream: TextIO, max_pending: int = 256) -> None:
        self._stream = stream
        self._pending: list[str] = []
        self._max_pending = max_pending
        self._second = -1
        self._stamp = ""

    def write(self, method: str, path: str, status: int, ctx: RequestContext) -> None:
        """Append one line for a finished request."""
        now = time.time()
        ms = (time.perf_counter() - ctx.started) * 1000.0
        key = "-" if ctx.key_id is None else ctx.key_id
        self._pending.append(
            f"{self._timestamp(now)} {ctx.request_id} {method} {_field(path)} {ctx.outcome or status} "
            f"model={_field(ctx.model or '-')} {ms:.1f}ms key={key}\n"
        )
        if len(self._pending) >= self._max_pending:
            self.flush()

    def flush(self) -> None:
        """Write out the lines so far."""
        if self._pending:
            lines, self._pending = self._pending, []
            self._stream.write("".join(lines))
            self._stream.flush()

    async def run(self, interval_s: float) -> None:
        """Flush every INTERVAL_S seconds, so a quiet router's lines still show up promptly."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                self.flush()
        finally:
            self.flush()

    def _timestamp(self, now: float) -> str:
        """The second's ISO time, formatted once per second."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._stamp


def _field(text: str) -> str:
    """TEXT as one log field: a client's CR, LF or space (in a model name, a decoded path) cannot forge lines."""
    if text.isprintable() and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


class JsonRequestLog(RequestLog):
    """The access log as JSON lines: ts, request_id, method, path, status, model, latency_ms,
    ttft_ms, key_id, backend, prompt_tokens, completion_tokens (no key, no text)."""

    def write(self, method: str, path: str, status: int, ctx: RequestContext) -> None:
        """Append one JSON line for a finished request."""
        now = time.time()
        usage = ctx.usage
        line = {
            "ts": f"{self._timestamp(now)[:-1]}.{int(now * 1000) % 1000:03d}Z", "request_id": ctx.request_id,
            "method": method, "path": path, "status": ctx.outcome or status, "model": ctx.model,
            "latency_ms": round((time.perf_counter() - ctx.started) * 1000.0, 2),
            "ttft_ms": None if ctx.ttft_s is None else round(ctx.ttft_s * 1000.0, 2),
            "key_id": ctx.key_id, "backend": ctx.backend,
            "prompt_tokens": usage.prompt_tokens if usage else None,
            "completion_tokens": usage.completion_tokens if usage else None,
        }
        self._pending.append(orjson.dumps(line).decode() + "\n")
        if len(self._pending) >= self._max_pending:
            self.flush()


def make_request_log(log_format: str, stream: TextIO) -> RequestLog:
    """The access log in LOG_FORMAT ("text" or "json")."""
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"[router] log_format: expected \"text\" or \"json\", got {log_format!r}")
    return JsonRequestLog(stream) if log_format == "json" else RequestLog(stream)
