"""The reconcile loop's shell: read the registry, ask Slurm once, apply the plan, submit, log.

Runs as `llm-launch supervise`, or inside the router (`supervisor_context`) in a worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from launcher.core.catalog import Catalog, CatalogEntry
from launcher.core.db import session_factory, utcnow
from launcher.core.schema import Deployment
from launcher.control.deploy import submit_deployment
from launcher.control.handover import Handover
from launcher.control.lead_times import handover_policy, recent_startups, windows_at
from launcher.control.leadership import RETRY_S, Leadership, identity
from launcher.control.orphans import ORPHAN_GRACE_S, intents, resolve_orphans
from launcher.core.handover_check import handover_problems, time_limits
from launcher.core.maintenance import Window, parse_windows
from launcher.control.plan import Plan, Policy, Submission
from launcher.control.reconcile import reconcile, record_failure
from launcher.core.deployments import DeploymentRecord, compare_and_set
from launcher.core.targets import Target, TargetUpdate, load_targets, save_target
from launcher.core.settings import ClusterSettings, Settings
from launcher.slurm.client import SlurmClient, SlurmError
from launcher.slurm.render import DRAIN_SIGNAL

LOG = logging.getLogger("llm_launch.supervisor")
_BUSY_RETRIES = 5
_T = TypeVar("_T")


class Submit(Protocol):
    """How a replica is started (launcher.deploy.submit_deployment's shape)."""

    def __call__(self, session: Session, slurm: SlurmClient, entry: CatalogEntry, cluster: ClusterSettings, *,
                 predecessor_id: int | None = None, now: datetime) -> DeploymentRecord: ...


class TimedSubmit(Protocol):
    """A Submit that also takes a --time (minutes), for jobs that must end before a window."""

    def __call__(self, session: Session, slurm: SlurmClient, entry: CatalogEntry, cluster: ClusterSettings, *,
                 time_limit: str | None = None, predecessor_id: int | None = None,
                 now: datetime) -> DeploymentRecord: ...


@dataclass(frozen=True)
class PassSummary:
    """What one reconcile pass did and cost."""

    deployments: int
    changed: int
    submitted: int
    cancelled: int
    slurm_commands: int
    wall_s: float
    cpu_s: float
    error: str | None = None


def policy_for(catalog: Catalog, settings: Settings, handover: Handover | None = None) -> Policy:
    """The reconcile knobs from the catalog (start deadlines) and the cluster settings."""
    cluster = settings.cluster
    deadlines = {name: float(e.start_deadline) for name, e in catalog.entries.items() if e.start_deadline}
    return Policy(
        launchable=frozenset(catalog.entries), start_deadline_s=deadlines,
        default_start_deadline_s=cluster.start_deadline_s, quick_failure_s=cluster.quick_failure_s,
        max_quick_failures=cluster.max_quick_failures, backoff_base_s=cluster.backoff_base_s,
        backoff_max_s=cluster.backoff_max_s, handover=handover or handover_policy(catalog, cluster, {}),
        on_demand=frozenset(name for name, e in catalog.entries.items() if e.on_demand),
    )


def _default_submit() -> Submit:
    submit: Submit = submit_deployment
    return submit


@dataclass
class Supervisor:
    """Keeps the registry in line with Slurm and each model at its desired replica count."""

    engine: Engine
    slurm: SlurmClient
    catalog: Catalog
    settings: Settings
    submit: Submit = field(default_factory=_default_submit)
    leadership: Leadership | None = None  # None: act without asking (one pass by hand, tests)
    _leading: bool | None = field(default=None, repr=False)
    _last_error: str | None = field(default=None, repr=False)
    _notes: frozenset[str] = field(default=frozenset(), repr=False)
    _reservations: tuple[Window, ...] = field(default=(), repr=False)
    _reservations_read: float = field(default=-1e9, repr=False)

    def __post_init__(self) -> None:
        for line in handover_problems(time_limits(self.catalog.entries, self.settings.cluster), self.settings.cluster):
            LOG.warning("%s", line)

    def run_once(self, now: datetime | None = None) -> PassSummary:
        """One pass: exactly one Slurm query, one write transaction, then cancels and submissions."""
        wall, cpu, commands = time.perf_counter(), time.process_time(), self.slurm.commands_run
        now = now or utcnow()
        make_session = session_factory(self.engine)
        cluster = self.settings.cluster
        with make_session() as session:
            # Rows first, then Slurm: a job submitted in between must not look vanished.
            rows, targets = live_records(session), load_targets(session)
            startups = recent_startups(session, cluster.successor_lead_history)
        if intents(rows) and resolve_orphans(self.engine, self.slurm, rows, now, ORPHAN_GRACE_S):
            with make_session() as session:
                rows = live_records(session)
        try:
            # only our jobs: on Slurm >= 23.02 squeue then prints no one else's
            jobs = self.slurm.jobs([r.job_id for r in rows if r.job_id])
        except SlurmError as exc:
            self._report_error(str(exc))
            return PassSummary(len(rows), 0, 0, 0, self.slurm.commands_run - commands,
                               time.perf_counter() - wall, time.process_time() - cpu, str(exc))
        self._report_error(None)
        handover = handover_policy(self.catalog, cluster, startups, self.windows(now))
        plan = reconcile(rows, jobs, targets, policy_for(self.catalog, self.settings, handover), now)
        applied = with_busy_retries(lambda: self._apply(make_session, plan, now))
        cancelled = self._cancel(plan, applied)
        self._drain(plan, applied)
        self._report_notes(plan.notes)
        submitted = sum(self._submit(make_session, s, targets, now) for s in plan.submissions)
        return PassSummary(len(rows), len(applied), submitted, cancelled, self.slurm.commands_run - commands,
                           time.perf_counter() - wall, time.process_time() - cpu)

    def lead(self) -> bool:
        """Whether this process may act now (it holds the leader lock); logs each change of role once."""
        if self.leadership is None:
            return True
        leading = self.leadership.try_lead()
        if leading != self._leading:
            if leading:
                LOG.info("leading: this supervisor (%s) acts on the registry", identity())
            else:
                LOG.info("standing by: supervisor %s leads; trying to take over every %g s",
                         self.leadership.leader() or "unknown", RETRY_S)
        self._leading = leading
        return leading

    def _apply(self, make_session: Callable[[], Session], plan: Plan, now: datetime) -> set[int]:
        """Write the plan in one transaction; a row changed meanwhile (registration) is skipped."""
        applied: set[int] = set()
        with make_session() as session:
            for change in plan.updates:
                if compare_and_set(session, change.deployment_id, change.expect_state, change.changes, now):
                    applied.add(change.deployment_id)
            for target in plan.targets:
                save_target(session, target, now)
            session.commit()
        for change in plan.updates:
            if change.message and change.deployment_id in applied:
                LOG.info("%s", change.message)
        for target in plan.targets:
            LOG.warning("%s", target.message) if target.quick_failures else LOG.info("%s", target.message)
        return applied

    def _cancel(self, plan: Plan, applied: set[int]) -> int:
        """scancel the jobs whose rows are now gone (so no request is routed to them first)."""
        done = 0
        for cancel in plan.cancels:
            if cancel.deployment_id not in applied or not cancel.job_id:
                continue
            try:
                self.slurm.cancel(cancel.job_id)
                done += 1
            except SlurmError as exc:
                LOG.error("scancel %s (%s) failed: %s", cancel.job_id, cancel.reason, exc)
        return done

    def _drain(self, plan: Plan, applied: set[int]) -> None:
        """DRAIN_SIGNAL to the batch shell of each job now marked draining: it deregisters, finishes, exits 0."""
        for drain in plan.drains:
            if drain.deployment_id not in applied:
                continue
            try:
                self.slurm.cancel(drain.job_id, signal=DRAIN_SIGNAL, batch_only=True)
            except SlurmError as exc:
                LOG.error("drain of job %s (%s) failed: %s", drain.job_id, drain.reason, exc)

    def _report_notes(self, notes: tuple[str, ...]) -> None:
        """Log each warning once, when it first holds."""
        for note in notes:
            if note not in self._notes:
                LOG.warning("%s", note)
        self._notes = frozenset(notes)

    def windows(self, now: datetime) -> tuple[Window, ...]:
        """Maintenance windows: the settings', plus Slurm's MAINT reservations (read once a minute)."""
        cluster = self.settings.cluster
        if cluster.maintenance_from_slurm and time.monotonic() - self._reservations_read > 60:
            self._reservations_read = time.monotonic()
            try:
                self._reservations = self.slurm.reservations()
            except SlurmError as exc:
                LOG.warning("cannot read Slurm reservations, keeping the last ones: %s", exc)
        return windows_at(sorted(parse_windows(cluster.maintenance_windows) + self._reservations,
                                 key=lambda w: w.start), now)

    def _submit(self, make_session: Callable[[], Session], wanted: Submission,
                targets: Mapping[str, Target], now: datetime) -> int:
        """Start one replica; a failed sbatch counts as a quick failure of the model."""
        entry = self.catalog.entries[wanted.model]
        try:
            with make_session() as session:
                record = self._submit_one(session, entry, wanted, now)
        except Exception as exc:  # noqa: BLE001 - any failed start (sbatch, template, log dir) counts
            # as a failure of this model, so a broken entry backs off and stops instead of spinning
            policy = policy_for(self.catalog, self.settings)
            failure = record_failure(targets[wanted.model], f"submit failed: {exc}", policy, now)
            with_busy_retries(lambda: self._save_failure(make_session, failure, now))
            LOG.warning("%s", failure.message)
            return 0
        LOG.info("%s: submitted job %s (deployment %d; %s)", wanted.model, record.job_id, record.id, wanted.reason)
        return 1

    def _submit_one(self, session: Session, entry: CatalogEntry, wanted: Submission, now: datetime) -> DeploymentRecord:
        if wanted.time_limit_min is None:
            return self.submit(session, self.slurm, entry, self.settings.cluster,
                               predecessor_id=wanted.predecessor_id, now=now)
        timed: TimedSubmit = self.submit  # type: ignore[assignment]  # the default submit takes --time
        return timed(session, self.slurm, entry, self.settings.cluster, time_limit=str(wanted.time_limit_min),
                     predecessor_id=wanted.predecessor_id, now=now)

    @staticmethod
    def _save_failure(make_session: Callable[[], Session], failure: TargetUpdate, now: datetime) -> None:
        with make_session() as session:
            save_target(session, failure, now)
            session.commit()

    def _report_error(self, error: str | None) -> None:
        """Log a Slurm outage once when it starts and once when it ends, not every pass."""
        if error and error != self._last_error:
            LOG.error("Slurm query failed, registry left unchanged: %s", error)
        elif error is None and self._last_error:
            LOG.info("Slurm answers again")
        self._last_error = error

    def run_forever(self, interval_s: float, stop: threading.Event) -> None:
        """Pass after pass until STOP is set; a pass that crashes is logged and the loop goes on."""
        while not stop.is_set():
            started = time.monotonic()
            if not self.lead():
                stop.wait(RETRY_S)
                continue
            try:
                self.run_once()
            except Exception:  # the loop must outlive one bad pass (a locked DB, a bad row)
                LOG.exception("reconcile pass failed")
            stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
        if self.leadership is not None:
            self.leadership.release()


_RECORD_COLUMNS = [getattr(Deployment, f.name) for f in fields(DeploymentRecord)]


def live_records(session: Session) -> list[DeploymentRecord]:
    """Deployments not gone, oldest first; a plain column query, 2-3x cheaper than ORM objects."""
    query = select(*_RECORD_COLUMNS).where(Deployment.state != "gone").order_by(Deployment.id)
    return [DeploymentRecord(*row) for row in session.execute(query)]


def with_busy_retries(action: Callable[[], _T], retries: int = _BUSY_RETRIES) -> _T:
    """Run ACTION, again after a short pause when SQLite says the database is locked."""
    for attempt in range(retries - 1):
        try:
            return action()
        except OperationalError as exc:
            if "locked" not in str(exc):
                raise
            time.sleep(0.05 * 2**attempt)
    return action()
