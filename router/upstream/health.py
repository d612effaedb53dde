"""Backend health: pure state transitions, the per-kind probe, and the loop that runs probes.

Backends are seen through the `Probed` protocol, so this module needs nothing from the snapshot
(router.upstream.snapshot imports HealthState from here; never the reverse).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import aiohttp
import orjson

from launcher.core.deployments import DeploymentRecord
from launcher.engines.table import ENGINES

LOG = logging.getLogger("router.health")
UNKNOWN, UP, DOWN = "unknown", "up", "down"


@dataclass(frozen=True)
class HealthState:
    """A backend's health; an unknown backend is routed to (failover covers a dead one)."""

    status: str = UNKNOWN
    reason: str = ""
    since: float = 0.0

    @property
    def routable(self) -> bool:
        return self.status != DOWN


class Probed(Protocol):
    """What health checking needs of a backend (router.upstream.snapshot.Backend has it)."""

    record: DeploymentRecord
    url: str
    headers: dict[str, str]
    served_name: str
    health: HealthState

    def set_health(self, health: HealthState) -> None:
        """Take a new health state."""


def after_probe(state: HealthState, ok: bool, reason: str, now: float) -> HealthState:
    """The state after an active probe: up when it passed, down with its reason when not.

    A backend that stays down for another reason (it answered, now it rejects the secret) keeps
    its `since` but takes the new reason: the 503 a client gets says what is wrong now.
    """
    status = UP if ok else DOWN
    if status == state.status:
        return state if ok or reason == state.reason else HealthState(DOWN, reason, state.since)
    return HealthState(status, "" if ok else reason, now)


def after_failure(state: HealthState, reason: str, now: float) -> HealthState:
    """The state after a request saw a connection error or a timeout: out of rotation."""
    if state.status == DOWN:
        return state
    return HealthState(DOWN, reason, now)


def apply(backend: Probed, new: HealthState) -> None:
    """Give BACKEND its new state, logging a change once."""
    if new is backend.health:
        return
    backend.set_health(new)
    if new.status == DOWN:
        LOG.warning("backend %s (%s) is down: %s", backend.record.id, backend.url, new.reason)
    else:
        LOG.info("backend %s (%s) is %s", backend.record.id, backend.url, new.status)


async def probe(session: aiohttp.ClientSession, backend: Probed, timeout: aiohttp.ClientTimeout) -> str:
    """Probe BACKEND without generating anything (no GPU time); '' when ready, else why not.

    Transcription servers answer /health. vLLM answers /health (its engine is alive) and lists
    its served names on /v1/models (the right model, and our secret opens it); other servers
    registered by hand only the latter. A chat answer is never asked for, so a reasoning model
    whose test answer would have empty `content` cannot look unhealthy.
    """
    for path in probe_paths(backend.record.kind, backend.record.engine):
        reason = await _probe_path(session, backend, path, timeout)
        if reason:
            return reason
    return ""


async def _probe_path(session: aiohttp.ClientSession, backend: Probed, path: str, timeout: aiohttp.ClientTimeout) -> str:
    try:
        async with session.get(backend.url + path, headers=backend.headers, timeout=timeout) as resp:
            return probe_verdict(path, resp.status, await resp.read(), backend.served_name)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return f"{path}: {type(exc).__name__} {exc}".strip()


def probe_paths(kind: str, engine: str) -> tuple[str, ...]:
    """What to GET to tell whether a server of KIND on ENGINE is ready."""
    if kind == "transcription":
        return ("/health",)
    spec = ENGINES.get(engine)  # servers registered by hand ("external") are not in the table
    return ("/health", "/v1/models") if spec and spec.probes_health else ("/v1/models",)


def probe_verdict(path: str, status: int, body: bytes, served_name: str) -> str:
    """Whether a probe answer means ready ('') or why not (pure)."""
    if status != 200:
        return f"{path} answered {status}"
    return _missing_model(body, served_name) if path == "/v1/models" else ""


def _missing_model(body: bytes, model: str) -> str:
    try:
        listed = {entry.get("id") for entry in orjson.loads(body).get("data", [])}
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return "/v1/models answered something that is not a model list"
    return "" if model in listed else f"/v1/models does not list {model!r}"


async def probe_all(
    session: aiohttp.ClientSession, backends: Iterable[Probed], timeout: aiohttp.ClientTimeout,
    clock: Callable[[], float],
) -> None:
    """Probe every backend with a URL once, concurrently, and apply the results."""
    targets = [b for b in backends if b.url and b.record.state in ("starting", "ready")]
    reasons = await asyncio.gather(*(probe(session, b, timeout) for b in targets))
    now = clock()
    for backend, reason in zip(targets, reasons):
        apply(backend, after_probe(backend.health, not reason, reason, now))


async def probe_loop(
    session: aiohttp.ClientSession, backends: Callable[[], Iterable[Probed]], interval_s: float,
    timeout_s: float, clock: Callable[[], float],
) -> None:
    """Probe all backends every INTERVAL_S seconds, the first round right away."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    while True:
        try:
            await probe_all(session, backends(), timeout, clock)
        except Exception:  # a bug in one round must not stop health checking for good
            LOG.exception("health probe round failed")
        await asyncio.sleep(interval_s)
