"""The router's in-memory view of keys and backends, refreshed from the registry off the loop.

The request path only reads `RegistryView.snapshot`; the database is read in a worker thread,
and only when a cheap fingerprint query says something changed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from sqlalchemy import Engine, func, select

from launcher.core.db import session_factory
from launcher.core.keys import KeyRecord, list_keys
from launcher.core.schema import ApiKey, Deployment, ModelTarget
from launcher.core.deployments import DeploymentRecord, list_deployments
from router.upstream.health import HealthState
from router.upstream.names import Names
from router.upstream.walltime import end_epoch

LOG = logging.getLogger("router.registry")


class Backend:
    """One deployment as the router routes to it: its record, its load and its health."""

    __slots__ = ("record", "model", "served_name", "url", "headers", "outstanding", "health", "routable", "end_at")

    def __init__(self, record: DeploymentRecord, model: str | None = None, served_name: str | None = None) -> None:
        self.record = record
        self.model = model or record.model  # the pool: the catalog entry's name when there is one
        self.served_name = served_name or self.model  # what the server's /v1/models lists
        self.url = record.url or ""
        # Built once: the backend's secret is its bearer token; the client's key never goes upstream.
        self.headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if record.secret:
            self.headers["Authorization"] = f"Bearer {record.secret}"
        self.outstanding = 0
        self.health = HealthState()
        self.routable = False
        self.end_at = end_epoch(record.end_time)  # the job's Slurm end, epoch seconds (inf: none)
        self._update_routable()

    def same_server(self, record: DeploymentRecord) -> bool:
        """Whether RECORD still names this server (so its load and health carry over)."""
        return record.url == self.record.url and record.secret == self.record.secret

    def update(self, record: DeploymentRecord) -> None:
        """Take a newer record of the same server."""
        self.record = record
        self.end_at = end_epoch(record.end_time)  # `scontrol update TimeLimit` moves it
        self._update_routable()

    def set_health(self, health: HealthState) -> None:
        """Take a new health state."""
        self.health = health
        self._update_routable()

    def _update_routable(self) -> None:
        self.routable = bool(self.url) and self.record.state == "ready" and self.health.routable


@dataclass
class Pool:
    """The backends of one model, and the rotation counter that breaks ties between them."""

    model: str
    backends: tuple[Backend, ...]
    turn: int = 0


@dataclass(frozen=True)
class Snapshot:
    """Keys by SHA-256 hash, pools of backends by model, wanted replicas; replaced, never mutated."""

    keys: Mapping[str, KeyRecord] = field(default_factory=dict)
    pools: Mapping[str, Pool] = field(default_factory=dict)
    backends: Mapping[int, Backend] = field(default_factory=dict)
    targets: Mapping[str, int] = field(default_factory=dict)  # desired replicas by model (`up`)
    stopped: frozenset[str] = frozenset()  # models the supervisor gave up on after quick failures


def merge_backends(
    old: Mapping[int, Backend], records: Sequence[DeploymentRecord], names: Names | None = None,
) -> dict[int, Backend]:
    """New backends for RECORDS, keeping load and health of those whose server did not change."""
    names = names or Names()
    merged: dict[int, Backend] = {}
    for record in records:
        backend = old.get(record.id)
        if backend is not None and backend.same_server(record):
            backend.update(record)
        else:
            pool = names.pool_key(record.model)
            backend = Backend(record, pool, names.served_name(pool))
        merged[record.id] = backend
    return merged


def build_pools(backends: Mapping[int, Backend], old: Mapping[str, Pool]) -> dict[str, Pool]:
    """Group backends by model; a model's rotation counter survives the rebuild."""
    grouped: dict[str, list[Backend]] = {}
    for backend in backends.values():
        grouped.setdefault(backend.model, []).append(backend)
    pools = {}
    for model, members in grouped.items():
        previous = old.get(model)
        pools[model] = Pool(model, tuple(members), previous.turn if previous else 0)
    return pools


class RegistryView:
    """Holds the current snapshot and reloads it from the registry when the registry changed."""

    def __init__(self, engine: Engine, names: Names | None = None) -> None:
        self.snapshot = Snapshot()
        self._sessions = session_factory(engine)
        self._names = names or Names()
        self._fingerprint: tuple[Any, ...] | None = None
        # One refresh at a time (periodic, notified, after a registration): a slower, older load
        # must never replace a newer snapshot.
        self._refreshing = asyncio.Lock()
        self.errors = 0  # refreshes the database failed (for /metrics)

    async def refresh(self) -> bool:
        """Reload keys and deployments if they changed; True when the snapshot was replaced."""
        async with self._refreshing:
            try:
                return await self._refresh()
            except Exception:
                self.errors += 1
                raise

    async def _refresh(self) -> bool:
        loaded = await asyncio.to_thread(self._load_if_changed)
        if loaded is None:
            return False
        keys, records, targets, stopped = loaded
        backends = merge_backends(self.snapshot.backends, records, self._names)
        pools = build_pools(backends, self.snapshot.pools)
        self.snapshot = Snapshot(keys=keys, pools=pools, backends=backends, targets=targets, stopped=stopped)
        return True

    async def run(self, interval_s: float) -> None:
        """Refresh forever; a failing database keeps the last good snapshot."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # the router keeps serving from the last snapshot
                LOG.warning("registry refresh failed, serving the last snapshot: %s", exc)

    def _load_if_changed(
        self,
    ) -> tuple[dict[str, KeyRecord], list[DeploymentRecord], dict[str, int], frozenset[str]] | None:
        with self._sessions() as session:
            fingerprint = tuple(session.execute(_FINGERPRINT).one())
            if fingerprint == self._fingerprint:
                return None
            keys = {record.key_hash: record for record in list_keys(session)}
            records = list_deployments(session)
            rows = session.execute(select(ModelTarget.model, ModelTarget.desired_replicas, ModelTarget.stopped_reason))
            targets, stopped = {}, set()
            for model, desired, stopped_reason in rows:
                targets[model] = desired
                if stopped_reason:
                    stopped.add(model)
        self._fingerprint = fingerprint
        return keys, records, targets, frozenset(stopped)


# Every writer bumps updated_at, so counts and latest change times tell whether to reload.
_FINGERPRINT = select(
    select(func.count(ApiKey.id)).scalar_subquery(),
    select(func.max(ApiKey.updated_at)).scalar_subquery(),
    select(func.count(Deployment.id)).scalar_subquery(),
    select(func.max(Deployment.updated_at)).scalar_subquery(),
    select(func.count(ModelTarget.model)).scalar_subquery(),
    select(func.max(ModelTarget.updated_at)).scalar_subquery(),
)
