"""The reconcile rules, table-driven: what Slurm's view of each job does to the registry."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from launcher.control.job_state import follow_job
from launcher.control.plan import Plan, Policy
from launcher.control.reconcile import reconcile
from launcher.core.targets import Target
from launcher.core.deployments import DeploymentRecord
from launcher.slurm.parse import JobInfo

NOW = datetime(2026, 5, 1, 12, 0, 0)
POLICY = Policy(launchable=frozenset({"m"}), start_deadline_s={"m": 600}, quick_failure_s=300,
                max_quick_failures=3, backoff_base_s=30, backoff_max_s=900)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC)


def dep(id: int = 1, state: str = "ready", job_id: str | None = "100", **kw: Any) -> DeploymentRecord:
    ready_at = kw.pop("ready_at", ago(3600) if state in ("ready", "draining") else None)
    base = dict(model="m", kind="chat", engine="vllm", reason=None, node="n1" if state != "pending" else None,
                url="http://n1:1" if state == "ready" else None, secret="s", expected_start=None,
                end_time=ago(-3600), submitted_at=ago(4000), predecessor_id=None, updated_at=ago(10))
    base.update(kw)
    return DeploymentRecord(id=id, state=state, job_id=job_id, ready_at=ready_at, **base)  # type: ignore[arg-type]


def job(state: str = "RUNNING", job_id: str = "100", **kw: Any) -> JobInfo:
    base: dict[str, Any] = dict(name="m", reason=None, node="n1", submit_time=aware(ago(4000)),
                                start_time=aware(ago(3900)), end_time=aware(ago(-3600)),
                                time_limit_s=7500, exit_code=None)
    base.update(kw)
    return JobInfo(job_id=job_id, state=state, **base)


# (name, row, job, expected changes or None, expected cancel, counts as a quick failure)
FOLLOW_CASES = [
    ("queued: Slurm's reason and expected start",
     dep(state="pending", end_time=None), job("PENDING", reason="Priority", start_time=aware(ago(-600)), node=None),
     {"reason": "Priority", "expected_start": ago(-600)}, False, False),
    ("queued, nothing new: no update",
     dep(state="pending", end_time=None, reason="Priority", expected_start=ago(-600)),
     job("PENDING", reason="Priority", start_time=aware(ago(-600)), node=None), None, False, False),
    ("running but not registered: starting, with node and end time",
     dep(state="pending", end_time=None, reason="Priority"), job("RUNNING", start_time=aware(ago(5))),
     {"state": "starting", "reason": None, "node": "n1", "end_time": ago(-3600)}, False, False),
    ("starting within its deadline: nothing",
     dep(state="starting"), job("RUNNING", start_time=aware(ago(599))), None, False, False),
    ("starting past its deadline: gone and cancelled",
     dep(state="starting"), job("RUNNING", start_time=aware(ago(601))),
     {"state": "gone", "reason": "not ready within its start deadline (600 s)", "gone_at": NOW}, True, True),
    ("ready, limit changed by scontrol update: end time refreshed",
     dep(), job("RUNNING", end_time=aware(ago(-7200))), {"end_time": ago(-7200)}, False, False),
    ("ready, job cancelled behind our back: gone CANCELLED, not a failure",
     dep(), job("CANCELLED"), {"state": "gone", "reason": "CANCELLED", "gone_at": NOW}, False, False),
    ("ready, killed by its limit: gone TIMEOUT",
     dep(), job("TIMEOUT", exit_code=0), {"state": "gone", "reason": "TIMEOUT", "gone_at": NOW}, False, False),
    ("ready for a minute, then failed: a quick failure",
     dep(ready_at=ago(60)), job("FAILED", exit_code=3),
     {"state": "gone", "reason": "FAILED (exit code 3)", "gone_at": NOW}, False, True),
    ("ready for an hour, then failed: not quick",
     dep(), job("FAILED", exit_code=1), {"state": "gone", "reason": "FAILED (exit code 1)", "gone_at": NOW},
     False, False),
    ("out of memory before ready: a failure",
     dep(state="starting"), job("OUT_OF_MEMORY"),
     {"state": "gone", "reason": "OUT_OF_MEMORY", "gone_at": NOW}, False, True),
    ("node set down: gone NODE_FAIL, naming the node, not the model's failure",
     dep(ready_at=ago(10)), job("NODE_FAIL", exit_code=0),
     {"state": "gone", "reason": "NODE_FAIL (node n1)", "gone_at": NOW}, False, False),
    ("node set down, job requeued: gone, and the rerun cancelled",
     dep(), job("PENDING", reason="BeginTime", node=None),
     {"state": "gone", "reason": "requeued by Slurm (BeginTime); cancelled", "gone_at": NOW}, True, False),
    ("failed before we ever saw it run: gone, keeping the node it ran on",
     dep(state="pending", end_time=None), job("FAILED", exit_code=3),
     {"state": "gone", "reason": "FAILED (exit code 3)", "gone_at": NOW, "node": "n1"}, False, True),
    ("job ending: out of routing at once",
     dep(), job("COMPLETING"), {"state": "draining", "reason": "job COMPLETING"}, False, False),
    ("drained (down, successor ready) and exited by itself: COMPLETED, no failure",
     dep(state="draining", ready_at=ago(30)), job("COMPLETED", exit_code=0),
     {"state": "gone", "reason": "COMPLETED", "gone_at": NOW}, False, False),
    ("server crashed before ready (its trap deregistered): a failure",
     dep(state="draining", ready_at=None), job("COMPLETED", exit_code=0),
     {"state": "gone", "reason": "COMPLETED", "gone_at": NOW}, False, True),
    ("Slurm forgot the job: vanished",
     dep(), None, {"state": "gone", "reason": "vanished: Slurm no longer knows the job", "gone_at": NOW},
     False, False),
]


@pytest.mark.parametrize(("row", "slurm_job", "changes", "cancelled", "failure"),
                         [c[1:] for c in FOLLOW_CASES], ids=[c[0] for c in FOLLOW_CASES])
def test_follow_job(row: DeploymentRecord, slurm_job: JobInfo | None, changes: dict[str, Any] | None,
                    cancelled: bool, failure: bool) -> None:
    update, cancel = follow_job(row, slurm_job, POLICY, NOW)
    assert (dict(update.changes) if update else None) == changes
    assert (cancel is not None) == cancelled
    assert bool(update and update.failure) == failure
    if update:
        assert update.expect_state == row.state


def test_state_changes_are_logged_and_refreshes_are_quiet() -> None:
    gone, _ = follow_job(dep(), job("CANCELLED"), POLICY, NOW)
    refresh, _ = follow_job(dep(), job("RUNNING", end_time=aware(ago(-7200))), POLICY, NOW)
    assert gone and gone.message == "m job 100 (deployment 1): ready -> gone (CANCELLED)"
    assert refresh and refresh.message == ""


def plan_for(rows: list[DeploymentRecord], jobs: list[JobInfo], target: Target,
             policy: Policy = POLICY) -> Plan:
    return reconcile(rows, {j.job_id: j for j in jobs}, {target.model: target}, policy, NOW)


def test_rows_without_a_job_are_left_alone() -> None:
    plan = plan_for([dep(job_id=None)], [], Target("m", 1))
    assert plan == Plan()


def test_missing_replicas_are_submitted() -> None:
    plan = plan_for([dep(1)], [job()], Target("m", 3))
    assert [s.model for s in plan.submissions] == ["m", "m"]


def test_a_cancelled_replica_is_replaced_at_once() -> None:
    plan = plan_for([dep(1)], [job("CANCELLED")], Target("m", 1))
    assert [u.changes["state"] for u in plan.updates] == ["gone"]
    assert len(plan.submissions) == 1 and plan.targets == ()


def test_a_quick_failure_backs_off() -> None:
    plan = plan_for([dep(1, state="starting")], [job("FAILED", exit_code=1)], Target("m", 1))
    assert plan.submissions == ()
    (target,) = plan.targets
    assert (target.quick_failures, target.next_attempt_at, target.stopped_reason) == (1, ago(-30), None)


def test_backoff_doubles_and_is_capped() -> None:
    failing = [dep(1, state="starting")], [job("FAILED", exit_code=1)]
    second = plan_for(*failing, Target("m", 1, quick_failures=1)).targets[0]
    capped = plan_for(*failing, Target("m", 1, quick_failures=1), replace(POLICY, backoff_max_s=45)).targets[0]
    assert second.next_attempt_at == ago(-60) and capped.next_attempt_at == ago(-45)


def test_after_backoff_one_probe_job_is_submitted() -> None:
    plan = plan_for([], [], Target("m", 3, quick_failures=1, next_attempt_at=ago(1)))
    assert len(plan.submissions) == 1


def test_nothing_is_submitted_during_backoff() -> None:
    plan = plan_for([], [], Target("m", 1, quick_failures=1, next_attempt_at=ago(-1)))
    assert plan.submissions == ()


def test_repeated_quick_failures_stop_with_a_reason() -> None:
    plan = plan_for([dep(1, state="starting")], [job("FAILED", exit_code=2)], Target("m", 1, quick_failures=2))
    (target,) = plan.targets
    assert plan.submissions == ()
    assert target.stopped_reason is not None
    assert "3 quick failures" in target.stopped_reason and "FAILED (exit code 2)" in target.stopped_reason
    assert "llm-launch up m" in target.stopped_reason


def test_a_stopped_model_gets_no_jobs() -> None:
    assert plan_for([], [], Target("m", 2, stopped_reason="stopped")).submissions == ()


def test_a_model_missing_from_the_catalog_is_stopped_once() -> None:
    plan = plan_for([], [], Target("gone-model", 1))
    (target,) = plan.targets
    assert plan.submissions == () and "not in the catalog" in (target.stopped_reason or "")


def test_a_replica_that_stays_ready_resets_the_failure_count() -> None:
    plan = plan_for([dep(1, ready_at=ago(301))], [job()], Target("m", 1, quick_failures=2))
    (target,) = plan.targets
    assert (target.quick_failures, target.next_attempt_at, target.stopped_reason) == (0, None, None)


def test_surplus_replicas_not_yet_ready_are_cancelled_newest_first() -> None:
    rows = [dep(1), dep(2, state="pending", job_id="101"), dep(3, state="pending", job_id="102")]
    jobs = [job(), job("PENDING", "101", reason="Priority"), job("PENDING", "102", reason="Priority")]
    plan = plan_for(rows, jobs, Target("m", 2))
    assert [c.job_id for c in plan.cancels] == ["102"]
    assert {u.deployment_id: u.changes.get("state") for u in plan.updates} == {2: None, 3: "gone"}


def test_a_replica_with_a_successor_on_its_way_does_not_count() -> None:
    rows = [dep(1), dep(2, state="pending", job_id="101", predecessor_id=1)]
    jobs = [job(), job("PENDING", "101", reason="Priority")]
    plan = plan_for(rows, jobs, Target("m", 1))
    assert plan.submissions == () and plan.cancels == ()


def test_draining_replicas_are_replaced() -> None:
    plan = plan_for([dep(1, state="draining")], [job()], Target("m", 1))
    assert len(plan.submissions) == 1
