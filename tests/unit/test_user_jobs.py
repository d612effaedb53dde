"""A server a user registered from their own job: the supervisor follows the job through Slurm,
removes the row when the job ends (however it ended), never counts that against the model, and
never cancels or signals the user's job."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from launcher.control.job_state import follow_job
from launcher.control.reconcile import reconcile
from launcher.core.targets import Target
from launcher.engines.table import EXTERNAL
from tests.unit.test_reconcile import NOW, POLICY, aware, dep, job

USER_ROW = dep(engine=EXTERNAL, job_id="555", ready_at=NOW, owner="bob")  # seen running: it has an end time


@pytest.mark.parametrize("slurm", [None, job("FAILED", job_id="555", exit_code=137), job("CANCELLED", job_id="555")])
def test_a_user_job_that_ended_or_vanished_takes_its_row_out(slurm: object) -> None:
    update, cancel = follow_job(USER_ROW, slurm, POLICY, NOW)  # type: ignore[arg-type]
    assert update is not None and update.changes["state"] == "gone"
    assert not update.failure and cancel is None


def test_a_requeued_user_job_is_out_of_routing_but_not_cancelled() -> None:
    update, cancel = follow_job(USER_ROW, job("PENDING", job_id="555"), POLICY, NOW)
    assert update is not None and update.changes["state"] == "gone" and cancel is None


def test_an_ended_user_job_counts_no_failure_and_its_model_is_not_signalled() -> None:
    targets = {"m": Target("m", 0, 0, None, None)}
    plan = reconcile([USER_ROW], {}, targets, POLICY, NOW)
    assert [u.changes["state"] for u in plan.updates] == ["gone"]
    assert plan.cancels == () and plan.drains == () and plan.targets == ()
    idle = reconcile([USER_ROW], {"555": job(job_id="555")}, targets, replace(POLICY, on_demand=frozenset({"m"})), NOW)
    assert idle.drains == () and idle.updates == ()  # an idle on-demand model drains only the launcher's jobs


def test_a_user_job_slurm_never_showed_is_left_to_the_probes() -> None:
    hidden = dep(engine=EXTERNAL, job_id="556", ready_at=NOW, owner="bob", end_time=None)
    assert follow_job(hidden, None, POLICY, NOW) == (None, None)  # PrivateData, or another cluster
    update, _ = follow_job(hidden, job(job_id="556"), POLICY, NOW)
    assert update is not None and update.changes["end_time"] is not None  # seen: followed from now on


@pytest.mark.parametrize("engine, replaced", [("vllm", True), (EXTERNAL, False)])
def test_a_user_job_near_its_end_gets_no_successor_and_no_drain(engine: str, replaced: bool) -> None:
    """Under a catalog name, 30 s before its end: the launcher's job gets a successor, a user's job nothing."""
    owner = "bob" if engine == EXTERNAL else None
    row = dep(engine=engine, job_id="555", end_time=NOW + timedelta(seconds=30), owner=owner)
    slurm = {"555": job(job_id="555", end_time=aware(NOW + timedelta(seconds=30)))}
    plan = reconcile([row], slurm, {"m": Target("m", 1, 0, None, None)}, POLICY, NOW)
    assert bool(plan.submissions) is replaced
    assert plan.cancels == () and (replaced or plan.drains == ())

