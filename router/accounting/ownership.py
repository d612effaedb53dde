"""Limits ownership in the embedded mode: one router process per registry keeps the exact counters.

Limits are exact only if one process sees every request of a key. Several routers would each
count alone and let a key use N times its limit, so the owner takes an exclusive, non-blocking
lock: an `flock` on a file next to a SQLite registry, a session advisory lock on a PostgreSQL
one; a second router with accounting on refuses to start and says why. The kernel (or the
database, when the session ends) drops the lock when the process dies, so a crash never leaves
a stale lock behind. Shared mode (`router.redis_url`) keeps the counters in Redis and needs no owner.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import Connection, Engine, text


class LimitsOwnershipError(RuntimeError):
    """Another router process already owns the limits of this registry."""


SEVERAL = ("Stop that router first; to run several routers, use shared mode: a PostgreSQL registry and "
           "[router] redis_url (admin guide, 'Running several routers').")
LOCK_ID = 0x6C6C6D6C696D6974  # the advisory lock's number ("llmlimit")


class OwnershipLock:
    """An exclusive lock file held while this process owns the limits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_engine(cls, engine: Engine) -> OwnershipLock | PostgresOwnershipLock | None:
        """The lock for a SQLite file or PostgreSQL registry; None for an in-memory database."""
        if engine.dialect.name == "postgresql":
            return PostgresOwnershipLock(engine)
        database = engine.url.database
        if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
            return None
        return cls(Path(database).with_name(Path(database).name + ".limits.lock"))

    def acquire(self) -> None:
        """Take the lock now or raise LimitsOwnershipError naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LimitsOwnershipError(
                f"another router process (pid {holder}) already enforces the quotas of this "
                f"registry ({self.path}): per-key limits are exact only when one process keeps them. "
                f"{SEVERAL}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class PostgresOwnershipLock:
    """A session advisory lock on a PostgreSQL registry, held on a connection of its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None

    def acquire(self) -> None:
        """Take the lock now or raise LimitsOwnershipError."""
        conn = self.engine.connect()
        if not conn.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": LOCK_ID}).scalar():
            conn.close()
            raise LimitsOwnershipError(
                "another router process already enforces the quotas of this registry (PostgreSQL) in "
                f"its own memory: per-key limits are exact only when one process keeps them. {SEVERAL}")
        conn.commit()
        self._conn = conn

    def release(self) -> None:
        """Give the lock up (idempotent); closing the session is what frees it."""
        if self._conn is not None:
            self._conn.invalidate()  # never back to the pool with the lock: the session ends here
            self._conn.close()
            self._conn = None
