"""Serving across job ends: request deadlines, maintenance 503s, start on demand, release when idle.

Mounted by router.app: `add_routes(app)` stores an `Availability` under AVAILABILITY, joins
the request observers (decode rates, last use) and runs the idle check. Endpoints call
`deadlines` for each request and `when_not_ready` when a model has no ready replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import Engine

from launcher.core.db import session_factory, utcnow
from launcher.core.handover_check import handover_problems, time_limits
from launcher.core.maintenance import Window, active, describe, horizon, iso, parse_windows, retry_after_s
from launcher.core.targets import set_desired_replicas
from router.errors import RouterError
from router.request_log import RequestContext
from router.upstream.snapshot import Pool
from router.state import DB_ENGINE, STATE, RouterState
from router.upstream.walltime import DecodeRates, worst_case_s

LOG = logging.getLogger("router.availability")
POLL_S = 0.25  # how often a request waiting for an on-demand replica looks again


@dataclass
class Availability:
    """Per app: decode rates, maintenance windows and on-demand bookkeeping."""

    windows: tuple[Window, ...] = ()
    drain_s: float = 60.0
    max_request_s: float = 900.0
    wait_s: float = 60.0
    idle_s: float = 1800.0
    rates: DecodeRates = field(default_factory=DecodeRates)
    on_demand: dict[str, str] = field(default_factory=dict)  # public name -> pool, on-demand models only
    last_use: dict[str, float] = field(default_factory=dict)  # pool -> time.monotonic()
    waking: set[str] = field(default_factory=set)

    def deadlines(self, model: str, max_tokens: int, now: float) -> tuple[float, float]:
        """(hard, soft) end for one request's replica: past the drain threshold; past its worst case."""
        worst = worst_case_s(max_tokens, self.rates.rate(model), self.max_request_s)
        return now + self.drain_s, now + max(worst, self.drain_s)

    def observe(self, method: str, path: str, status: int, ctx: RequestContext) -> None:
        """After each request: fold a whole answer into the decode rate; note an on-demand model's use."""
        model, usage = ctx.model, ctx.usage
        if model is None:
            return
        if status == 200 and usage is not None and not usage.estimated:
            self.rates.observe(model, usage.completion_tokens, time.perf_counter() - ctx.started)
        pool = self.on_demand.get(model)
        if pool is not None:
            self.last_use[pool] = time.monotonic()


AVAILABILITY = web.AppKey("llm_launch_availability", Availability)


def availability_for(state: RouterState) -> Availability:
    """The Availability of an app's settings and catalog."""
    cluster, router = state.settings.cluster, state.settings.router
    on_demand = {name: route.pool for name, route in state.names.routes.items() if route.entry.on_demand}
    return Availability(parse_windows(cluster.maintenance_windows), cluster.drain_threshold_s,
                        cluster.max_request_duration_s, router.on_demand_wait_s, router.on_demand_idle_s,
                        on_demand=on_demand)


def add_routes(app: web.Application) -> None:
    """Install availability on the app (no routes of its own)."""
    state = app[STATE]
    for line in handover_problems(time_limits(state.names.entries, state.settings.cluster), state.settings.cluster):
        LOG.warning("%s", line)
    availability = availability_for(state)
    app[AVAILABILITY] = availability
    state.observers.append(availability.observe)
    if availability.on_demand:
        app.cleanup_ctx.append(_idle_context)


def maintenance_error(window: Window, now: datetime) -> RouterError:
    """The 503 during a maintenance window: its end in the message and in Retry-After."""
    return RouterError(503, f"The service is down for planned {describe(window)}; try again after {iso(window.end)}.",
                       code="maintenance", headers={"Retry-After": str(retry_after_s(window, now))})


def announcement(app: web.Application, now: datetime) -> dict[str, Any] | None:
    """The current or next maintenance window for /v1/models, or None."""
    availability = app.get(AVAILABILITY)
    windows = horizon(availability.windows, now) if availability else ()
    if not windows:
        return None
    first = windows[0]
    return {"name": first.name, "start": iso(first.start), "end": iso(first.end), "active": first.start <= now}


async def when_not_ready(app: web.Application, model: str, error: RouterError, retry: Callable[[], Pool]) -> Pool:
    """A model without a ready replica: maintenance 503, or start it on demand and wait (bounded), or ERROR."""
    availability = app.get(AVAILABILITY)
    if availability is None or error.status != 503:
        raise error
    now = utcnow()
    window = active(availability.windows, now)
    if window is not None:
        raise maintenance_error(window, now)
    pool = availability.on_demand.get(model)
    if pool is None or availability.wait_s <= 0:
        raise error
    await _wake(app, availability, pool)
    deadline = time.monotonic() + availability.wait_s
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        try:
            return retry()
        except RouterError as again:
            if again.status != 503:
                raise
            error = again
    raise error


async def _wake(app: web.Application, availability: Availability, pool: str) -> None:
    """Want one replica of POOL if none is wanted (once, however many requests wait)."""
    availability.last_use[pool] = time.monotonic()
    if app[STATE].view.snapshot.targets.get(pool, 0) > 0 or pool in availability.waking:
        return
    availability.waking.add(pool)
    try:
        await asyncio.to_thread(set_desired, app[DB_ENGINE], pool, 1)
        LOG.info("%s: a request arrived with no replica; starting one on demand", pool)
        await app[STATE].view.refresh()
    finally:
        availability.waking.discard(pool)


def set_desired(engine: Engine, model: str, replicas: int) -> None:
    """Set MODEL's desired replica count (the supervisor does the rest); failure bookkeeping is kept."""
    with session_factory(engine)() as session:
        set_desired_replicas(session, model, replicas, now=utcnow())


def idle_pools(availability: Availability, targets: dict[str, int], busy: set[str], now: float,
               started: float) -> list[str]:
    """On-demand pools still wanted, with nothing in flight and no request for idle_s (pure)."""
    pools = set(availability.on_demand.values())
    return sorted(p for p in pools if targets.get(p, 0) > 0 and p not in busy
                  and now - availability.last_use.get(p, started) > availability.idle_s)


async def _release_idle(app: web.Application, started: float) -> None:
    availability, state = app[AVAILABILITY], app[STATE]
    while True:
        await asyncio.sleep(min(30.0, max(0.5, availability.idle_s / 4)))
        snapshot = state.view.snapshot
        busy = {b.model for b in snapshot.backends.values() if b.outstanding}
        for pool in idle_pools(availability, dict(snapshot.targets), busy, time.monotonic(), started):
            try:
                await asyncio.to_thread(set_desired, app[DB_ENGINE], pool, 0)
            except Exception as exc:  # the next round tries again
                LOG.warning("%s: cannot release the idle on-demand model: %s", pool, exc)
                continue
            LOG.info("%s: no request for %g s; releasing its replicas", pool, availability.idle_s)


async def _idle_context(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_release_idle(app, time.monotonic()), name="on-demand-idle")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
