"""Schema migrations with Alembic, run automatically on first use and by `llm-launch db upgrade`."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# The PostgreSQL advisory lock every process takes around `upgrade`: any constant works, as long
# as all llm-launch versions use the same one.
PG_MIGRATION_LOCK = 0x6C6C6D2D6D6967  # "llm-mig"


def alembic_config(engine: Engine) -> Config:
    """An in-memory Alembic config that runs on ENGINE."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    """The newest revision this code knows."""
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def upgrade_if_needed(engine: Engine) -> bool:
    """Bring the schema to head; True when something was applied.

    Several processes may start on a fresh or old database at once (a router and a supervisor
    after an upgrade): one migrates under a lock, the others wait and then find it at head.
    """
    head = head_revision(engine)
    if current_revision(engine) == head:
        return False
    with _migration_lock(engine):
        if current_revision(engine) == head:
            return False
        command.upgrade(alembic_config(engine), "head")
    return True


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Hold PostgreSQL's advisory lock, or a lock file next to a SQLite file, while migrating."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": PG_MIGRATION_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": PG_MIGRATION_LOCK})
                conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    # Not the database file itself: closing any descriptor of it would drop SQLite's own locks.
    fd = os.open(f"{database}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
