"""Starting and stopping deployments: render, sbatch, record; drain, scancel, record.

The only place that both runs Slurm (through SlurmClient) and records deployments for it; the
rows themselves are written by launcher.core.deployments.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from launcher.core.catalog import CatalogEntry
from launcher.core.keys import hash_key
from launcher.core.schema import Deployment
from launcher.core.deployments import DeploymentError, DeploymentRecord, mark_draining, mark_gone
from launcher.core.deployments import forget_intent, record_submitted, set_job_id, to_record
from launcher.control.orphans import job_mark, mark_script
from launcher.slurm.render import DRAIN_SIGNAL, JobSecrets, JobSpec, render_script
from launcher.core.settings import ClusterSettings
from launcher.slurm.client import SlurmClient, SlurmNoAnswer

Progress = Callable[[str], None]


def prepare_log_dir(cluster: ClusterSettings) -> str:
    """The job log folder, ~ expanded and created owner-only (sbatch cannot create it)."""
    path = Path(os.path.expandvars(cluster.log_dir)).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DeploymentError(f"cannot create the job log folder {path}: {exc.strerror}") from None
    return str(path)


def job_spec(cluster: ClusterSettings, time_limit: str | None = None) -> JobSpec:
    """The JobSpec `up` uses: this machine's log folder and Python (shared with the nodes)."""
    return JobSpec(log_dir=prepare_log_dir(cluster), time_limit=time_limit, python=sys.executable)


def submit_deployment(
    session: Session, slurm: SlurmClient, entry: CatalogEntry, cluster: ClusterSettings, *,
    time_limit: str | None = None, predecessor_id: int | None = None, now: datetime,
) -> DeploymentRecord:
    """Submit one job of ENTRY and record it as pending; on SlurmError nothing is recorded.

    The row is written first, as an intent without a job id, and the job carries its mark: a
    process killed between sbatch and recording the job id leaves a row that still counts as a
    replica and whose job a supervisor finds and adopts (launcher.control.orphans).
    """
    secrets = JobSecrets.new()
    script = render_script(entry, cluster, secrets, job_spec(cluster, time_limit))
    intent = record_submitted(
        session, model=entry.name, kind=entry.kind, engine=entry.engine, job_id=None,
        secret=secrets.backend_secret, registration_token_hash=hash_key(secrets.registration_token),
        predecessor_id=predecessor_id, now=now,
    )
    try:
        job_id = slurm.submit(mark_script(script, job_mark(intent.id, secrets.backend_secret)))
    except Exception as exc:
        session.rollback()
        # sbatch that said no submitted nothing; one that timed out may have: keep that intent
        # for a supervisor to adopt its job or drop it (launcher.control.orphans)
        if not isinstance(exc, SlurmNoAnswer):
            forget_intent(session, intent.id)
        raise
    try:
        recorded = set_job_id(session, intent.id, job_id, now)
    except Exception:
        session.rollback()
        slurm.cancel(job_id)  # a job the registry does not know could never register
        raise
    if not recorded:  # the intent was dropped meanwhile (`down`): its job must not run unknown
        slurm.cancel(job_id)
        raise DeploymentError(f"deployment #{intent.id} was removed while its job {job_id} was submitted")
    return replace(intent, job_id=job_id)


def live_deployments(session: Session, model: str) -> list[Deployment]:
    """MODEL's deployments that are not gone, oldest first."""
    query = select(Deployment).where(Deployment.model == model, Deployment.state != "gone")
    return list(session.scalars(query.order_by(Deployment.id)))


def find_by_job(session: Session, job_id: str) -> Deployment | None:
    """The newest deployment row of Slurm job JOB_ID."""
    query = select(Deployment).where(Deployment.job_id == job_id).order_by(Deployment.id.desc())
    return session.scalars(query).first()


def stop_deployment(session: Session, slurm: SlurmClient, deployment_id: int, *, now: datetime,
                    **options: Any) -> DeploymentRecord:
    """Stop one deployment; see stop_deployments."""
    return stop_deployments(session, slurm, [deployment_id], now=now, **options)[0]


def stop_deployments(
    session: Session, slurm: SlurmClient, deployment_ids: list[int], *, now: datetime,
    immediate: bool = False, timeout_s: float = 600.0, progress: Progress = lambda _: None,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
) -> list[DeploymentRecord]:
    """Stop routing to deployments, let in-flight requests finish (unless IMMEDIATE), end their jobs.

    A serving job gets DRAIN_SIGNAL (USR2) and drains itself (deregister, finish requests, stop the server);
    one not yet serving, or every one when IMMEDIATE, or any still running after TIMEOUT_S, is
    scancelled. Rows end `gone` with the job's final Slurm state.
    """
    rows = mark_draining(session, deployment_ids, "stopped by llm-launch down", now)
    jobs = {row.job_id: _signal(slurm, row, immediate, progress) for row in rows if row.job_id}
    finals = _wait_for_jobs(slurm, jobs, timeout_s, progress, sleep, clock)
    for row in rows:
        final = finals.get(row.job_id or "", "no job")
        mark_gone(session, row, f"stopped by llm-launch down ({final})")
    return [to_record(row) for row in rows]


def _signal(slurm: SlurmClient, row: Deployment, immediate: bool, progress: Progress) -> bool:
    """Ask the job to end: DRAIN_SIGNAL (drain) when it serves, scancel otherwise; True when drained."""
    assert row.job_id is not None
    if immediate or row.ready_at is None:
        slurm.cancel(row.job_id)
        progress(f"job {row.job_id} ({row.model}): cancelled")
        return False
    slurm.cancel(row.job_id, signal=DRAIN_SIGNAL, batch_only=True)
    progress(f"job {row.job_id} ({row.model}): draining; requests in flight finish first")
    return True


def _wait_for_jobs(slurm: SlurmClient, jobs: dict[str, bool], timeout_s: float, progress: Progress,
                   sleep: Callable[[float], None], clock: Callable[[], float]) -> dict[str, str]:
    """Final Slurm state per job, polling all of them with one squeue per round."""
    finals: dict[str, str] = {}
    # scancel ends a job within KillWait (5 s by default); a drain takes as long as its requests
    deadline = clock() + (timeout_s if any(jobs.values()) else 15.0)
    while len(finals) < len(jobs):
        seen = slurm.jobs(list(jobs))
        for job_id in jobs:
            info = seen.get(job_id)
            if job_id not in finals and (info is None or info.finished):
                finals[job_id] = info.state if info else "ended"
                progress(f"job {job_id}: ended ({finals[job_id]})")
        if len(finals) < len(jobs) and clock() >= deadline:
            for job_id in set(jobs) - set(finals):
                progress(f"job {job_id}: still running after {timeout_s:g} s; cancelling")
                slurm.cancel(job_id)
                finals[job_id] = "CANCELLED"
        elif len(finals) < len(jobs):
            sleep(0.5)
    return finals
