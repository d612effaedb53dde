"""The ledger's exactly-once batches and spill files, on SQLite and PostgreSQL: a batch retried is
written once; an unavailable database keeps batches in memory up to the bound, then in the spill
file; a stop during an outage leaves the file, and the next router on it writes it, once."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from launcher.core.db import open_engine
from launcher.core.schema import LedgerBatch, UsageDaily
from router.accounting.seam import Usage
from router.accounting.ledger import Ledger
from router.accounting.ledger_db import Batch, write_batch

DAY1 = datetime(2026, 3, 14, 10, tzinfo=UTC).timestamp()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_engine(db_url)
    yield engine
    engine.dispose()


def record(ledger: Ledger, key: int, tokens: int = 10) -> None:
    ledger.record("rid", key, f"key{key}", None, "m", 200, Usage(prompt_tokens=tokens), None, DAY1, DAY1)


def totals(engine: Engine) -> dict[int, tuple[int, int]]:
    """Per key: (requests, prompt tokens) as written."""
    with engine.connect() as conn:
        rows = conn.execute(select(UsageDaily.key_id, UsageDaily.requests, UsageDaily.prompt_tokens))
        return {key: (requests, tokens) for key, requests, tokens in rows}


def take_down(engine: Engine) -> None:
    """Make the ledger's table unavailable (what a database outage looks like to a write)."""
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_daily RENAME TO usage_daily_away"))


def bring_back(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE usage_daily_away RENAME TO usage_daily"))


def test_a_batch_written_twice_counts_once(engine: Engine) -> None:
    batch = Batch("router-a:1", {("2026-03-14", 1, "m"): ["k", None, 1, 0, 0, 10, 0, 0, 0.0]})
    assert write_batch(engine, batch) is True
    assert write_batch(engine, batch) is False  # e.g. retried after a commit whose answer was lost
    assert totals(engine) == {1: (1, 10)}
    other = Batch("router-b:1", batch.daily)  # another router's batch with the same rows adds
    assert write_batch(engine, other) is True
    assert totals(engine) == {1: (2, 20)}
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(LedgerBatch)) == 2


async def test_past_the_bound_batches_spill_and_are_written_once_when_the_database_returns(
    engine: Engine, tmp_path: Path,
) -> None:
    ledger = Ledger(engine, max_rows=3, spill_dir=tmp_path)
    take_down(engine)
    for key in range(1, 7):  # six flushes of one row each, all failing
        record(ledger, key)
        await ledger.flush()
    assert (ledger.pending, ledger.spilled) == (3, 3)
    assert ledger.db_errors >= 6 and ledger.spilled_rows_total == 3
    [spill_file] = list(tmp_path.rglob("spill-*.jsonl"))
    record(ledger, 1)  # usage during the outage keeps being counted
    bring_back(engine)
    await ledger.flush()
    assert (ledger.pending, ledger.spilled) == (0, 0)
    assert not spill_file.exists()
    assert totals(engine) == {1: (2, 20), **{key: (1, 10) for key in range(2, 7)}}
    assert ledger.written_rows == 7


async def test_a_stop_during_an_outage_leaves_a_spill_file_the_next_router_writes_once(
    engine: Engine, tmp_path: Path,
) -> None:
    first = Ledger(engine, spill_dir=tmp_path, flush_s=3600)
    await first.start()
    for key in (1, 2, 2):
        record(first, key)
    take_down(engine)
    await first.close()  # cannot write: spills instead of losing
    [spill_file] = list(tmp_path.rglob("spill-*.jsonl"))
    kept_copy = tmp_path / "copy.jsonl"
    shutil.copy(spill_file, kept_copy)
    bring_back(engine)
    second = Ledger(engine, spill_dir=tmp_path, flush_s=3600)
    loaded = await second.load_totals(DAY1)  # the restart writes the spill before it reloads budgets
    assert totals(engine) == {1: (1, 10), 2: (2, 20)}
    assert loaded[2][0][0] == 2 and not spill_file.exists()
    # The same file again (say the router died between writing and deleting it): skipped by id.
    shutil.copy(kept_copy, spill_file)
    third = Ledger(engine, spill_dir=tmp_path, flush_s=3600)
    await third.start()
    await third.close()
    await second.close()
    assert totals(engine) == {1: (1, 10), 2: (2, 20)}
    assert not spill_file.exists()


async def test_a_live_routers_spill_file_is_not_adopted_and_other_registries_are_not_touched(
    engine: Engine, tmp_path: Path,
) -> None:
    live = Ledger(engine, max_rows=0, spill_dir=tmp_path)
    take_down(engine)
    record(live, 1)
    await live.flush()
    assert live.spilled == 1
    bring_back(engine)
    other = Ledger(engine, spill_dir=tmp_path, flush_s=3600)
    await other.start()  # the file is locked by LIVE: left to it
    assert other.spilled == 0 and totals(engine) == {}
    elsewhere = open_engine(f"sqlite:///{tmp_path / 'other.db'}")
    stranger = Ledger(elsewhere, spill_dir=tmp_path, flush_s=3600)
    await stranger.start()
    await stranger.close()
    assert totals(elsewhere) == {}
    await live.flush()
    assert totals(engine) == {1: (1, 10)} and live.spilled == 0
    await other.close()
    await live.close()


async def test_a_spill_folder_that_cannot_be_written_keeps_the_rows_in_memory(
    engine: Engine, tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    ledger = Ledger(engine, max_rows=1, spill_dir=blocker / "spill")
    take_down(engine)
    for key in (1, 2, 3):
        record(ledger, key)
        await ledger.flush()  # never raises: the flush loop must survive it
    assert (ledger.pending, ledger.spilled) == (3, 0)
    bring_back(engine)
    await ledger.flush()
    assert totals(engine) == {key: (1, 10) for key in (1, 2, 3)}
