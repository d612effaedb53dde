"""Model target rows: each model's desired replica count and the supervisor's failure bookkeeping.

The one module that writes model_targets: `up`/`down` (change_target), the router's on-demand
start and release (set_desired_replicas), and the supervisor's backoff (save_target).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from launcher.core.schema import ModelTarget


@dataclass(frozen=True)
class Target:
    """A model's desired replica count and its failure bookkeeping (model_targets row)."""

    model: str
    desired_replicas: int
    quick_failures: int = 0
    next_attempt_at: datetime | None = None
    stopped_reason: str | None = None


@dataclass(frozen=True)
class TargetUpdate:
    """New failure bookkeeping for a model."""

    model: str
    quick_failures: int
    next_attempt_at: datetime | None
    stopped_reason: str | None
    message: str = ""


def load_targets(session: Session) -> dict[str, Target]:
    """Every model's desired replica count and failure bookkeeping."""
    return {
        t.model: Target(t.model, t.desired_replicas, t.quick_failures, t.next_attempt_at, t.stopped_reason)
        for t in session.scalars(select(ModelTarget))
    }


def change_target(session: Session, model: str, *, now: datetime, delta: int = 0,
                  absolute: int | None = None) -> int:
    """Raise or lower MODEL's desired replica count (never below 0); returns the new count.

    An admin's change also clears the supervisor's stop-after-repeated-failures state.
    """
    target = session.get(ModelTarget, model)
    if target is None:
        target = ModelTarget(model=model, desired_replicas=0, updated_at=now)
        session.add(target)
    wanted = absolute if absolute is not None else target.desired_replicas + delta
    target.desired_replicas = max(0, wanted)
    target.stopped_reason, target.quick_failures, target.updated_at = None, 0, now
    session.commit()
    return target.desired_replicas


def set_desired_replicas(session: Session, model: str, replicas: int, *, now: datetime) -> None:
    """Set MODEL's desired replica count (the supervisor does the rest); failure bookkeeping is kept."""
    target = session.get(ModelTarget, model)
    if target is None:
        session.add(ModelTarget(model=model, desired_replicas=replicas, updated_at=now))
    elif target.desired_replicas != replicas:
        target.desired_replicas, target.updated_at = replicas, now
    session.commit()


def save_target(session: Session, target: TargetUpdate, now: datetime) -> None:
    """Store a model's new failure bookkeeping (the row exists: reconcile only plans for known targets).

    The caller commits: the supervisor writes this in the transaction of its plan.
    """
    session.execute(
        update(ModelTarget).where(ModelTarget.model == target.model).values(
            quick_failures=target.quick_failures, next_attempt_at=target.next_attempt_at,
            stopped_reason=target.stopped_reason, updated_at=now,
        )
    )
