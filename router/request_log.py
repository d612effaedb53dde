"""One line per request on stderr: when, which request, what, how it ended, how long, whose key.

Never the key itself and never any body text.
"""

from __future__ import annotations

import asyncio
import time
from typing import TextIO


class RequestContext:
    """What the middleware and the handlers learn about one request, for the log line."""

    __slots__ = ("request_id", "started", "model", "key_id", "outcome")

    def __init__(self, request_id: str, started: float) -> None:
        self.request_id = request_id
        self.started = started
        self.model: str | None = None
        self.key_id: int | None = None
        # How a response that had already started really ended (e.g. 499, 502), for the log.
        self.outcome: int | None = None


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
            f"{self._timestamp(now)} {ctx.request_id} {method} {path} {ctx.outcome or status} "
            f"model={ctx.model or '-'} {ms:.1f}ms key={key}\n"
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
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        return self._stamp
