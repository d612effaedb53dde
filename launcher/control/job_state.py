"""What Slurm's view of one job means for its deployment row (pure; reconcile calls it per row).

Times are naive UTC, like the registry; Slurm's tz-aware times are converted here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from launcher.control.plan import Cancel, Policy, RowUpdate
from launcher.core.deployments import DeploymentRecord
from launcher.engines.table import EXTERNAL
from launcher.slurm.parse import JobInfo

# Slurm job states, grouped by what they mean for a model server.
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
ENDING = frozenset({"COMPLETING", "SIGNALING", "STAGE_OUT"})
# Ends someone chose, the limit brought, or a node caused: they say nothing about the model.
NOT_FAILURES = frozenset({"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE", "NODE_FAIL"})


def follow_job(
    dep: DeploymentRecord, job: JobInfo | None, policy: Policy, now: datetime,
) -> tuple[RowUpdate | None, Cancel | None]:
    """What Slurm's view of one job means for its row: (update or None, cancel or None).

    A server a user registered from their own job is followed the same way, but its end is
    never a failure of the model, and the user's job is never cancelled. One whose job Slurm has
    never shown us (PrivateData hides other users' jobs, or it runs on another cluster) is left
    to the router's probes (router.unbacked_down_s), not removed as vanished.
    """
    if dep.engine == EXTERNAL and job is None and dep.end_time is None:
        return None, None
    update, cancel = _follow(dep, job, policy, now)
    if dep.engine != EXTERNAL:
        return update, cancel
    return (replace(update, failure=False) if update else None), None


def _follow(
    dep: DeploymentRecord, job: JobInfo | None, policy: Policy, now: datetime,
) -> tuple[RowUpdate | None, Cancel | None]:
    if job is None:
        return _ended(dep, "vanished: Slurm no longer knows the job", now, policy), None
    if job.finished:
        ended = _ended(dep, final_reason(job), now, policy)
        # A job that failed between two passes was never seen running: keep where it ran.
        node = {"node": job.node} if job.node and not dep.node else {}
        return replace(ended, changes={**ended.changes, **node}), None
    if job.state in ENDING:
        return _set(dep, state="draining", reason=f"job {job.state}"), None
    if job.state in QUEUED:
        return _queued(dep, job, now)
    if dep.state in ("pending", "starting"):
        return _starting(dep, job, policy, now)
    return _set(dep, node=dep.node or job.node, end_time=naive(job.end_time)), None


def _starting(dep: DeploymentRecord, job: JobInfo, policy: Policy, now: datetime) -> tuple[RowUpdate | None, Cancel | None]:
    """A running job whose server has not registered yet: starting, until its deadline."""
    deadline = policy.start_deadline_s.get(dep.model, policy.default_start_deadline_s)
    started = naive(job.start_time)
    if started and now - started > timedelta(seconds=deadline):
        reason = f"not ready within its start deadline ({deadline:g} s)"
        return gone_update(dep, reason, now, failure=True), Cancel(dep.id, dep.job_id or "", reason)
    return _set(dep, state="starting", reason=None, node=job.node, end_time=naive(job.end_time)), None


def final_reason(job: JobInfo) -> str:
    """Slurm's final state first (CANCELLED, TIMEOUT, ...), then what else is known."""
    # A cancelled or timed-out job's exit code is only the signal that ended it: noise.
    detail = f"exit code {job.exit_code}" if job.exit_code and job.state in ("FAILED", "COMPLETED") else ""
    if job.state == "NODE_FAIL" and job.node:
        detail = f"node {job.node}"
    return f"{job.state} ({detail})" if detail else job.state


def naive(value: datetime | None) -> datetime | None:
    """Naive UTC (the registry's form) from Slurm's tz-aware time."""
    return value.astimezone(UTC).replace(tzinfo=None) if value and value.tzinfo else value


def _queued(dep: DeploymentRecord, job: JobInfo, now: datetime) -> tuple[RowUpdate | None, Cancel | None]:
    if dep.state != "pending":
        # A started job back in the queue was requeued (its node failed): its server is gone,
        # and a rerun would race the replacement, so end it.
        reason = f"requeued by Slurm ({job.reason or job.state}); cancelled"
        return gone_update(dep, reason, now), Cancel(dep.id, dep.job_id or "", reason)
    return _set(dep, reason=job.reason, expected_start=naive(job.start_time)), None


def _set(dep: DeploymentRecord, **values: object) -> RowUpdate | None:
    changes = {k: v for k, v in values.items() if getattr(dep, k) != v}
    if not changes:
        return None
    return RowUpdate(dep.id, dep.state, changes, change_message(dep, changes))


def change_message(dep: DeploymentRecord, changes: Mapping[str, object]) -> str:
    """The log line for CHANGES to DEP's row; "" for quiet refreshes (end time, expected start)."""
    head = f"{dep.model} job {dep.job_id} (deployment {dep.id})"
    if "state" in changes:
        where = f" on {changes['node']}" if changes.get("node") else ""
        why = f" ({changes['reason']})" if changes.get("reason") else ""
        return f"{head}: {dep.state} -> {changes['state']}{where}{why}"
    if "reason" in changes and changes["reason"]:
        return f"{head}: {dep.state}, Slurm says {changes['reason']}"
    return ""


def gone_update(dep: DeploymentRecord, reason: str, now: datetime, *, failure: bool = False) -> RowUpdate:
    """Row out of routing for good, saying why."""
    changes: dict[str, object] = {"state": "gone", "reason": reason, "gone_at": now}
    return RowUpdate(dep.id, dep.state, changes, change_message(dep, changes), failure)


def _ended(dep: DeploymentRecord, reason: str, now: datetime, policy: Policy) -> RowUpdate:
    """The job ended on its own (or vanished): gone, and a failure if it counts against the model."""
    return gone_update(dep, reason, now, failure=_is_failure(dep, reason, now, policy))


def _is_failure(dep: DeploymentRecord, reason: str, now: datetime, policy: Policy) -> bool:
    state = reason.split(" ", 1)[0]
    if state in NOT_FAILURES:
        return False
    if dep.ready_at is None:
        return True
    drained = dep.state == "draining" and state == "COMPLETED"
    return not drained and now - dep.ready_at < timedelta(seconds=policy.quick_failure_s)
