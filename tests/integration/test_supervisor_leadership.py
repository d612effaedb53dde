"""One acting supervisor per registry: the leader lock, takeover after SIGKILL, orphaned submissions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from launcher.control.leadership import leadership_for
from launcher.control.orphans import job_mark, mark_script
from launcher.control.supervisor import Supervisor
from launcher.core.catalog import catalog_from_dict
from launcher.core.db import open_engine, session_factory, utcnow
from launcher.core.deployments import new_secret, record_submitted
from launcher.core.schema import Deployment, ModelTarget
from launcher.core.settings import ClusterSettings, Settings
from tests.integration.slurm_fixtures import SMALL_JOBS, SlurmCluster, slurm_cluster  # noqa: F401
from tests.shared_services import db_url, pg_url  # noqa: F401
from tests.waiting import wait_for

HOLDER = """
import sys, time
from launcher.core.db import open_engine
from launcher.control.leadership import leadership_for
lead = leadership_for(open_engine(sys.argv[1]))
assert lead.try_lead()
print("leading", flush=True)
time.sleep(600)
"""


def test_one_leader_at_a_time_and_the_next_takes_over(db_url: str) -> None:  # noqa: F811
    engine = open_engine(db_url)
    first, second = leadership_for(engine), leadership_for(engine)
    assert second.leader() is None  # nobody leads yet
    assert first.try_lead() and first.try_lead()
    assert not second.try_lead()
    assert f"pid {os.getpid()}" in (second.leader() or "")
    first.release()
    assert second.leader() is None
    assert second.try_lead()
    second.release()


def test_a_sigkilled_leader_is_replaced_within_10_s(db_url: str) -> None:  # noqa: F811
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "leading"
        follower = leadership_for(open_engine(db_url))
        assert not follower.try_lead()
        assert f"pid {holder.pid}" in (follower.leader() or "")
        holder.kill()
        killed = time.monotonic()
        while not follower.try_lead():  # a follower's retry cadence
            assert time.monotonic() - killed < 10, "no takeover within 10 s of SIGKILL"
            time.sleep(1.0)
        follower.release()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slurm
def test_a_job_submitted_but_not_recorded_is_adopted_not_duplicated(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    """The leader died between sbatch and writing the job id: its successor adopts the job."""
    db = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = open_engine(db)
    slurm = slurm_cluster.client()
    catalog = catalog_from_dict({"models": {"tiny": {"engine": "command", "weights": "none",
                                                       "command": ["true"]}}}, "catalog.toml", {})
    now = utcnow()
    secret = new_secret()
    with session_factory(engine)() as s:
        s.add(ModelTarget(model="tiny", desired_replicas=1, quick_failures=0, updated_at=now))
        s.commit()
        intent = record_submitted(s, model="tiny", kind="chat", engine="command", job_id=None, secret=secret,
                                  registration_token_hash="x", predecessor_id=None, now=now)
    # What the dead leader's sbatch left: a job with the intent's mark, and a user's own job
    # under the same name with no mark
    script = "#!/bin/bash\nsleep 600\n"
    args = ["--job-name", "llm-tiny", "--time=5", "--output=/dev/null", "--mem=100M"]
    marked = slurm.submit(mark_script(script, job_mark(intent.id, secret)), args=args)
    users = slurm.submit(script, args=args)
    try:
        supervisor = Supervisor(engine, slurm, catalog, Settings(), leadership=leadership_for(engine))
        assert supervisor.lead()
        summary = supervisor.run_once()
        assert summary.submitted == 0
        with session_factory(engine)() as s:
            rows = list(s.scalars(select(Deployment)))
        assert [(r.id, r.job_id, r.state) for r in rows] == [(intent.id, marked, "pending")]
        assert not slurm.jobs([users])[users].finished  # the user's job is left alone
    finally:
        slurm.cancel(marked)
        slurm.cancel(users)


@pytest.mark.slurm
def test_an_intent_without_a_job_is_dropped_after_the_grace_and_resubmitted(
        slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    engine = open_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    slurm = slurm_cluster.client()
    catalog = catalog_from_dict({"models": {"tiny": {"engine": "command", "weights": "none",
                                                       "command": ["sleep", "600"]}}}, "catalog.toml", {})
    old = utcnow() - timedelta(minutes=5)
    with session_factory(engine)() as s:
        s.add(ModelTarget(model="tiny", desired_replicas=1, quick_failures=0, updated_at=old))
        s.commit()
        intent = record_submitted(s, model="tiny", kind="chat", engine="command", job_id=None, secret=new_secret(),
                                  registration_token_hash="x", predecessor_id=None, now=old)
    settings = Settings(cluster=ClusterSettings(log_dir=str(tmp_path / "logs"), **SMALL_JOBS))
    supervisor = Supervisor(engine, slurm, catalog, settings)
    supervisor.run_once()
    with session_factory(engine)() as s:
        rows = {r.id: r for r in s.scalars(select(Deployment))}
    assert rows[intent.id].state == "gone"
    fresh = [r for r in rows.values() if r.id != intent.id]
    try:
        assert len(fresh) == 1 and fresh[0].job_id
        job = wait_for(lambda: slurm.jobs([fresh[0].job_id or ""]).get(fresh[0].job_id or ""), 30, "the new job")
        assert job.comment == job_mark(fresh[0].id, fresh[0].secret or "")
    finally:
        for r in fresh:
            slurm.cancel(r.job_id or "")
