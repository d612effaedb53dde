"""The usage ledger: the one module that writes usage rows.

`record` only adds to an in-memory aggregate per day x key x model (and, if enabled, queues a
per-request row); a background task hands the batch to a thread every `ledger_flush_s`, which
adds it to the database with upserts. A crash loses at most the last flush interval; a
graceful shutdown (`close`) loses nothing the database can take. A batch the database refuses is
written row by row: a row it refuses (a poisoned value) is dropped and logged, the others are
written, so one bad row never blocks the rest. No prompt or answer text ever reaches this module.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from router.accounting.seam import Usage
from router.accounting.ledger_db import DailyKey, PendingRow, RequestRow, write_batch, prune_requests
from router.accounting.ledger_db import load_totals, unavailable, write_each

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0


class Ledger:
    """Batches usage in memory and writes it off the event loop."""

    def __init__(
        self, engine: Engine, *, flush_s: float = 1.0, per_request: bool = False,
        retention_days: int = 30,
    ) -> None:
        self._engine = engine
        self._flush_s = flush_s
        self._per_request = per_request
        self._retention_s = retention_days * 86400.0
        self._daily: dict[DailyKey, PendingRow] = {}
        self._requests: list[RequestRow] = []
        self._day_num = -1
        self._day_str = ""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self.failed_batches = 0
        self.dropped_rows = 0  # rows the database refused, dropped so that the others get written

    def record(
        self, request_id: str, key_id: int, key_name: str, account: str | None, model: str,
        status: int, usage: Usage, backend: str | None, started_at: float, now: float,
    ) -> None:
        """Add one finished request; cheap and non-blocking (runs on the event loop)."""
        day = self._day(now)
        row = self._daily.get((day, key_id, model))
        if row is None:
            row = self._daily[(day, key_id, model)] = [key_name, account, 0, 0, 0, 0, 0, 0, 0.0]
        row[2] += 1
        if status >= 400:
            row[3] += 1
        if usage.estimated:
            row[4] += 1
        row[5] += usage.prompt_tokens
        row[6] += usage.completion_tokens
        row[7] += usage.reasoning_tokens
        row[8] += usage.audio_seconds
        if self._per_request:
            self._requests.append((
                started_at, request_id, key_id, model, status, usage.prompt_tokens,
                usage.completion_tokens, usage.reasoning_tokens, usage.audio_seconds,
                (now - started_at) * 1000.0, backend, int(usage.estimated),
            ))

    def _day(self, now: float) -> str:
        num = int(now // 86400)
        if num != self._day_num:
            self._day_num = num
            self._day_str = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
        return self._day_str

    @property
    def pending(self) -> int:
        """Aggregate rows plus request rows not yet written."""
        return len(self._daily) + len(self._requests)

    async def load_totals(self, now: float) -> dict[int, tuple[list[float], list[float]]]:
        """Per key: (today, this month) as [requests, prompt, completion, reasoning, audio]."""
        return await asyncio.to_thread(load_totals, self._engine, now)

    async def start(self) -> None:
        """Prune old request rows and start the periodic flush."""
        self._stop.clear()
        await self._prune(time.time())
        self._task = asyncio.create_task(self._run(), name="usage-ledger")

    async def close(self) -> None:
        """Stop the periodic flush and write everything pending."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        if self.pending:
            log.error("usage ledger: %d rows could not be written before the stop and are lost", self.pending)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self._flush_s)
            except TimeoutError:
                pass
            await self.flush()
            if time.time() - self._last_prune >= PRUNE_EVERY_S:
                await self._prune(time.time())

    async def flush(self) -> None:
        """Write the current batch in a thread.

        When the database is unavailable the batch is kept for the next flush; when it refuses
        the batch, the rows are written one by one and only the refused ones are dropped.
        """
        if not self._daily and not self._requests:
            return
        daily, requests = self._daily, self._requests
        self._daily, self._requests = {}, []
        try:
            await asyncio.to_thread(write_batch, self._engine, daily, requests)
            return
        except Exception as exc:
            self.failed_batches += 1
            if unavailable(exc):  # keep the usage: the next flush retries it
                log.exception("usage ledger: writing %d rows failed; kept for the next flush",
                              len(daily) + len(requests))
                self._merge_back(daily, requests)
                return
            log.warning("usage ledger: the database refused a batch of %d rows (%s); writing them one by one",
                        len(daily) + len(requests), type(exc).__name__)
        daily, requests, dropped = await asyncio.to_thread(write_each, self._engine, daily, requests)
        self.dropped_rows += dropped
        self._merge_back(daily, requests)

    def _merge_back(self, daily: dict[DailyKey, PendingRow], requests: list[RequestRow]) -> None:
        for key, old in daily.items():
            row = self._daily.get(key)
            if row is None:
                self._daily[key] = old
                continue
            for i in range(2, len(row)):
                row[i] += old[i]
        self._requests[:0] = requests

    async def _prune(self, now: float) -> None:
        self._last_prune = now
        if not self._per_request:
            return
        try:
            await asyncio.to_thread(prune_requests, self._engine, now - self._retention_s)
        except Exception:
            log.exception("usage ledger: pruning old request rows failed")


def describe(ledger: Ledger) -> dict[str, Any]:
    """Ledger state for health pages: what is still waiting to be written."""
    return {"pending_rows": ledger.pending, "failed_batches": ledger.failed_batches,
            "dropped_rows": ledger.dropped_rows}
