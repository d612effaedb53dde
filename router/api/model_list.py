"""GET /v1/models entries: OpenAI's fields plus status, replicas and the catalog's description."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from launcher.core.catalog import CatalogEntry
from launcher.core.keys import KeyRecord
from router.api.model_status import PENDING, ModelStatus, epoch, iso, model_status
from router.upstream.names import Names
from router.upstream.snapshot import Backend, Snapshot

OWNER = "llm-launch"


def model_entry(
    name: str, entry: CatalogEntry | None, backends: Sequence[Backend], wanted: int,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One model of the list: enough to render the models table of the API page (pure)."""
    status = model_status(backends)
    return {
        "id": name, "object": "model", "created": _created(backends), "owned_by": OWNER,
        **_status_fields(status), "replicas": {"ready": status.ready, "wanted": wanted},
        **_catalog_fields(entry), "recommended_parameters": dict(defaults or {}),
        "maintenance": None,  # reserved for announced maintenance windows
    }


def _created(backends: Sequence[Backend]) -> int:
    times = [b.record.ready_at or b.record.updated_at for b in backends]
    return int(epoch(min(times))) if times else 0


def _status_fields(status: ModelStatus) -> dict[str, Any]:
    pending = status.status == PENDING
    start = status.expected_start
    return {
        "status": status.status,
        "expected_start": iso(start) if pending and start is not None else None,
        "status_reason": status.replacement or status.reason or None,
    }


def _catalog_fields(entry: CatalogEntry | None) -> dict[str, Any]:
    if entry is None:
        return {"context_length": None, "max_tokens": None, "capabilities": [], "dimensions": None,
                "base_model": None, "best_for": None}
    return {
        "context_length": entry.context_length, "max_tokens": entry.max_tokens,
        "capabilities": list(entry.capabilities), "dimensions": entry.dimensions,
        "base_model": entry.base_model or None, "best_for": entry.best_for or None,
    }


def list_entries(names: Names, snapshot: Snapshot, key: KeyRecord) -> list[dict[str, Any]]:
    """The models KEY may use: catalog names in catalog order, then models registered by hand."""
    return [entry for name, entry in _entries(names, snapshot) if key.allows(name)]


def _entries(names: Names, snapshot: Snapshot) -> Iterator[tuple[str, dict[str, Any]]]:
    pools, targets = snapshot.pools, snapshot.targets
    for name, route in names.routes.items():
        pool = pools.get(route.pool)
        backends = pool.backends if pool is not None else ()
        wanted = targets.get(route.pool, route.entry.replicas)
        yield name, model_entry(name, route.entry, backends, wanted, route.defaults)
    for name, pool in sorted(pools.items()):
        if name not in names.entries:
            yield name, model_entry(name, None, pool.backends, targets.get(name, len(pool.backends)))
