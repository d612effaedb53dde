"""The supervisor as an asyncio task inside the router (`router.supervise = true`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from sqlalchemy import Engine

from launcher.core.catalog import load_catalog, resolve_catalog_path
from launcher.core.db import open_engine, resolve_db_url
from launcher.core.settings import Settings
from launcher.slurm.connect import open_slurm
from launcher.control.leadership import RETRY_S, leadership_for
from launcher.control.supervisor import Supervisor

LOG = logging.getLogger("llm_launch.supervisor")


def open_supervisor(settings: Settings, engine: Engine | None = None) -> Supervisor:
    """A supervisor on the configured registry (or ENGINE), catalog and Slurm."""
    engine = engine or open_engine(resolve_db_url(None, settings.database))
    catalog = load_catalog(resolve_catalog_path(None, settings.cluster.catalog))
    return Supervisor(engine, open_slurm(), catalog, settings, leadership=leadership_for(engine))


async def supervise_async(supervisor: Supervisor, interval_s: float) -> None:
    """The loop as an asyncio task: each pass runs in a worker thread, off the event loop."""
    while True:
        started = time.monotonic()
        if not await asyncio.to_thread(supervisor.lead):
            await asyncio.sleep(RETRY_S)
            continue
        try:
            await asyncio.to_thread(supervisor.run_once)
        except Exception:  # keep supervising; the router must not lose its supervisor to one pass
            LOG.exception("reconcile pass failed")
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


def supervisor_context(
    settings: Settings, engine: Engine | None = None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """An aiohttp cleanup context that supervises inside the router while the app runs."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        supervisor = await asyncio.to_thread(open_supervisor, settings, engine)
        task = asyncio.create_task(supervise_async(supervisor, settings.cluster.reconcile_interval_s))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if supervisor.leadership is not None:
            await asyncio.to_thread(supervisor.leadership.release)

    return context
