"""Two `llm-launch supervise` processes on one PostgreSQL registry and the local Slurm: the leader
is SIGKILLed while its sbatch is running; the other takes over and no job is submitted twice."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from launcher.control.orphans import job_mark
from launcher.core.db import open_engine, session_factory, utcnow
from launcher.core.schema import Deployment, ModelTarget
from launcher.slurm.client import JobInfo
from tests.integration.slurm_fixtures import SlurmCluster, slurm_cluster  # noqa: F401
from tests.shared_services import pg_url  # noqa: F401
from tests.waiting import wait_for

CATALOG = '[models.takeover]\nengine = "command"\nweights = "none"\ncommand = ["sleep", "600"]\n'
SETTINGS = '[cluster]\nlog_dir = "{logs}"\ncpus_per_gpu = 1\nmem_per_gpu = "2G"\n'
REPLICAS = 3
SBATCH_DELAY_S = 3  # a slow sbatch: the window in which the leader is killed


class Supervise:
    """One `llm-launch supervise` process; its log lines collected with the time they arrived."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip()))

    def leading_since(self) -> float | None:
        return next((t for t, line in self.lines if "leading: this supervisor" in line), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def _environment(slurm: SlurmCluster, tmp_path: Path) -> dict[str, str]:
    """The cluster's environment with an sbatch that waits SBATCH_DELAY_S before submitting."""
    real = shutil.which("sbatch", path=slurm.env.get("PATH"))
    assert real, "sbatch is not on the local cluster's PATH"
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "sbatch").write_text(f'#!/bin/sh\nsleep {SBATCH_DELAY_S}\nexec {real} "$@"\n')
    (wrappers / "sbatch").chmod(0o755)
    (tmp_path / "catalog.toml").write_text(CATALOG)
    (tmp_path / "settings.toml").write_text(SETTINGS.format(logs=tmp_path / "logs"))
    return {**slurm.env, "PATH": f"{wrappers}:{slurm.env.get('PATH', os.defpath)}",
            "LLM_LAUNCH_CONFIG": str(tmp_path / "settings.toml")}


def _ours(job: JobInfo) -> bool:
    return job.name == "llm-takeover"


@pytest.mark.slurm
def test_leader_killed_during_sbatch_one_successor_and_no_duplicate_job(
        slurm_cluster: SlurmCluster, pg_url: str, tmp_path: Path) -> None:  # noqa: F811
    engine = open_engine(pg_url)
    with session_factory(engine)() as s:
        s.add(ModelTarget(model="takeover", desired_replicas=REPLICAS, quick_failures=0, updated_at=utcnow()))
        s.commit()
    env = _environment(slurm_cluster, tmp_path)
    argv = [str(Path(sys.executable).parent / "llm-launch"), "--db", pg_url, "supervise",
            "--catalog", str(tmp_path / "catalog.toml"), "--interval", "1"]
    slurm = slurm_cluster.client()
    first = Supervise(argv, env)
    second = Supervise(argv, env)
    processes = [first, second]
    try:
        wait_for(lambda: first.leading_since() or second.leading_since(), 30, "a leader")
        leader, follower = (first, second) if first.leading_since() else (second, first)
        assert follower.leading_since() is None, "two supervisors lead at once"

        def intent_in_flight() -> bool:
            with session_factory(engine)() as s:
                return s.scalar(select(Deployment.id).where(Deployment.job_id.is_(None))) is not None

        wait_for(intent_in_flight, 30, "the leader's first sbatch to start", poll_s=0.05)
        leader.proc.kill()  # mid-submission: its sbatch goes on and submits a job nobody records
        killed = time.monotonic()
        took_over = wait_for(follower.leading_since, 15, "the follower to take over")
        assert took_over - killed < 10

        def settled() -> list[Deployment] | None:
            with session_factory(engine)() as s:
                rows = list(s.scalars(select(Deployment).where(Deployment.state != "gone")))
            return rows if len(rows) == REPLICAS and all(r.job_id for r in rows) else None

        rows = wait_for(settled, 60, f"{REPLICAS} recorded jobs", poll_s=0.5)
        time.sleep(2 * SBATCH_DELAY_S)  # anything still being submitted has reached Slurm now
        ours = {job_id: job for job_id, job in slurm.jobs().items() if _ours(job) and not job.finished}
        # One job per wanted replica, each recorded, each carrying its own row's mark
        assert sorted(ours) == sorted(r.job_id or "" for r in rows), "a duplicate or unrecorded job"
        assert {ours[r.job_id or ""].comment for r in rows} == {job_mark(r.id, r.secret or "") for r in rows}
        adopted = [line for _, line in follower.lines if "adopted job" in line]
        print(f"\ntakeover {took_over - killed:.1f} s after SIGKILL; adopted: {adopted}")
    finally:
        for process in processes:
            process.stop()
        for job_id, job in slurm.jobs().items():
            if _ours(job):
                slurm.cancel(job_id)
        engine.dispose()
