"""The usage ledger on a real SQLite file and on PostgreSQL: batched upserts, request rows, retention,
busy database."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from launcher.core.db import open_engine
from launcher.core.schema import UsageDaily, UsageRequest
from router.accounting.seam import Usage
from router.accounting.ledger import Ledger
from router.accounting.ledger_db import load_totals

DAY1 = datetime(2026, 3, 14, 10, tzinfo=UTC).timestamp()
DAY2 = DAY1 + 86400


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_engine(db_url)
    yield engine
    engine.dispose()


def record(ledger: Ledger, now: float, *, key: int = 1, model: str = "m", status: int = 200,
           usage: Usage = Usage(prompt_tokens=10, completion_tokens=5, reasoning_tokens=2)) -> None:
    ledger.record("rid", key, f"key{key}", "proj", model, status, usage, "http://b", now - 0.5, now)


def daily(engine: Engine) -> list[tuple[object, ...]]:
    cols = (UsageDaily.day, UsageDaily.key_id, UsageDaily.model, UsageDaily.requests,
            UsageDaily.errors, UsageDaily.estimated_requests, UsageDaily.prompt_tokens,
            UsageDaily.completion_tokens, UsageDaily.reasoning_tokens, UsageDaily.audio_seconds)
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*cols).order_by(UsageDaily.id))]


async def test_flush_aggregates_per_day_key_and_model_and_adds_to_existing_rows(engine: Engine) -> None:
    ledger = Ledger(engine)
    for now in (DAY1, DAY1 + 1, DAY2):
        record(ledger, now)
    record(ledger, DAY1, key=2, model="w", usage=Usage(audio_seconds=12.5))
    record(ledger, DAY1, status=502, usage=Usage())
    await ledger.flush()
    record(ledger, DAY1 + 2, usage=Usage(prompt_tokens=1, completion_tokens=3, estimated=True))
    await ledger.flush()
    assert daily(engine) == [
        ("2026-03-14", 1, "m", 4, 1, 1, 21, 13, 4, 0.0),
        ("2026-03-15", 1, "m", 1, 0, 0, 10, 5, 2, 0.0),
        ("2026-03-14", 2, "w", 1, 0, 0, 0, 0, 0, 12.5),
    ]
    assert ledger.pending == 0


async def test_request_rows_only_when_enabled_and_pruned_after_retention(engine: Engine) -> None:
    await _flush_one(Ledger(engine), time.time())
    with engine.connect() as conn:
        assert conn.scalar(select(UsageRequest.id)) is None
    ledger = Ledger(engine, per_request=True, retention_days=1)
    await _flush_one(ledger, time.time() - 3 * 86400)
    await _flush_one(ledger, time.time())
    await ledger.start()
    await ledger.close()
    with engine.connect() as conn:
        rows = conn.execute(select(UsageRequest.status, UsageRequest.prompt_tokens,
                                   UsageRequest.backend, UsageRequest.latency_ms)).all()
    assert [tuple(r) for r in rows] == [(200, 10, "http://b", 500.0)]


async def _flush_one(ledger: Ledger, now: float) -> None:
    record(ledger, now)
    await ledger.flush()


async def test_a_failed_write_keeps_the_batch_for_the_next_flush(engine: Engine) -> None:
    ledger = Ledger(engine)
    record(ledger, DAY1)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_daily RENAME TO usage_daily_away"))
    await ledger.flush()
    assert ledger.failed_batches == 1
    record(ledger, DAY1)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_daily_away RENAME TO usage_daily"))
    await ledger.flush()
    assert [r[3] for r in daily(engine)] == [2]


async def test_a_busy_database_is_retried_not_lost(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    impatient = create_engine(f"sqlite:///{tmp_path / 'registry.db'}",
                              connect_args={"timeout": 0})
    ledger = Ledger(impatient)
    record(ledger, DAY1)
    holder = sqlite3.connect(tmp_path / "registry.db", isolation_level=None,
                             check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.2, holder.execute, ("COMMIT",))
    release.start()
    await ledger.flush()
    release.join()
    assert ledger.failed_batches == 0
    assert [r[3] for r in daily(engine)] == [1]


async def test_close_flushes_everything_and_totals_reload_per_key(engine: Engine) -> None:
    ledger = Ledger(engine, flush_s=3600)
    await ledger.start()
    now = time.time()
    record(ledger, now)
    record(ledger, now, usage=Usage(audio_seconds=3.0))
    await ledger.close()
    today, month = load_totals(engine, now)[1]
    assert today == [2, 10, 5, 2, 3.0]
    assert month == today


async def test_throughput_benchmark_runs_in_a_tiny_mode() -> None:
    from bench.ledger_throughput import admit_finish_us, ledger_rates

    absorbed, end_to_end = await ledger_rates(2000, 10, per_request=True, flush_s=0.01)
    assert absorbed > 0 and end_to_end > 0
    assert admit_finish_us(100, 10) > 0


# Values the ledger refuses: no database holds an integer past 2**63; NaN would poison the sums.
POISONS = [Usage(prompt_tokens=10**30), Usage(audio_seconds=float("nan"))]


@pytest.mark.parametrize("poison", POISONS, ids=["huge-int", "nan"])
async def test_a_poisoned_row_is_dropped_and_every_other_row_written(engine: Engine, poison: Usage) -> None:
    ledger = Ledger(engine, per_request=True)
    record(ledger, DAY1, key=1, usage=poison)
    record(ledger, DAY1, key=2)
    record(ledger, DAY1, key=3, model="w", usage=Usage(audio_seconds=2.0))
    await ledger.flush()
    assert [r[1] for r in daily(engine)] == [2, 3]
    assert (ledger.pending, ledger.failed_batches, ledger.dropped_rows) == (0, 1, 2)  # its daily and request row
    record(ledger, DAY1, key=1)  # the key itself is not blocked either
    await ledger.flush()
    assert [r[1:4] for r in daily(engine)] == [(2, "m", 1), (3, "w", 1), (1, "m", 1)]
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(UsageRequest)) == 3


async def test_a_graceful_stop_writes_what_it_can_after_a_poisoned_row(engine: Engine) -> None:
    ledger = Ledger(engine, flush_s=3600)
    await ledger.start()
    for poison in POISONS:
        record(ledger, DAY1, key=1, usage=poison)
        for key in (2, 3):
            record(ledger, DAY1, key=key)
    await ledger.close()
    assert [r[1:4] for r in daily(engine)] == [(2, "m", 2), (3, "m", 2)]
    assert ledger.pending == 0
