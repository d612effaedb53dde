"""`up --wait`: follow new deployments live until they serve or fail."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from launcher.core.deployments import DeploymentRecord
from launcher.slurm.client import JobInfo, SlurmClient

POLL_S = 0.5


@dataclass(frozen=True)
class Phase:
    """Where one deployment stands: pending, starting, ready or failed, with words for people."""

    name: str
    text: str


@dataclass(frozen=True)
class Outcome:
    """How following ended: the last phase and Slurm view of each deployment."""

    phases: dict[int, Phase]
    jobs: dict[int, JobInfo | None]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return all(p.name == "ready" for p in self.phases.values())


def phase_of(row: DeploymentRecord, job: JobInfo | None, now: datetime) -> Phase:
    """The phase of ROW given Slurm's view JOB (None: Slurm no longer knows it)."""
    if row.state == "ready":
        return Phase("ready", f"ready at {row.url}")
    if row.state in ("gone", "draining"):
        return Phase("failed", f"{row.state}: {row.reason or 'no reason recorded'}")
    if job is None:
        return Phase("failed", "Slurm no longer knows the job, and it never registered")
    if job.finished:
        code = f", exit code {job.exit_code}" if job.exit_code is not None else ""
        return Phase("failed", f"job ended {job.state}{code} before it registered")
    if job.state == "PENDING":
        expected = job.start_time
        when = f", expected start {expected.astimezone():%H:%M:%S}" if expected and expected > now else ""
        return Phase("pending", f"pending ({job.reason}{when})" if job.reason else f"pending{when}")
    return Phase("starting", f"starting on {job.node or '?'} ({job.state.lower()})")


def breakdown(row: DeploymentRecord, job: JobInfo | None, overhead_s: float) -> str:
    """Where the time from `up` to ready went: launcher, Slurm scheduling, server start."""
    parts = [f"launcher {overhead_s:.2f} s"]
    if job and job.start_time and job.submit_time:
        parts.append(f"Slurm scheduling {(job.start_time - job.submit_time).total_seconds():.0f} s")
        if row.ready_at:
            ready = row.ready_at.replace(tzinfo=UTC)
            parts.append(f"server start {(ready - job.start_time).total_seconds():.1f} s")
    return ", ".join(parts)


def follow(
    slurm: SlurmClient, read_rows: Callable[[], Sequence[DeploymentRecord]], *, tty: bool,
    echo: Callable[[str, bool], None], started: float, timeout_s: float | None = None,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Poll Slurm (one squeue per round) and the registry until all are ready or one failed.

    echo(text, transient): transient lines are progress a terminal overwrites in place.
    """
    last_line = ""
    seen: dict[int, JobInfo | None] = {}
    while True:
        rows = read_rows()
        jobs = slurm.jobs([r.job_id for r in rows if r.job_id])
        now = datetime.now(UTC)
        for row in rows:  # keep the last sighting: finished jobs leave squeue after MinJobAge
            seen[row.id] = jobs.get(row.job_id or "") or seen.get(row.id)
        phases = {r.id: phase_of(r, jobs.get(r.job_id or ""), now) for r in rows}
        elapsed = clock() - started
        line = "; ".join(f"job {r.job_id}: {phases[r.id].text}" for r in rows)
        if tty:
            echo(f"{line}  [{elapsed:.1f} s]", True)
        elif line != last_line:
            echo(f"[{elapsed:6.1f} s] {line}", False)
        last_line = line
        done = all(p.name == "ready" for p in phases.values())
        failed = any(p.name == "failed" for p in phases.values())
        if done or failed or (timeout_s is not None and elapsed >= timeout_s):
            return Outcome(phases, seen, elapsed)
        sleep(POLL_S)
