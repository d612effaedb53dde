"""Two `llm-launch supervise` processes on one PostgreSQL registry and the local Slurm: the leader
is SIGKILLed while its sbatch is running; the other takes over and no job is submitted twice.
And the intent written before sbatch: kept when sbatch gave no answer, gone when it said no."""

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

from launcher.control.deploy import submit_deployment
from launcher.control.orphans import job_mark
from launcher.control.supervisor import Supervisor
from launcher.core.catalog import catalog_from_dict
from launcher.core.db import open_engine, session_factory, utcnow
from launcher.core.schema import Deployment, ModelTarget
from launcher.core.settings import ClusterSettings, Settings
from launcher.slurm.client import JobInfo, SlurmClient, SlurmError, SlurmNoAnswer
from tests.integration.slurm_fixtures import SMALL_JOBS, SlurmCluster, slurm_cluster  # noqa: F401
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
        with session_factory(engine)() as s:  # every row's mark, gone ones too: this registry's jobs only
            marks = {job_mark(r.id, r.secret or "") for r in s.scalars(select(Deployment))}
        ours = {job_id: job for job_id, job in slurm.jobs().items() if job.comment in marks and not job.finished}
        # One job per wanted replica, each recorded, each carrying its own row's mark
        assert sorted(ours) == sorted(r.job_id or "" for r in rows), "a duplicate or unrecorded job"
        assert {ours[r.job_id or ""].comment for r in rows} == {job_mark(r.id, r.secret or "") for r in rows}
        adopted = [line for _, line in follower.lines if "adopted job" in line]
        print(f"\ntakeover {took_over - killed:.1f} s after SIGKILL; adopted: {adopted}")
    finally:
        for process in processes:
            process.stop()
        time.sleep(SBATCH_DELAY_S + 1)  # an sbatch its killed leader left running submits meanwhile
        for job_id, job in slurm.jobs().items():
            if _ours(job):
                slurm.cancel(job_id)
        engine.dispose()


@pytest.mark.slurm
def test_an_sbatch_that_times_out_keeps_its_intent_and_the_job_is_adopted_but_a_refused_one_leaves_no_row(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    """sbatch that gave no answer may still have submitted: its row stays, and the job it made is
    adopted on the next pass; sbatch that said no submitted nothing: no row is left behind."""
    env = _environment(slurm_cluster, tmp_path)
    engine = open_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    catalog = catalog_from_dict({"models": {"takeover": {"engine": "command", "weights": "none",
                                                           "command": ["sleep", "600"]}}}, "catalog.toml", {})
    settings = Settings(cluster=ClusterSettings(log_dir=str(tmp_path / "logs"), **SMALL_JOBS))
    # An sbatch that submits, then hangs past the client's timeout: the answer is lost, the job is not
    late = tmp_path / "late-bin"
    late.mkdir()
    real = shutil.which("sbatch", path=slurm_cluster.env.get("PATH"))
    (late / "sbatch").write_text(f'#!/bin/sh\n{real} "$@"\nsleep 5\n')
    (late / "sbatch").chmod(0o755)
    impatient = SlurmClient(timeout_s=2.0, env={**env, "PATH": f"{late}:{env['PATH']}"})
    with session_factory(engine)() as s:
        with pytest.raises(SlurmNoAnswer):
            submit_deployment(s, impatient, catalog.entry("takeover"), settings.cluster, now=utcnow())
    with session_factory(engine)() as s:
        kept = s.scalars(select(Deployment)).one()
    assert (kept.state, kept.job_id) == ("pending", None)
    slurm = slurm_cluster.client()
    try:
        Supervisor(engine, slurm, catalog, settings).run_once()
        with session_factory(engine)() as s:
            adopted = s.scalars(select(Deployment)).one()
        assert adopted.id == kept.id and adopted.job_id
        assert [j for j, job in slurm.jobs().items() if _ours(job) and not job.finished] == [adopted.job_id]

        refusing = SlurmClient(env={**env, "PATH": f"{tmp_path / 'no-bin'}:{env['PATH']}"})
        (tmp_path / "no-bin").mkdir()
        (tmp_path / "no-bin" / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Invalid account' >&2\nexit 1\n")
        (tmp_path / "no-bin" / "sbatch").chmod(0o755)
        with session_factory(engine)() as s:
            with pytest.raises(SlurmError):
                submit_deployment(s, refusing, catalog.entry("takeover"), settings.cluster, now=utcnow())
        with session_factory(engine)() as s:
            assert [r.id for r in s.scalars(select(Deployment))] == [kept.id]
    finally:
        for job_id, job in slurm.jobs().items():
            if _ours(job):
                slurm.cancel(job_id)
        engine.dispose()
