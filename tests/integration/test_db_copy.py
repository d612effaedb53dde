"""`llm-launch db copy`: a SQLite registry moves to PostgreSQL with every row of every table."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, inspect, select

from launcher.cli import main
from launcher.core.copy import schema_tables
from launcher.core.db import open_engine, session_factory, utcnow
from launcher.core.deployments import add_backend, get_deployment, mark_gone
from launcher.core.keys import create_key, list_keys, revoke_key
from launcher.core.settings import KeyLimits
from launcher.core.targets import set_desired_replicas
from launcher.core.tokens import create_token
from router.accounting.ledger_db import Batch, DailyKey, PendingRow, RequestRow, write_batch


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = open_engine(url)
    _fill(engine)
    engine.dispose()
    yield url


def _fill(engine: Engine) -> None:
    """At least one row in every table, through the launcher's and the router's own writers."""
    with session_factory(engine)() as session:
        for name in ("alice", "bob", "carol"):
            create_key(session, name, limits=KeyLimits(rpm=60, monthly_tokens=5_000_000_000),
                       models=["m1", "m2"] if name == "bob" else None, account="proj-1")
        revoke_key(session, "bob")
        first = add_backend(session, "m1", "http://node1:8001", kind="chat", secret="s1")
        add_backend(session, "w", "http://node2:8002", kind="transcription", secret=None)
        mark_gone(session, get_deployment(session, first.id), "removed by the admin")
        set_desired_replicas(session, "m1", 2, now=utcnow())
        create_token(session, "m1", None)
    now = time.time()
    daily: dict[DailyKey, PendingRow] = {("2026-03-14", 1, "m1"): ["alice", "proj-1", 3, 1, 0, 30, 15, 4, 0.0],
             ("2026-03-14", 3, "w"): ["carol", None, 1, 0, 1, 0, 0, 0, 12.5]}
    requests: list[RequestRow] = [(now - 1, f"req-{i}", 1, "m1", 200, 10, 5, 1, 0.0, 12.5, "http://node1:8001", 0)
                for i in range(5)]
    write_batch(engine, Batch("fill:1", daily, requests))


def _rows(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key))]
                for t in schema_tables()}


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_every_row_of_every_table_arrives_and_new_ids_follow_the_copied_ones(
    sqlite_url: str, pg_url: str,
) -> None:
    code, out = _cli("--db", sqlite_url, "db", "copy", "--to", pg_url)
    assert code == 0, out
    source, target = open_engine(sqlite_url), open_engine(pg_url)
    try:
        # The schema's whole table list: a table added later is copied, and checked here, too.
        tables = {t.name for t in schema_tables()}
        assert tables == set(inspect(source).get_table_names()) - {"alembic_version"}
        before, after = _rows(source), _rows(target)
        assert all(before[name] for name in tables), "give every table a row in _fill"
        assert after == before
        assert f"copied {sum(map(len, before.values()))} rows" in out
        with session_factory(target)() as session:
            create_key(session, "dave", limits=KeyLimits())
            assert [k.id for k in list_keys(session)] == [1, 2, 3, 4]
            second = add_backend(session, "m2", "http://node3:8003", kind="chat", secret="s")
        assert second.id == 3
    finally:
        source.dispose()
        target.dispose()


def test_a_target_with_rows_is_refused_in_one_line_and_left_as_it_was(sqlite_url: str, pg_url: str) -> None:
    assert _cli("--db", sqlite_url, "db", "copy", "--to", pg_url)[0] == 0
    code, out = _cli("--db", sqlite_url, "db", "copy", "--to", pg_url)
    assert code == 1 and "already holds rows" in out and len(out.strip().splitlines()) == 1
    target = open_engine(pg_url)
    try:
        assert len(_rows(target)["api_keys"]) == 3
    finally:
        target.dispose()


def test_an_unreachable_target_or_the_registry_itself_is_a_one_line_error(sqlite_url: str) -> None:
    code, out = _cli("--db", sqlite_url, "db", "copy", "--to",
                     "postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert code == 1 and out.startswith("Error: ") and len(out.strip().splitlines()) == 1, out
    code, out = _cli("--db", sqlite_url, "db", "copy", "--to", sqlite_url)
    assert code == 1 and "the registry itself" in out
