"""The registry on PostgreSQL and SQLite: the same migrations, row writers and CLI errors on both;
migrations safe from several processes at once; a transaction that loses a race is run again."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, Engine, create_engine, inspect, select, text, update

from launcher.cli import main
from launcher.core.db import open_engine, run_with_retries, session_factory
from launcher.core.keys import create_key, hash_key, list_keys
from launcher.core.migrate import current_revision, head_revision
from launcher.core.schema import ApiKey
from launcher.core.settings import KeyLimits


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = open_engine(db_url)
    yield engine
    engine.dispose()


def cli(db_url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--db", db_url, *args])
    return result.exit_code, result.output


def test_migrations_reach_head_and_keys_round_trip(engine: Engine) -> None:
    assert current_revision(engine) == head_revision(engine)
    assert {"api_keys", "deployments", "usage_requests"} <= set(inspect(engine).get_table_names())
    with session_factory(engine)() as session:
        key, _ = create_key(session, "alice", limits=KeyLimits(rpm=5), models=["m"])
    with session_factory(engine)() as session:
        [record] = list_keys(session)
    assert (record.name, record.key_hash, record.models, record.limits.rpm) == (
        "alice", hash_key(key), ("m",), 5)


def test_several_processes_migrating_one_fresh_database_at_once_all_succeed(db_url: str) -> None:
    # Every process imports first, then all start migrating at the same instant.
    start = time.time() + 3.0
    program = f"import time; from launcher.cli import main; time.sleep(max(0, {start} - time.time())); main()"
    command = [sys.executable, "-c", program, "--db", db_url, "db", "upgrade"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(4)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert sum("migrated to" in out for out in outputs) == 1, outputs
    engine = open_engine(db_url, migrate=False)
    try:
        assert current_revision(engine) == head_revision(engine)
    finally:
        engine.dispose()


def test_limits_past_32_bits_are_stored_and_past_64_bits_are_one_line_errors(db_url: str) -> None:
    code, out = cli(db_url, "keys", "create", "big", "--rpm", "3000000000",
                    "--monthly-tokens", "50000000000")
    assert code == 0, out
    engine = open_engine(db_url)
    try:
        with session_factory(engine)() as session:
            [record] = list_keys(session)
    finally:
        engine.dispose()
    assert (record.limits.rpm, record.limits.monthly_tokens) == (3_000_000_000, 50_000_000_000)
    code, out = cli(db_url, "keys", "create", "huge", "--rpm", str(2**63))
    assert code == 2 and "is too large" in out and "Traceback" not in out
    assert "sqlalchemy" not in out.lower() and "psycopg" not in out.lower()


def test_a_serialization_failure_on_postgresql_is_run_again(pg_url: str) -> None:
    open_engine(pg_url).dispose()
    strict = create_engine(pg_url, isolation_level="REPEATABLE READ")
    with session_factory(strict)() as session:
        create_key(session, "alice", limits=KeyLimits(rpm=1))
    attempts: list[int] = []

    def bump(conn: Connection) -> int:
        rpm = conn.scalar(select(ApiKey.rpm).where(ApiKey.name == "alice"))  # the snapshot starts
        if not attempts:  # another writer commits in between, on the first attempt only
            other = threading.Thread(target=_set_rpm, args=(strict, 10))
            other.start()
            other.join()
        attempts.append(rpm or 0)
        conn.execute(update(ApiKey).where(ApiKey.name == "alice").values(rpm=(rpm or 0) + 1))
        return (rpm or 0) + 1

    try:
        assert run_with_retries(strict, bump) == 11
        assert attempts == [1, 10]  # the first attempt failed with 40001 and was run again
    finally:
        strict.dispose()


def _set_rpm(engine: Engine, rpm: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE api_keys SET rpm = :rpm WHERE name = 'alice'"), {"rpm": rpm})


def test_an_unreachable_database_is_a_one_line_error_without_its_password() -> None:
    code, out = cli("postgresql+psycopg://llm:s3cret-pw@127.0.0.1:1/none", "keys", "list")
    assert code == 1 and out.startswith("Error: registry postgresql+psycopg://llm:***@127.0.0.1:1/none: ")
    assert "s3cret-pw" not in out and len(out.strip().splitlines()) == 1
