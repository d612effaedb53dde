"""Opening the registry: where it lives, SQLite pragmas, PostgreSQL pooling, automatic migration,
and the retry of a transaction that lost a race (SQLite busy, PostgreSQL serialization/deadlock)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from launcher.core.migrate import upgrade_if_needed

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_DELAYS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
# PostgreSQL SQLSTATEs that mean "this transaction lost a race; run it again": serialization
# failure, deadlock detected.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# A small pool per process: routers and the launcher each hold a few connections, so several
# routers stay well under PostgreSQL's default max_connections (100); pre-ping drops connections
# a database restart cut, and a short connect timeout makes an outage fail fast, not hang.
PG_ENGINE_OPTIONS: dict[str, Any] = {
    "pool_pre_ping": True, "pool_size": 5, "max_overflow": 5, "pool_recycle": 1800,
    "pool_timeout": 10, "connect_args": {"connect_timeout": 5},
}


class RegistryError(Exception):
    """The registry cannot be opened; the message says which database and why."""


def utcnow() -> datetime:
    """Naive UTC now: the registry stores naive UTC datetimes."""
    return datetime.now(UTC).replace(tzinfo=None)


def default_db_path() -> Path:
    """The registry file under the user's data directory."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llm-launch" / "registry.db"


def resolve_db_url(cli_value: str | None, settings_value: str = "") -> str:
    """--db, else LLM_LAUNCH_DB, else the settings file, else the default file; paths become URLs."""
    chosen = cli_value or os.environ.get("LLM_LAUNCH_DB") or settings_value
    if not chosen:
        return f"sqlite:///{default_db_path()}"
    if "://" in chosen:
        return chosen
    return f"sqlite:///{Path(chosen).expanduser().resolve()}"


def open_engine(url: str, *, migrate: bool = True) -> Engine:
    """Create an engine for URL; a SQLite file is created owner-only, in WAL mode, and migrated."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise RegistryError(f"not a database URL or path: {url!r}") from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        _create_private_file(Path(parsed.database))
    options = PG_ENGINE_OPTIONS if parsed.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, **options)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if migrate:
        upgrade_if_needed(engine)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def retryable(exc: BaseException) -> bool:
    """Whether EXC is a transaction that lost a race and may simply be run again."""
    if not isinstance(exc, OperationalError):
        return False
    if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


def run_with_retries(engine: Engine, work: Callable[[Connection], T], what: str = "registry") -> T:
    """Run WORK in one transaction; a busy SQLite or a PostgreSQL serialization failure or
    deadlock is retried with backoff (the whole transaction, so WORK must be safe to rerun)."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            with engine.begin() as conn:
                return work(conn)
        except OperationalError as exc:
            if delay is None or not retryable(exc):
                raise
            log.warning("%s: transaction lost a race (%s), retrying in %.2fs",
                        what, str(exc.orig).splitlines()[0], delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _create_private_file(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    except OSError as exc:
        raise RegistryError(f"cannot open registry {path}: {exc.strerror}") from exc


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the router read while the launcher writes; busy_timeout absorbs short lock waits.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
