"""Which supervisor acts: one leader per registry, any number of followers standing by.

A PostgreSQL registry: a session-level advisory lock on a connection of its own. The database
frees it when the session ends: at once when the leader process dies (its socket closes), and
within the TCP keepalive bound set below when the leader's host vanishes. A SQLite registry: an
`flock` on a file beside it, which the kernel frees when the process dies. Followers try again
every `RETRY_S`, so one takes over a second or two after the leader is killed.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

LEADER_LOCK_ID = 0x6C6C6D2D73757076  # the advisory lock's number ("llm-supv")
RETRY_S = 1.0  # how often a follower tries the lock
# Server-side keepalive on the lock's session: a vanished leader host is declared dead after
# idle + interval * count = 5 + 2 * 3 = 11 s, and its lock freed.
KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}
KEEPALIVE_BOUND_S = 11


def identity() -> str:
    """How this process names itself to the others: host and pid."""
    return f"{socket.gethostname()} pid {os.getpid()}"


class Leadership(Protocol):
    """A non-blocking leader lock."""

    def try_lead(self) -> bool:
        """True while this process leads: takes the lock when free, checks it is still held."""
        ...

    def leader(self) -> str | None:
        """Who holds the lock, as it named itself; None when nobody does ('unknown' when that cannot be told)."""
        ...

    def release(self) -> None:
        """Give leadership up (idempotent)."""
        ...


class SoleLeadership:
    """An in-memory registry: no other process can share it, so this one always leads."""

    def try_lead(self) -> bool:
        return True

    def leader(self) -> str | None:
        return identity()

    def release(self) -> None:
        return None


class FileLeadership:
    """An `flock` on a file beside a SQLite registry; the file holds the leader's identity."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_lead(self) -> bool:
        if self._fd is not None:
            return True  # a held flock cannot be lost while the descriptor stays open
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, identity().encode(), 0)
        self._fd = fd
        return True

    def leader(self) -> str | None:
        if self._fd is not None:
            return identity()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError:
            return "unknown"
        try:
            # A shared lock is granted only while nobody holds the exclusive one: then nobody leads
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)  # drops the shared lock, if taken

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


class PostgresLeadership:
    """A session advisory lock held on a dedicated connection, with keepalive bounds on it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None

    def try_lead(self) -> bool:
        if self._conn is not None:
            if self._still_held(self._conn):
                return True
            self.release()
        try:
            conn = self.engine.connect()
        except DBAPIError:
            return False
        try:
            for name, value in KEEPALIVE.items():
                conn.execute(text(f"SET {name} = {int(value)}"))
            conn.execute(text("SELECT set_config('application_name', :name, false)"),
                         {"name": f"llm-launch supervisor {identity()}"[:63]})
            held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:id)"), {"id": LEADER_LOCK_ID}).scalar())
            conn.commit()
        except DBAPIError:
            held = False
        if not held:
            conn.invalidate()
            conn.close()
            return False
        self._conn = conn
        return True

    @staticmethod
    def _still_held(conn: Connection) -> bool:
        """Whether the lock's session is alive (a restarted server or a cut connection lost it)."""
        try:
            conn.execute(text("SELECT 1")).scalar()
            conn.commit()
            return True
        except DBAPIError:
            return False

    def leader(self) -> str | None:
        # A 64-bit advisory key shows in pg_locks as classid (high half) and objid (low half).
        query = text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high AND l.objid = :low "
            "AND l.objsubid = 1")
        try:
            with self.engine.connect() as conn:
                name = conn.execute(query, {"high": LEADER_LOCK_ID >> 32,
                                            "low": LEADER_LOCK_ID & 0xFFFFFFFF}).scalar()
        except DBAPIError:
            return "unknown"
        return str(name).removeprefix("llm-launch supervisor ") if name is not None else None

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.invalidate()  # never back to the pool holding the lock: the session ends here
                conn.close()
            except DBAPIError:
                pass


def leadership_for(engine: Engine) -> Leadership:
    """The leader lock of ENGINE's registry."""
    if engine.dialect.name == "postgresql":
        return PostgresLeadership(engine)
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return SoleLeadership()
    return FileLeadership(Path(database).with_name(Path(database).name + ".supervisor.lock"))
