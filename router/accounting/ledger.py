"""The usage ledger: the one module that writes usage rows.

`record` only adds to an in-memory aggregate per day x key x model (and, if enabled, queues a
per-request row); a background task cuts a batch every `ledger_flush_s` and writes it in a
thread, with upserts. Every batch has an id unique across routers and restarts (this router's
instance id and a sequence number), written in the batch's own transaction: a batch retried
after an unclear failure is written exactly once.

When the database is unavailable the batches wait, in memory up to `max_rows` rows, past that
in this router's spill file (ledger_spill.py), and are written, oldest first, when it returns; a
graceful stop spills what it could not write, and the next start on the same spill folder
writes it. A crash loses at most the last flush interval (plus in-memory batches of an outage).
A batch the database refuses is written row by row: a row it refuses (a poisoned value) is
dropped and logged, the others are written, so one bad row never blocks the rest. No prompt or
answer text ever reaches this module.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from launcher.core.settings import RouterSettings, spill_dir

from router.accounting.seam import Usage
from router.accounting.ledger_db import Batch, DailyKey, PendingRow, RequestRow, write_batch, prune_requests
from router.accounting.ledger_db import load_totals, unavailable, write_each
from router.accounting.ledger_spill import SpillFiles, registry_folder

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 3600.0
DEFAULT_MAX_ROWS = 50_000


class Ledger:
    """Batches usage in memory and writes each batch once, off the event loop."""

    def __init__(
        self, engine: Engine, *, flush_s: float = 1.0, per_request: bool = False,
        retention_days: int = 30, max_rows: int = DEFAULT_MAX_ROWS, spill_dir: Path | None = None,
    ) -> None:
        self._engine = engine
        self._flush_s = flush_s
        self._per_request = per_request
        self._retention_s = retention_days * 86400.0
        self._max_rows = max_rows
        self.instance = uuid.uuid4().hex[:16]
        self._seq = 0
        self._daily: dict[DailyKey, PendingRow] = {}
        self._requests: list[RequestRow] = []
        self._queue: deque[Batch] = deque()  # cut, not yet written; oldest first
        self._spill = None if spill_dir is None else SpillFiles(registry_folder(spill_dir, engine), self.instance)
        self._adopted = False
        self._writing = asyncio.Lock()
        self._day_num = -1
        self._day_str = ""
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self.failed_batches = 0
        self.dropped_rows = 0  # rows the database refused, dropped so that the others get written
        self.written_rows = 0  # rows written (a batch found already written counts once, before)
        self.spilled_rows_total = 0  # rows ever moved to a spill file
        self.db_errors = 0  # writes that failed because the database was unavailable

    @classmethod
    def from_settings(cls, rs: RouterSettings, engine: Engine) -> Ledger:
        """The ledger the [router] settings RS describe, on the registry ENGINE."""
        return cls(engine, flush_s=rs.ledger_flush_s, per_request=rs.per_request_usage,
                   retention_days=rs.usage_retention_days, max_rows=rs.ledger_max_rows, spill_dir=spill_dir(rs))

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
        """Rows not yet written and held in memory: the aggregate, request rows, waiting batches."""
        return len(self._daily) + len(self._requests) + sum(b.rows for b in self._queue)

    @property
    def spilled(self) -> int:
        """Rows in spill files (this router's and adopted ones), not yet written."""
        return self._spill.rows if self._spill is not None else 0

    async def load_totals(self, now: float) -> dict[int, tuple[list[float], list[float]]]:
        """Per key: (today, this month) as [requests, prompt, completion, reasoning, audio].

        Spill files left by a stopped router are written first, so the totals include them.
        """
        await self._adopt_and_write()
        return await asyncio.to_thread(load_totals, self._engine, now)

    async def start(self) -> None:
        """Write adopted spill files, prune old rows and start the periodic flush."""
        self._stop.clear()
        await self._adopt_and_write()
        await self._prune(time.time())
        self._task = asyncio.create_task(self._run(), name="usage-ledger")

    async def close(self) -> None:
        """Stop the periodic flush and write everything pending; spill what cannot be written."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.flush()
        async with self._writing:
            if self._queue and self._spill is not None:
                await self._spill_oldest(0)
            if self.pending:
                log.error("usage ledger: %d rows could not be written before the stop and are lost",
                          self.pending)
            if self._spill is not None:
                if self.spilled:
                    log.warning("usage ledger: %d rows wait in %s; the next router started on it "
                                "writes them", self.spilled, self._spill.directory)
                self._spill.close()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self._flush_s)
            except TimeoutError:
                pass
            try:
                await self.flush()
            except Exception:  # e.g. a spill file that cannot be read: the loop must outlive it
                log.exception("usage ledger: a flush failed; the next one tries again")
            if time.time() - self._last_prune >= PRUNE_EVERY_S:
                await self._prune(time.time())

    async def flush(self) -> None:
        """Cut the current batch and write every waiting batch, oldest first, in a thread.

        While the database is unavailable batches wait (memory, then the spill file); a batch it
        refuses is written row by row and only the refused rows are dropped.
        """
        if self._daily or self._requests:
            self._seq += 1
            self._queue.append(Batch(f"{self.instance}:{self._seq}", self._daily, self._requests))
            self._daily, self._requests = {}, []
        async with self._writing:
            if await self._write_spilled():
                await self._write_queue()
            if self._spill is not None and self.pending > self._max_rows:
                await self._spill_oldest(self._max_rows)

    async def _adopt_and_write(self) -> None:
        if self._spill is None or self._adopted:
            return
        self._adopted = True
        async with self._writing:
            if await asyncio.to_thread(self._spill.adopt):
                await self._write_spilled()

    async def _write_spilled(self) -> bool:
        """Write the spill files' batches; True when none is left."""
        if self._spill is None or not self._spill.rows:
            return True
        batches = await asyncio.to_thread(self._spill.load)
        for batch in batches:
            if not await self._write(batch):
                return False
        self._spill.clear()
        return True

    async def _write_queue(self) -> None:
        while self._queue:
            batch = self._queue[0]
            if not await self._write(batch, requeue=True):
                return
            if self._queue and self._queue[0] is batch:
                self._queue.popleft()

    async def _write(self, batch: Batch, *, requeue: bool = False) -> bool:
        """Write BATCH once; False when the database is unavailable (the batch waits)."""
        try:
            if await asyncio.to_thread(write_batch, self._engine, batch):
                self.written_rows += batch.rows
            return True
        except Exception as exc:
            self.failed_batches += 1
            if unavailable(exc):
                self.db_errors += 1
                log.warning("usage ledger: writing batch %s (%d rows) failed, it waits: %s",
                            batch.id, batch.rows, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                return False
            log.warning("usage ledger: the database refused batch %s of %d rows (%s); writing them one by one",
                        batch.id, batch.rows, type(exc).__name__)
        kept, dropped = await asyncio.to_thread(write_each, self._engine, batch)
        self.dropped_rows += dropped
        self.written_rows += batch.rows - dropped - sum(k.rows for k in kept)
        if not kept:
            return True
        # The rows still owed, under their own ids, in the refused batch's place; a spilled batch
        # stays in its file, and its rows already written are skipped by id when it is replayed.
        if requeue:
            self._queue.popleft()
            self._queue.extendleft(reversed(kept))
        self.db_errors += 1
        return False

    async def _spill_oldest(self, keep_rows: int) -> None:
        """Move the oldest waiting batches to the spill file until at most KEEP_ROWS stay in memory."""
        assert self._spill is not None
        moved: list[Batch] = []
        while self._queue and self.pending > keep_rows:
            moved.append(self._queue.popleft())
        if not moved:
            return
        try:
            await asyncio.to_thread(self._spill.append, moved)
        except OSError as exc:  # a full or unwritable disk: keep them in memory, past the bound
            self._queue.extendleft(reversed(moved))
            log.error("usage ledger: cannot spill to %s (%s); %d rows stay in memory",
                      self._spill.directory, exc, self.pending)
            return
        self.spilled_rows_total += sum(b.rows for b in moved)
        log.warning("usage ledger: the database is unavailable; %d rows spilled to %s",
                    sum(b.rows for b in moved), self._spill.directory)

    async def _prune(self, now: float) -> None:
        self._last_prune = now
        try:
            await asyncio.to_thread(prune_requests, self._engine, now - self._retention_s,
                                    requests=self._per_request)
        except Exception as exc:
            log.warning("usage ledger: pruning old rows failed: %s", exc)


def describe(ledger: Ledger) -> dict[str, Any]:
    """Ledger state for health pages: what is still waiting to be written."""
    return {"pending_rows": ledger.pending, "spilled_rows": ledger.spilled,
            "written_rows": ledger.written_rows, "failed_batches": ledger.failed_batches,
            "dropped_rows": ledger.dropped_rows, "db_errors": ledger.db_errors}
