"""Where a model stands (ready, loading, pending in Slurm, offline) and the 503 that says so (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Sequence

from router.errors import RouterError
from launcher.core.deployments import DeploymentRecord
from router.upstream.snapshot import Backend

READY, LOADING, PENDING, OFFLINE = "ready", "loading", "pending", "offline"


@dataclass(frozen=True)
class ModelStatus:
    """One model's state as clients see it; `expected_start` is Slurm's estimate (epoch seconds)."""

    status: str
    ready: int = 0
    expected_start: float | None = None
    reason: str = ""  # Slurm's pending reason, or why the replicas are not serving
    served_by: str = ""  # whose own job runs the servers, when users registered them
    replacement: str = ""  # "replacement queued in Slurm (...)" while a successor job is pending


def model_status(backends: Sequence[Backend]) -> ModelStatus:
    """Ready when a replica can serve; else loading (a job runs), pending (queued), offline."""
    ready = sum(1 for b in backends if b.routable)
    replacement = _replacement([b.record for b in backends if b.record.state == "pending" and b.record.predecessor_id])
    if ready:
        return ModelStatus(READY, ready, replacement=replacement)
    if any(b.record.state == "starting" for b in backends):
        return ModelStatus(LOADING)
    pending = [b.record for b in backends if b.record.state == "pending"]
    if pending:
        starts = [epoch(r.expected_start) for r in pending if r.expected_start is not None]
        reason = next((r.reason for r in pending if r.reason), "")
        return ModelStatus(PENDING, 0, min(starts) if starts else None, reason, replacement=replacement)
    down = next((b.health.reason for b in backends if b.record.state == "ready" and b.health.reason), "")
    return ModelStatus(OFFLINE, 0, None, down, served_by=_owners(backends))


def _owners(backends: Sequence[Backend]) -> str:
    """'alice's job 4242' for each server a user registered from their own job."""
    owners = [(b.record.owner, b.record.job_id) for b in backends if b.record.owner]
    return ", ".join(f"{who}'s job {job}" if job else f"a server of {who}" for who, job in owners)


def _replacement(pending: Sequence[DeploymentRecord]) -> str:
    """What clients are told about a successor that Slurm keeps waiting ("" when none waits)."""
    if not pending:
        return ""
    first = min(pending, key=lambda r: r.id)
    start = f"expected start {iso(epoch(first.expected_start))}" if first.expected_start else "no expected start yet"
    return f"replacement queued in Slurm (reason {first.reason or 'unknown'}, {start})"


def epoch(moment: datetime) -> float:
    """Seconds since the epoch of a registry time (naive means UTC)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def iso(seconds: float) -> str:
    """An epoch time as ISO 8601 UTC, e.g. 2025-01-31T12:00:00Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry_after(status: ModelStatus, now: float, default_s: int) -> int:
    """Seconds a client should wait: until Slurm's expected start when known and ahead, else DEFAULT_S."""
    if status.status == PENDING and status.expected_start is not None and status.expected_start > now:
        return max(1, math.ceil(status.expected_start - now))
    return default_s


def unavailable(name: str, status: ModelStatus, now: float, default_s: int, wanted: int = 0) -> RouterError:
    """The 503 for a known model with no ready replica: loading, queued, restarting or offline."""
    wait = retry_after(status, now, default_s)
    if status.status == OFFLINE and wanted > 0:
        # The supervisor is replacing a replica that ended (it may be backing off after a failure).
        message = (f"The model {name!r} has no replica serving right now; the service is starting "
                   f"a replacement{_why(status.reason)}. Try again in about {wait} s.")
        return RouterError(503, message, code="model_restarting", headers={"Retry-After": str(wait)})
    if status.status == LOADING:
        message = (f"The model {name!r} is loading: its job is running and the server is not ready yet. "
                   f"Try again in about {wait} s.")
    elif status.status == PENDING and status.replacement:
        message = (f"The model {name!r} has no replica serving right now: its job reached the end of its time "
                   f"limit; {status.replacement}. " + _start(status, now))
    elif status.status == PENDING:
        message = f"The model {name!r} is queued in Slurm{_why(status.reason)}; " + _start(status, now)
    elif status.served_by:  # a user's own server: its owner, not the admins, can bring it back
        message = (f"The model {name!r} is offline: it is served by {status.served_by}, which is not answering"
                   f"{_why(status.reason)}. Ask its owner; the service's administrators do not run it.")
    else:
        message = (f"The model {name!r} is offline: no replica is running or queued"
                   f"{_why(status.reason)}. Ask the service's administrators to start it.")
    code = {LOADING: "model_loading", PENDING: "model_queued"}.get(status.status, "model_offline")
    return RouterError(503, message, code=code, headers={"Retry-After": str(wait)})


def _why(reason: str) -> str:
    return f" (reason: {reason})" if reason else ""


def _start(status: ModelStatus, now: float) -> str:
    if status.expected_start is None:
        return "Slurm has no expected start time yet. Try again later."
    if status.expected_start <= now:
        return f"Slurm expected it to start at {iso(status.expected_start)}; it should start soon."
    minutes = math.ceil((status.expected_start - now) / 60)
    return f"Slurm expects it to start at {iso(status.expected_start)} (in about {minutes} min)."
