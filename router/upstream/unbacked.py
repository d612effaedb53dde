"""Servers users registered outside any Slurm job: removed once they fail their probes too long.

One registered from a job is removed by the supervisor when Slurm ends the job; one without a job,
or whose job the supervisor has never seen in Slurm (it sets the row's end time when it does), has
nothing else that would ever notice it died without deregistering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy import Engine

from launcher.core.db import session_factory
from launcher.core.deployments import get_deployment, mark_gone
from launcher.engines.table import EXTERNAL
from router.upstream.health import DOWN, Probed

LOG = logging.getLogger("router.health")


def overdue(backends: Iterable[Probed], down_s: float, now: float) -> list[Probed]:
    """The user servers no job seen in Slurm backs, down for DOWN_S or longer (pure)."""
    return [b for b in backends if b.record.engine == EXTERNAL and b.record.owner and b.record.end_time is None
            and b.record.state == "ready" and b.health.status == DOWN and now - b.health.since >= down_s]


def remove(engine: Engine, backend: Probed, down_s: float) -> bool:
    """Mark BACKEND's row gone unless it changed meanwhile (re-registered); True when it was."""
    with session_factory(engine)() as session:
        row = get_deployment(session, backend.record.id)
        if row.state != "ready" or row.updated_at != backend.record.updated_at:
            return False
        reason = f"failed its health probes for {down_s:g} s and no Slurm job backs it ({backend.health.reason})"
        mark_gone(session, row, reason)
    LOG.warning("removed backend %s (%s, %s of %s): %s", backend.record.id, backend.url, backend.record.model,
                backend.record.owner, reason)
    return True


async def remove_loop(engine: Engine, backends: Callable[[], Iterable[Probed]], down_s: float,
                      interval_s: float, clock: Callable[[], float], refresh: Callable[[], Awaitable[object]]) -> None:
    """Every INTERVAL_S, remove the overdue servers (each once: its row is gone after)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            due = overdue(backends(), down_s, clock())
            removed = [b for b in due if await asyncio.to_thread(remove, engine, b, down_s)]
            if removed:
                await refresh()
        except Exception:  # one bad round must not end the clean-up for good
            LOG.exception("removing unbacked servers failed")
