"""The ledger's database side: batches written once by id, batched upserts, retention pruning,
budget reload (run in threads)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Callable, TypeVar

from sqlalchemy import Connection, Engine, case, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError

from launcher.core.db import run_with_retries
from launcher.core.schema import LedgerBatch, UsageDaily, UsageRequest

log = logging.getLogger(__name__)

DailyKey = tuple[str, int, str]  # day (YYYY-MM-DD, UTC), key id, model
# [key_name, account, requests, errors, estimated, prompt, completion, reasoning, audio_seconds]
PendingRow = list[Any]
# (started_at, request_id, key_id, model, status, prompt, completion, reasoning, audio,
#  latency_ms, backend, estimated)
RequestRow = tuple[float, str, int, str, int, int, int, int, float, float, str | None, int]

COUNTERS = ("requests", "errors", "estimated_requests", "prompt_tokens", "completion_tokens",
            "reasoning_tokens", "audio_seconds")
REQUEST_COLUMNS = ("ts", "request_id", "key_id", "model", "status", "prompt_tokens",
                   "completion_tokens", "reasoning_tokens", "audio_seconds", "latency_ms",
                   "backend", "estimated")
T = TypeVar("T")
WRITTEN, KEPT, DROPPED = "written", "kept", "dropped"  # what became of one row of a failed batch


@dataclass
class Batch:
    """One flush's usage under an id unique across routers and restarts (instance:sequence);
    the id is recorded with the rows, so a batch retried after an unclear failure (a connection
    lost at commit, a spill file replayed) is written once."""

    id: str
    daily: dict[DailyKey, PendingRow] = field(default_factory=dict)
    requests: list[RequestRow] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.daily) + len(self.requests)


def write_batch(engine: Engine, batch: Batch) -> bool:
    """Record BATCH's id, add its daily rows (upsert) and insert its request rows, in one
    transaction; False when the id was already recorded (the batch is in, nothing is added)."""
    def write(conn: Connection) -> bool:
        claimed = conn.scalar(_claim(engine), {"batch_id": batch.id, "written_at": _naive_utc(time.time()),
                                               "rows": batch.rows})
        if claimed is None:
            return False
        if batch.daily:
            conn.execute(_upsert(engine), [_daily_params(k, v) for k, v in batch.daily.items()])
        if batch.requests:
            conn.execute(insert(UsageRequest), [_request_params(r) for r in batch.requests])
        return True
    return _with_retries(engine, write)


def unavailable(exc: BaseException) -> bool:
    """Whether EXC says the database cannot be written now (locked, full, gone, its schema not
    there yet), not that a row is bad."""
    if isinstance(exc, ProgrammingError):  # PostgreSQL's class 42: a missing table or column
        return str(getattr(exc.orig, "sqlstate", "")).startswith("42")
    return isinstance(exc, (OperationalError, InterfaceError))


def write_each(engine: Engine, batch: Batch) -> tuple[list[Batch], int]:
    """Write a refused batch row by row, each row its own batch (id BATCH/d0, BATCH/r0, ...):
    (the one-row batches kept, rows dropped).

    A row the database refuses (a poisoned value) is dropped and logged, so it blocks no other;
    a row that fails because the database is unavailable is kept for the next flush.
    """
    singles = [Batch(f"{batch.id}/d{i}", {key: row}) for i, (key, row) in enumerate(batch.daily.items())]
    singles += [Batch(f"{batch.id}/r{i}", {}, [request]) for i, request in enumerate(batch.requests)]
    kept: list[Batch] = []
    dropped = 0
    for single in singles:
        outcome = _write_one(engine, single)
        if outcome == KEPT:
            kept.append(single)
        dropped += outcome == DROPPED
    return kept, dropped


def _write_one(engine: Engine, batch: Batch) -> str:
    try:
        write_batch(engine, batch)
    except Exception as exc:
        if unavailable(exc):
            return KEPT
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        what = f"daily row {batch.daily}" if batch.daily else f"request row {batch.requests}"
        log.error("usage ledger: dropped %s: the database refuses it (%s)", what, reason)
        return DROPPED
    return WRITTEN


def prune_requests(engine: Engine, before: float, *, requests: bool = True) -> int:
    """Delete batch ids and (REQUESTS) per-request rows older than BEFORE (epoch seconds);
    returns how many request rows."""
    cutoff = _naive_utc(before)

    def prune(conn: Connection) -> int:
        conn.execute(delete(LedgerBatch).where(LedgerBatch.written_at < cutoff))
        if not requests:
            return 0
        return conn.execute(delete(UsageRequest).where(UsageRequest.ts < cutoff)).rowcount
    return _with_retries(engine, prune)


def load_totals(engine: Engine, now: float) -> dict[int, tuple[list[float], list[float]]]:
    """Per key id: usage (today, this month) as [requests, prompt, completion, reasoning, audio]."""
    t = datetime.fromtimestamp(now, UTC)
    today, month_first = t.strftime("%Y-%m-%d"), t.strftime("%Y-%m-01")
    is_today = UsageDaily.day == today
    sums = [func.sum(getattr(UsageDaily, c)) for c in COUNTERS if c not in ("errors", "estimated_requests")]
    today_sums = [func.sum(case((is_today, getattr(UsageDaily, c)), else_=0))
                  for c in COUNTERS if c not in ("errors", "estimated_requests")]
    query = (select(UsageDaily.key_id, *today_sums, *sums)
             .where(UsageDaily.day >= month_first, UsageDaily.day <= today)
             .group_by(UsageDaily.key_id))
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {row[0]: ([float(x or 0) for x in row[1:6]], [float(x or 0) for x in row[6:11]])
            for row in rows}


def _claim(engine: Engine) -> Any:
    """INSERT the batch id unless it is there: no row returned means the batch was written before."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(LedgerBatch).on_conflict_do_nothing(index_elements=["batch_id"])
    return stmt.returning(LedgerBatch.batch_id)


def _upsert(engine: Engine) -> Any:
    table = UsageDaily.__table__
    stmt: Any = (postgresql if engine.dialect.name == "postgresql" else sqlite).insert(UsageDaily)
    added = {c: table.c[c] + stmt.excluded[c] for c in COUNTERS}
    return stmt.on_conflict_do_update(
        index_elements=["day", "key_id", "model"],
        set_={**added, "key_name": stmt.excluded.key_name, "account": stmt.excluded.account},
    )


def _daily_params(key: DailyKey, row: PendingRow) -> dict[str, Any]:
    params: dict[str, Any] = {"day": key[0], "key_id": key[1], "model": key[2],
                              "key_name": row[0], "account": row[1]}
    params.update(zip(COUNTERS, row[2:]))
    return _finite(params)


def _request_params(row: RequestRow) -> dict[str, Any]:
    params: dict[str, Any] = dict(zip(REQUEST_COLUMNS, row))
    params["ts"] = _naive_utc(row[0])
    return _finite(params)


def _finite(params: dict[str, Any]) -> dict[str, Any]:
    """Refuse NaN and infinities: PostgreSQL would store them and every later sum would be NaN."""
    for name, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} is {value}")
    return params


def _naive_utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def _with_retries(engine: Engine, work: Callable[[Connection], T]) -> T:
    return run_with_retries(engine, work, "usage ledger")
