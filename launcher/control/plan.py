"""What a reconcile pass works with: its knobs (Policy) and what it decides (Plan and its parts).

Plain records, no I/O: launcher.control.job_state and launcher.control.reconcile make them, the
supervisor applies them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from launcher.control.handover import Drain, Handover
from launcher.core.targets import TargetUpdate


@dataclass(frozen=True)
class Policy:
    """Knobs of the reconcile rules; built from settings and the catalog by the supervisor."""

    launchable: frozenset[str] = frozenset()  # models the catalog can submit
    start_deadline_s: Mapping[str, float] = field(default_factory=dict)  # per model
    default_start_deadline_s: float = 900.0
    quick_failure_s: float = 300.0
    max_quick_failures: int = 3
    backoff_base_s: float = 30.0
    backoff_max_s: float = 900.0
    handover: Handover = field(default_factory=lambda: Handover({}))
    on_demand: frozenset[str] = frozenset()  # models whose ready replicas drain when wanted at 0


@dataclass(frozen=True)
class RowUpdate:
    """Column changes for one deployment, applied only if its state is still expect_state."""

    deployment_id: int
    expect_state: str
    changes: Mapping[str, object]
    message: str = ""  # what to log; "" for quiet refreshes (end time, expected start)
    failure: bool = False  # a quick failure of its model


@dataclass(frozen=True)
class Cancel:
    """scancel a job, once its row's update (gone) has been applied."""

    deployment_id: int
    job_id: str
    reason: str


@dataclass(frozen=True)
class Submission:
    """Submit one new job for a model (predecessor_id: the replica it takes over from)."""

    model: str
    reason: str
    predecessor_id: int | None = None
    time_limit_min: int | None = None  # shorter than usual: a maintenance window follows


@dataclass(frozen=True)
class Plan:
    """One pass's decisions; the supervisor writes updates and targets, then cancels, drains, submits."""

    updates: tuple[RowUpdate, ...] = ()
    cancels: tuple[Cancel, ...] = ()
    submissions: tuple[Submission, ...] = ()
    targets: tuple[TargetUpdate, ...] = ()
    drains: tuple[Drain, ...] = ()
    notes: tuple[str, ...] = ()  # warnings that hold while their cause does (log each once)
