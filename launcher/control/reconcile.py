"""Pure reconciliation: registry rows + Slurm's view + desired replicas -> a plan of changes.

No I/O: the supervisor gathers the inputs (one squeue call), applies the plan and logs it.
Times are naive UTC, like the registry. Per-job rules live in launcher.control.job_state, the
plan's records in launcher.control.plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from launcher.control import handover as ho
from launcher.control.handover import Drain
from launcher.control.job_state import change_message, follow_job, gone_update
from launcher.control.plan import Cancel, Plan, Policy, RowUpdate, Submission
from launcher.core.deployments import DeploymentRecord
from launcher.core.maintenance import active, describe
from launcher.core.targets import Target, TargetUpdate
from launcher.engines.table import EXTERNAL
from launcher.slurm.parse import JobInfo

# Rows that hold (or will hold) a replica; draining and gone ones are on their way out.
LIVE = ("pending", "starting", "ready")


def reconcile(
    deployments: Sequence[DeploymentRecord], jobs: Mapping[str, JobInfo],
    targets: Mapping[str, Target], policy: Policy, now: datetime,
) -> Plan:
    """The changes that bring the registry in line with Slurm and each model to its replica count.

    `jobs` must come from a Slurm query made after `deployments` was read, or a job submitted
    in between would look vanished.
    """
    followed = [follow_job(d, jobs.get(d.job_id), policy, now) for d in deployments
                if d.job_id is not None and d.state != "gone"]
    updates = [u for u, _ in followed if u]
    cancels = [c for _, c in followed if c]
    states = {dep.id: dep.state for dep in deployments}
    states.update({u.deployment_id: str(u.changes["state"]) for u in updates if "state" in u.changes})
    new_targets = _bookkeeping(deployments, updates, targets, policy, now)
    by_model: dict[str, list[DeploymentRecord]] = {}
    for dep in deployments:
        by_model.setdefault(dep.model, []).append(dep)
    submissions: list[Submission] = []
    notes = ho.late_successors(deployments, states, policy.handover, now)
    for model, target in targets.items():
        target = _effective(target, new_targets.get(model))
        more, surplus, stop = _scale(target, by_model.get(model, []), states, policy, now)
        more, note = _timed(more, policy, now)
        submissions += more
        notes += [note] if note else []
        new_targets.update({model: stop} if stop else {})
        # A surplus row's gone update replaces any refresh planned for it above.
        dropped = {dep.id for dep, _ in surplus}
        updates = [u for u in updates if u.deployment_id not in dropped] if dropped else updates
        updates += [gone_update(dep, why, now) for dep, why in surplus]
        cancels += [Cancel(dep.id, dep.job_id or "", why) for dep, why in surplus]
    drain_updates, drains = _drains(deployments, states, targets, policy, now)
    updates += drain_updates
    return Plan(tuple(updates), tuple(cancels), tuple(submissions), tuple(new_targets.values()),
                tuple(drains), tuple(notes))


def _drains(deployments: Sequence[DeploymentRecord], states: Mapping[int, str], targets: Mapping[str, Target],
            policy: Policy, now: datetime) -> tuple[list[RowUpdate], list[Drain]]:
    """Predecessors whose successor serves, jobs at their last safe moment, on-demand replicas no
    longer wanted: draining."""
    chosen = [(old, f"handed over to #{new_id}") for old, new_id in ho.drains(deployments, states)]
    handed = {old.id for old, _ in chosen}
    chosen += [(d, f"last safe moment: {policy.handover.last_safe_s:g} s before its time limit")
               for d in ho.last_safe(deployments, states, policy.handover, now) if d.id not in handed]
    idle = {m for m, t in targets.items() if t.desired_replicas == 0 and m in policy.on_demand}
    handed |= {d.id for d, _ in chosen}
    chosen += [(d, "idle: on-demand model no longer wanted") for d in deployments
               if d.model in idle and d.job_id and states[d.id] == "ready" and d.id not in handed]
    chosen = [(d, why) for d, why in chosen if d.engine != EXTERNAL]  # a user's own job is theirs: never signalled
    updates = []
    for dep, why in chosen:
        changes = {"state": "draining", "reason": why}
        updates.append(RowUpdate(dep.id, "ready", changes, change_message(dep, changes)))
    return updates, [Drain(dep.id, dep.job_id or "", why) for dep, why in chosen]


def _timed(more: list[Submission], policy: Policy, now: datetime) -> tuple[list[Submission], str]:
    """Submissions fitted before the next maintenance window: a shorter --time, or none (and why)."""
    if not more or not policy.handover.windows:
        return more, ""
    window = active(policy.handover.windows, now)
    if window is not None:
        return [], f"{more[0].model}: no new job during {describe(window)}"
    minutes, why = ho.successor_time(more[0].model, policy.handover, now)
    if why:
        return [], why
    return [replace(s, time_limit_min=minutes) for s in more], ""


def record_failure(target: Target, reason: str, policy: Policy, now: datetime, count: int = 1) -> TargetUpdate:
    """Count quick failures; back off exponentially, and stop after policy.max_quick_failures."""
    failures = target.quick_failures + count
    delay = min(policy.backoff_base_s * 2 ** (failures - 1), policy.backoff_max_s)
    if failures >= policy.max_quick_failures:
        stop = (f"stopped after {failures} quick failures in a row; last: {reason}. "
                f"Fix the cause, then `llm-launch up {target.model}` to try again")
        return TargetUpdate(target.model, failures, None, stop, f"{target.model}: {stop}")
    retry_at = now + timedelta(seconds=delay)
    message = f"{target.model}: quick failure {failures} ({reason}); next try in {delay:g} s"
    return TargetUpdate(target.model, failures, retry_at, None, message)


def _bookkeeping(
    deployments: Sequence[DeploymentRecord], updates: Iterable[RowUpdate],
    targets: Mapping[str, Target], policy: Policy, now: datetime,
) -> dict[str, TargetUpdate]:
    """Failures of this pass counted per model; a replica that stayed ready resets the count."""
    by_id = {dep.id: dep for dep in deployments}
    failed = [u for u in updates if u.failure]
    counts = Counter(by_id[u.deployment_id].model for u in failed)
    last = {by_id[u.deployment_id].model: str(u.changes["reason"]) for u in failed}
    result = {m: record_failure(targets[m], last[m], policy, now, n) for m, n in counts.items() if m in targets}
    settled = now - timedelta(seconds=policy.quick_failure_s)
    for dep in deployments:
        target = targets.get(dep.model)
        proven = dep.state == "ready" and dep.ready_at is not None and dep.ready_at <= settled
        if target and proven and target.quick_failures and dep.model not in result and _after(dep, target):
            result[dep.model] = TargetUpdate(dep.model, 0, None, None, f"{dep.model}: healthy again")
    return result


def _after(dep: DeploymentRecord, target: Target) -> bool:
    """Whether DEP was started after the model's failures: a replica that served all along (whose
    successors keep failing) proves nothing, and must not reset the backoff or lift a stop."""
    if target.stopped_reason:
        return False
    retry = target.next_attempt_at
    return retry is None or (dep.submitted_at is not None and dep.submitted_at >= retry)


def _effective(target: Target, update: TargetUpdate | None) -> Target:
    if update is None:
        return target
    return replace(target, quick_failures=update.quick_failures,
                   next_attempt_at=update.next_attempt_at, stopped_reason=update.stopped_reason)


def _scale(
    target: Target, deployments: Sequence[DeploymentRecord],
    states: Mapping[int, str], policy: Policy, now: datetime,
) -> tuple[list[Submission], list[tuple[DeploymentRecord, str]], TargetUpdate | None]:
    """(submissions, surplus rows to cancel, a stop to record) for one model and its rows."""
    if target.stopped_reason:
        return [], [], None
    live = [d for d in deployments if states[d.id] in LIVE]
    replaced = {d.predecessor_id for d in live}
    # A replica whose successor is already on its way does not count: it is about to leave.
    live = [d for d in live if d.id not in replaced]
    desired = target.desired_replicas
    missing = desired - len(live)
    # Nor does one inside its lead time: it gets a successor (when the count wants it).
    # Users' own jobs (registered by hand) count as replicas but are never replaced or cancelled.
    ours = [d for d in live if d.engine != EXTERNAL]
    due = ho.expiring(ours, states, policy.handover, now) if missing >= 0 else []
    missing += len(due)
    if missing < 0:
        # an intent without a job yet is never surplus: its job may exist and would run unknown
        waiting = sorted((d for d in ours if states[d.id] != "ready" and d.job_id), key=lambda d: d.id, reverse=True)
        why = f"surplus: {target.model} wants {desired} replica(s)"
        return [], [(d, why) for d in waiting[:-missing]], None
    if missing == 0 or (target.next_attempt_at and now < target.next_attempt_at):
        return [], [], None
    if target.model not in policy.launchable:
        stop = f"{target.model} is not in the catalog; cannot start replicas"
        return [], [], TargetUpdate(target.model, target.quick_failures, None, stop, stop)
    # After a failure, probe with one job rather than a burst.
    count = 1 if target.quick_failures else missing
    return _successors(target.model, due, policy, now)[:count] + [
        Submission(target.model, f"{len(live) - len(due)} of {desired} replica(s)")
    ] * max(0, count - len(due)), [], None


def _successors(model: str, due: Sequence[DeploymentRecord], policy: Policy, now: datetime) -> list[Submission]:
    lead = policy.handover.lead(model)
    return [Submission(model, f"successor of #{d.id}: {ho.time_left(d, now) or 0:.0f} s left, lead {lead:.0f} s",
                       predecessor_id=d.id) for d in due]
