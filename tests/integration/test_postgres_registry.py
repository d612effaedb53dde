"""The registry on PostgreSQL: the same migrations and row writers as on SQLite."""

from __future__ import annotations

from sqlalchemy import inspect

from launcher.core.db import open_engine, session_factory
from launcher.core.keys import create_key, hash_key, list_keys
from launcher.core.migrate import current_revision, head_revision
from launcher.core.settings import KeyLimits


def test_migrations_reach_head_on_postgresql_and_keys_round_trip(pg_url: str) -> None:
    engine = open_engine(pg_url)
    try:
        assert current_revision(engine) == head_revision(engine)
        assert {"api_keys", "deployments", "usage_requests"} <= set(inspect(engine).get_table_names())
        with session_factory(engine)() as session:
            key, _ = create_key(session, "alice", limits=KeyLimits(rpm=5), models=["m"])
        with session_factory(engine)() as session:
            [record] = list_keys(session)
        assert (record.name, record.key_hash, record.models, record.limits.rpm) == (
            "alice", hash_key(key), ("m",), 5)
    finally:
        engine.dispose()
