"""On PostgreSQL: refresh the registry snapshot the moment a key, deployment or target changes.

Migration 0005's triggers NOTIFY on CHANNEL when such a row changes (at commit). This task keeps
one LISTEN connection and refreshes the snapshot on every notification, a burst of them once;
after a lost connection it reconnects with backoff and refreshes once, for what it missed. The
periodic refresh (`registry_refresh_s`) stays as the fallback, and is SQLite's only way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine

try:
    import psycopg
except ImportError:  # without the `shared` extra there is no PostgreSQL driver, and nothing to listen to
    psycopg = None  # type: ignore[assignment]

LOG = logging.getLogger("router.registry")
CHANNEL = "llm_launch_registry"
RECONNECT_S = (0.5, 1.0, 2.0, 5.0)
CONNECT_TIMEOUT_S = 5


def listens(engine: Engine) -> bool:
    """Whether ENGINE's database can notify: PostgreSQL through psycopg (3)."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg" and psycopg is not None


def conninfo(engine: Engine) -> str:
    """The libpq URL of ENGINE's database (SQLAlchemy's driver suffix removed)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(engine: Engine, refresh: Callable[[], Awaitable[object]]) -> None:
    """LISTEN forever, calling REFRESH after each notification (or burst) and each reconnect."""
    failures = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                conninfo(engine), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
            ) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                if failures:
                    LOG.info("registry notifications: listening again")
                    await _refresh(refresh)  # whatever changed while we were not listening
                failures = 0
                async for _ in conn.notifies():
                    await _refresh(refresh)
        except (psycopg.Error, OSError) as exc:
            delay = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
            failures += 1
            LOG.warning("registry notifications: %s; reconnecting in %.1fs", str(exc).splitlines()[0], delay)
            await asyncio.sleep(delay)


async def _refresh(refresh: Callable[[], Awaitable[object]]) -> None:
    try:
        await refresh()
    except Exception as exc:  # the snapshot stays; the next notification or refresh tries again
        LOG.warning("registry refresh after a notification failed, serving the last snapshot: %s", exc)
