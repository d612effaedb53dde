"""Opening the registry: where it lives, SQLite pragmas, automatic migration."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from launcher.core.migrate import upgrade_if_needed


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
    engine = create_engine(url)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if migrate:
        upgrade_if_needed(engine)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


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
