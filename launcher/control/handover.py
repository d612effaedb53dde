"""Successors before a job's time limit, and the drain once they serve (pure; reconcile calls it).

A ready job whose time left falls under its model's lead time gets a successor; the successor
takes the old replica's place in the replica count, and once it is ready the old one drains. A
job whose successor is not ready keeps serving until its last safe moment, then drains anyway.
Times are naive UTC, like the registry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from launcher.core.maintenance import Window, allowed_seconds, describe, slurm_minutes
from launcher.core.deployments import DeploymentRecord
from launcher.core.handover_check import MIN_SERVE_SHARE


@dataclass(frozen=True)
class Drain:
    """Signal a ready job to drain (render.DRAIN_SIGNAL to its batch shell), once its row says draining."""

    deployment_id: int
    job_id: str
    reason: str


@dataclass(frozen=True)
class Handover:
    """What the planner needs to know about successors, per model (built from settings and history)."""

    lead_s: Mapping[str, float]  # per model; absent: default_lead_s
    default_lead_s: float = 600.0
    late_s: float = 300.0
    windows: tuple[Window, ...] = ()
    time_limit_s: Mapping[str, float] | None = None  # per model: the --time its jobs get
    # per model: the submit-to-ready time the lead counted on (start-up + margin); a successor
    # not ready by then is LATE
    ready_within_s: Mapping[str, float] = field(default_factory=dict)
    last_safe_s: float = 0.0  # a ready job with less time left drains, successor or not (0: never)

    def lead(self, model: str) -> float:
        """Seconds before a job's end at which its successor is submitted."""
        return self.lead_s.get(model, self.default_lead_s)

    def due_at(self, dep: DeploymentRecord) -> datetime | None:
        """When DEP's successor is due: a lead before its end, once it served MIN_SERVE_SHARE of its limit.

        The second rule plans a late successor's own successor from its end, not at once.
        """
        if dep.end_time is None:
            return None
        due = dep.end_time - timedelta(seconds=self.lead(dep.model))
        limit = (self.time_limit_s or {}).get(dep.model)
        if limit and dep.ready_at is not None:
            due = max(due, dep.ready_at + timedelta(seconds=limit * MIN_SERVE_SHARE))
        return due


def lead_time_s(startups: Sequence[float], floor_s: float, margin_s: float, percentile: float) -> float:
    """The PERCENTILE of observed submit-to-ready times plus MARGIN_S, never under FLOOR_S."""
    if not startups:
        return floor_s
    return max(floor_s, start_up_s(startups, percentile) + margin_s)


def start_up_s(startups: Sequence[float], percentile: float) -> float:
    """The PERCENTILE (nearest rank) of observed submit-to-ready times; 0 when none was seen."""
    if not startups:
        return 0.0
    ordered = sorted(startups)
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def startup_times(rows: Iterable[tuple[str, datetime, datetime]], per_model: int) -> dict[str, list[float]]:
    """Submit-to-ready seconds of each model's last PER_MODEL jobs; ROWS are (model, submitted, ready), newest first."""
    found: dict[str, list[float]] = {}
    for model, submitted, ready in rows:
        seen = found.setdefault(model, [])
        if len(seen) < per_model and ready >= submitted:
            seen.append((ready - submitted).total_seconds())
    return found


def time_left(dep: DeploymentRecord, now: datetime) -> float | None:
    """Seconds until the job's end time, None when unknown."""
    return (dep.end_time - now).total_seconds() if dep.end_time is not None else None


def expiring(live: Sequence[DeploymentRecord], states: Mapping[int, str], handover: Handover,
             now: datetime) -> list[DeploymentRecord]:
    """Ready jobs (without a successor) whose successor is due, soonest end first."""
    due = []
    for dep in live:
        when = handover.due_at(dep)
        if states[dep.id] == "ready" and dep.job_id and when is not None and now >= when:
            due.append(dep)
    return sorted(due, key=lambda d: d.end_time or now)


def successor_time(model: str, handover: Handover, now: datetime) -> tuple[int | None, str]:
    """(--time in minutes for a job submitted NOW, or None for the default; "" or why not to submit).

    A job must not run into a maintenance window: it gets a shorter limit, and none at all when
    the time before the window would hardly cover its start-up.
    """
    limit = (handover.time_limit_s or {}).get(model)
    if limit is None or not handover.windows:
        return None, ""
    allowed = allowed_seconds(handover.windows, now, limit)
    if allowed >= limit:
        return None, ""
    minutes = slurm_minutes(allowed)
    if minutes * 60 < 2 * handover.lead(model):
        window = min((w for w in handover.windows if w.end > now), key=lambda w: w.start)
        return None, f"{model}: no new job before {describe(window)} (it would end before it is worth starting)"
    return minutes, ""


def drains(deployments: Sequence[DeploymentRecord], states: Mapping[int, str]) -> list[tuple[DeploymentRecord, int]]:
    """(ready predecessor, its ready successor's id): the handovers to finish by draining."""
    by_id = {d.id: d for d in deployments}
    found = []
    for dep in deployments:
        old = by_id.get(dep.predecessor_id) if dep.predecessor_id is not None else None
        if old is not None and old.job_id and states[dep.id] == "ready" and states[old.id] == "ready":
            found.append((old, dep.id))
    return found


def last_safe(deployments: Sequence[DeploymentRecord], states: Mapping[int, str], handover: Handover,
              now: datetime) -> list[DeploymentRecord]:
    """Ready jobs at their last safe moment: what the router still admits needs all the time left."""
    if handover.last_safe_s <= 0:
        return []
    return [d for d in deployments if states[d.id] == "ready" and d.job_id
            and (left := time_left(d, now)) is not None and left < handover.last_safe_s]


def is_late(dep: DeploymentRecord, handover: Handover, now: datetime) -> bool:
    """Whether a waiting successor is later than its lead predicted (its start-up plus the margin)."""
    within = handover.ready_within_s.get(dep.model)
    if within is None or dep.submitted_at is None:
        return False
    return (now - dep.submitted_at).total_seconds() > within


def late_successors(deployments: Sequence[DeploymentRecord], states: Mapping[int, str], handover: Handover,
                    now: datetime) -> list[str]:
    """Messages about successors later than their lead predicted (stable text: logged once)."""
    by_id = {d.id: d for d in deployments}
    notes = []
    for dep in deployments:
        if dep.predecessor_id is None or states[dep.id] not in ("pending", "starting") or not is_late(dep, handover, now):
            continue
        old = by_id.get(dep.predecessor_id)
        why = f"Slurm: {dep.reason}" if dep.state == "pending" and dep.reason else "not ready yet"
        end = (f"#{old.id} (job {old.job_id}) ends at {old.end_time:%H:%M:%S} UTC"
               if old is not None and old.end_time is not None else "its predecessor has ended")
        notes.append(f"{dep.model}: successor #{dep.id} (job {dep.job_id}) is still {states[dep.id]} ({why}), "
                     f"later than its lead predicted; {end}")
    return notes
