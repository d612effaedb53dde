"""Fixtures for shared mode: a fresh PostgreSQL database and a fresh Redis database per test.

The servers are the private ones `scripts/local-services start` runs (scripts/test starts them);
their URLs come from its env.sh. Without them the tests that need them skip, saying how to start.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ENV = "LLM_LAUNCH_TEST_PG_URL"
REDIS_ENV = "LLM_LAUNCH_TEST_REDIS_URL"
START_HINT = "run scripts/local-services start and source its env.sh"
REDIS_DATABASES = 16  # Redis's default `databases`


def _server_url(variable: str) -> str:
    url = os.environ.get(variable, "")
    if not url:
        pytest.skip(f"{variable} is not set: {START_HINT}")
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of an empty database, dropped after the test (connections still open are cut)."""
    server = make_url(_server_url(PG_ENV))
    name = f"llm_launch_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh registry URL, once on a SQLite file and once on PostgreSQL (skipped without it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'registry.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


_next_redis_db = iter(range(1, 10**9))


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The URL of an emptied Redis database (1–15 in turn; 0 is left to people poking at it)."""
    server = _server_url(REDIS_ENV)
    number = 1 + next(_next_redis_db) % (REDIS_DATABASES - 1)
    url = f"{server.rsplit('/', 1)[0]}/{number}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()
