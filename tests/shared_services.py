"""Fixtures for shared mode: a fresh PostgreSQL database and a fresh Redis database per test.

The servers are the private ones `scripts/local-services start` runs (scripts/test starts them);
their URLs come from its env.sh. Without them the tests that need them skip, saying how to start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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


PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's PostgreSQL 15, as scripts/local-services uses


class PrivatePostgres:
    """A PostgreSQL server of one test's own, on a free port, that the test may stop and start.

    `stop` is pg_ctl's fast shutdown: open connections are cut, new ones refused, as in an outage.
    As root the files belong to Debian's `postgres` user (PostgreSQL refuses to run as root).
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llm-launch-pg-"))
        self.data = self.dir / "data"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"postgresql+psycopg://llm_launch@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "llm_launch", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(self._as_owner(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                      "stop"), capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(self._as_owner(str(PG_BIN / program), *args), check=True, capture_output=True,
                       timeout=60)

    @staticmethod
    def _as_owner(*command: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A running PrivatePostgres, removed after the test (skipped without PostgreSQL 15)."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed: {START_HINT}")
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


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


class PrivateRedis:
    """A Redis server of one test's own, on a free port, without persistence: a restart is empty."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A running PrivateRedis, killed after the test (skipped without redis-server)."""
    if shutil.which("redis-server") is None:
        pytest.skip(f"redis-server is not installed: {START_HINT}")
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()
