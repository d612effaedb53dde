"""Limits ownership: one router process per registry keeps the exact per-key counters.

Limits are exact only if one process sees every request of a key. Several routers would each
count alone and let a key use N times its limit, so the owner takes an exclusive, non-blocking
`flock` on a file next to the SQLite registry; a second router with accounting on refuses to
start and says why. The kernel drops the lock when the process dies, so a crash never leaves a
stale lock behind. (A PostgreSQL registry has no local file: run one router process with
accounting there, or several with a shared counter store, which this version does not have.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqlalchemy import Engine


class LimitsOwnershipError(RuntimeError):
    """Another router process already owns the limits of this registry."""


class OwnershipLock:
    """An exclusive lock file held while this process owns the limits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_engine(cls, engine: Engine) -> OwnershipLock | None:
        """The lock for a SQLite file registry; None for in-memory or server databases."""
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
                "Stop that router first; to serve more traffic, run one router process per "
                "registry (see the admin guide)."
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
