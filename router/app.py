"""The router application: create_app(settings, engine), its start-up and its clean shut-down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence

import aiohttp
from aiohttp import web
from sqlalchemy import Engine

from launcher.core.settings import Settings
from router.accounting.factory import make_accounting
from router.accounting.seam import Accounting
from router.api import admin, availability, endpoints, me, metrics, openapi, registration
from router.api.handover_metrics import HandoverCollector
from router.errors import Observer, make_middleware
from router.hops import HOP_ID, new_hop_id
from router.upstream.health import probe_loop
from router.upstream.registry_notify import listen, listens
from router.upstream.unbacked import remove_loop
from router.upstream.names import load_names
from router.upstream.proxy import Upstream
from router.request_log import make_request_log
from router.upstream.snapshot import RegistryView
from router.state import DB_ENGINE, STATE, RouterState, close_when_stopping

LOG = logging.getLogger("router")
LOG_FLUSH_S = 0.2
CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def create_app(settings: Settings, engine: Engine, accounting: Accounting | None = None,
               contexts: Sequence[CleanupContext] = ()) -> web.Application:
    """The router app; accounting None means make_accounting's (none when `router.accounting` is off).

    CONTEXTS are cleanup contexts that run with the app after its own start-up, such as the
    supervisor the CLI attaches with `router.supervise`. Reads the catalog named by settings
    `cluster.catalog` once (none: public name == model).
    """
    rs = settings.router
    log = make_request_log(rs.log_format, sys.stderr) if rs.request_log else None
    observers: list[Observer] = [log.write] if log else []
    hop_id = new_hop_id()
    app = web.Application(
        client_max_size=max(rs.max_body_bytes, rs.max_json_body_bytes),
        middlewares=[make_middleware(observers, hop_id)],
    )
    app[HOP_ID] = hop_id
    names = load_names(settings.cluster.catalog)
    chosen = accounting if accounting is not None else make_accounting(settings, engine)
    state = RouterState(settings=settings, view=RegistryView(engine, names), accounting=chosen, log=log,
                        names=names, observers=observers)
    app[STATE], app[DB_ENGINE] = state, engine
    app.on_response_prepare.append(close_when_stopping)
    app.cleanup_ctx.append(_lifecycle)
    app.cleanup_ctx.extend(contexts)
    add_routes(app, state)
    return app


def add_routes(app: web.Application, state: RouterState) -> None:
    """Mount every part of the API; metrics observes each request before availability does."""
    endpoints.add_routes(app)
    registration.add_routes(app)
    me.add_routes(app)
    metrics.add_routes(app)
    openapi.add_routes(app)
    admin.add_routes(app)
    availability.add_routes(app)
    # Job-end gauges (time left, late successors) join the /metrics registry.
    app[metrics.METRICS].registry.register(HandoverCollector(state, state.settings.cluster.successor_late_s))


def new_session() -> aiohttp.ClientSession:
    """The app's one upstream session: no pool cap, no decompression (bytes pass through)."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60)
    return aiohttp.ClientSession(connector=connector, auto_decompress=False)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    session = new_session()
    try:
        tasks = await _start(state, session, app[HOP_ID], app[DB_ENGINE])
    except BaseException:
        await session.close()
        raise
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await state.accounting.close()
        await session.close()


async def _start(state: RouterState, session: aiohttp.ClientSession, hop_id: str,
                 engine: Engine) -> list[asyncio.Task[None]]:
    """First snapshot, accounting, then the refresher and the health probes in the background."""
    rs = state.settings.router
    state.upstream = Upstream(
        session, connect_timeout_s=rs.connect_timeout_s, stall_timeout_s=rs.stall_timeout_s,
        retry_after_s=rs.retry_after_s, clock=time.time, hop_id=hop_id, max_response_bytes=rs.max_response_bytes,
    )
    await state.view.refresh()
    await state.accounting.start()
    backends = lambda: state.view.snapshot.backends.values()  # noqa: E731
    flusher = [asyncio.create_task(state.log.run(LOG_FLUSH_S), name="log-flush")] if state.log else []
    # PostgreSQL announces registry changes: refresh on each, not only every registry_refresh_s.
    if listens(engine):
        flusher.append(asyncio.create_task(listen(engine, state.view.refresh), name="registry-notify"))
    return flusher + [
        asyncio.create_task(state.view.run(rs.registry_refresh_s), name="registry-refresh"),
        asyncio.create_task(
            probe_loop(session, backends, rs.health_interval_s, rs.health_timeout_s, time.time),
            name="health-probes",
        ),
        asyncio.create_task(remove_loop(engine, backends, rs.unbacked_down_s, rs.health_interval_s, time.time,
                                        state.view.refresh), name="unbacked-servers"),
    ]
