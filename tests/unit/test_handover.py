"""Successors before the time limit, the drain after them, lead times and maintenance windows (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from launcher.core.catalog import catalog_from_dict
from launcher.control.handover import Handover, lead_time_s, startup_times
from launcher.control.lead_times import handover_policy
from launcher.core.handover_check import handover_problems
from launcher.core.maintenance import Window, allowed_seconds, parse_reservations, parse_window, slurm_minutes
from launcher.control.plan import Plan, Policy
from launcher.control.reconcile import reconcile
from launcher.core.targets import Target
from launcher.core.deployments import DeploymentRecord
from launcher.core.settings import ClusterSettings
from launcher.slurm.parse import JobInfo

NOW = datetime(2026, 5, 1, 12, 0, 0)
HANDOVER = Handover({"m": 300.0}, late_s=120.0, time_limit_s={"m": 4 * 3600.0})
POLICY = Policy(launchable=frozenset({"m"}), handover=HANDOVER)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def dep(id: int, state: str = "ready", left: float | None = 3600, **kw: Any) -> DeploymentRecord:
    base: dict[str, Any] = dict(model="m", kind="chat", engine="vllm", reason=None, node="n1", url="http://n1:1",
                                secret="s", expected_start=None, submitted_at=at(-4000), predecessor_id=None,
                                ready_at=None, updated_at=at(-10))
    if state in ("ready", "draining"):  # ready a minute after its start (a 4-hour limit)
        base["ready_at"] = at(-3000) if left is None else at(left - 4 * 3600 + 60)
    base.update(kw)
    return DeploymentRecord(id=id, state=state, job_id=str(100 + id),
                            end_time=None if left is None else at(left), **base)


def running(rows: list[DeploymentRecord]) -> dict[str, JobInfo]:
    """Slurm agrees with every row: pending rows are queued, the others run until their end time."""
    jobs = {}
    for row in rows:
        queued = row.state == "pending"
        end = row.end_time.replace(tzinfo=UTC) if row.end_time else None
        jobs[str(row.job_id)] = JobInfo(str(row.job_id), "m", "PENDING" if queued else "RUNNING",
                                        row.reason, None if queued else "n1", None, None, end, None, None)
    return jobs


def plan(rows: list[DeploymentRecord], desired: int = 1, policy: Policy = POLICY, now: datetime = NOW) -> Plan:
    return reconcile(rows, running(rows), {"m": Target("m", desired)}, policy, now)


def test_plenty_of_time_left_no_successor() -> None:
    assert plan([dep(1, left=301)]).submissions == ()


def test_inside_the_lead_time_a_successor_is_submitted_for_that_job() -> None:
    (submission,) = plan([dep(1, left=299)]).submissions
    assert submission.predecessor_id == 1 and submission.time_limit_min is None
    assert "299 s left" in submission.reason


def test_soonest_ending_replica_first_and_only_as_many_as_wanted() -> None:
    rows = [dep(1, left=200), dep(2, left=100), dep(3, left=5000)]
    assert [s.predecessor_id for s in plan(rows, desired=3).submissions] == [2, 1]
    # the count already says one too many: the ending replica is not replaced
    assert plan([dep(1, left=100), dep(2, left=5000)], desired=1).submissions == ()


def test_a_successor_on_its_way_is_not_submitted_twice() -> None:
    rows = [dep(1, left=100), dep(2, state="pending", left=None, predecessor_id=1, reason="Priority")]
    assert plan(rows).submissions == () and plan(rows).drains == ()


def test_ready_successor_drains_its_predecessor() -> None:
    rows = [dep(1, left=100), dep(2, left=7000, predecessor_id=1)]
    result = plan(rows)
    (drain,) = result.drains
    assert (drain.deployment_id, drain.job_id, drain.reason) == (1, "101", "handed over to #2")
    update = next(u for u in result.updates if u.deployment_id == 1)
    assert update.expect_state == "ready" and update.changes == {"state": "draining", "reason": "handed over to #2"}
    assert result.submissions == ()


def test_successor_later_than_its_lead_predicted_is_reported_with_slurms_reason() -> None:
    policy = replace(POLICY, handover=replace(HANDOVER, ready_within_s={"m": 150.0}))
    waiting = dep(2, state="pending", left=None, predecessor_id=1, reason="Resources", submitted_at=at(-151))
    (note,) = plan([dep(1, left=100), waiting], policy=policy).notes
    assert "successor #2" in note and "Slurm: Resources" in note and "#1 (job 101) ends at 12:01:40 UTC" in note
    # submitted 100 s ago, predicted ready within 150 s: not late, however near the old job's end
    assert plan([dep(1, left=100), replace(waiting, submitted_at=at(-100))], policy=policy).notes == ()
    # the old job has ended: still late, and said so
    (alone,) = plan([waiting], policy=policy).notes
    assert "its predecessor has ended" in alone


def test_failed_successor_gets_a_new_one_after_backoff_only() -> None:
    rows = [dep(1, left=100)]
    waiting = reconcile(rows, running(rows), {"m": Target("m", 1, 1, at(30))}, POLICY, NOW)
    assert waiting.submissions == ()
    retry = reconcile(rows, running(rows), {"m": Target("m", 1, 1, at(-1))}, POLICY, NOW)
    assert [s.predecessor_id for s in retry.submissions] == [1]


def test_idle_on_demand_model_at_zero_drains_its_replica() -> None:
    policy = replace(POLICY, on_demand=frozenset({"m"}))
    assert [d.reason for d in plan([dep(1)], desired=0, policy=policy).drains] == ["idle: on-demand model no longer wanted"]
    assert plan([dep(1)], desired=0).drains == ()  # not on demand: `down` decides which to stop


WINDOW = Window(at(3600), at(7200))


@pytest.mark.parametrize("now, expected", [
    (NOW, (59, "")),  # 3600 s before the window: 59 whole minutes (a minute spare for the start)
    (at(3600 - 599), (None, "no new job before maintenance until 2026-05-01T14:00:00Z")),  # < 2 x lead
    (at(8000), (None, "")),  # the window is over
])
def test_successor_time_limit_stops_before_a_window(now: datetime, expected: tuple[int | None, str]) -> None:
    policy = replace(POLICY, handover=replace(HANDOVER, windows=(WINDOW,)))
    rows = [dep(1, left=(NOW - now).total_seconds() + 100)]
    submissions, notes = plan(rows, policy=policy, now=now).submissions, plan(rows, policy=policy, now=now).notes
    minutes, why = expected
    if why:
        assert submissions == () and any(why in n for n in notes)
    else:
        assert [s.time_limit_min for s in submissions] == [minutes]


def test_no_submission_during_a_window() -> None:
    policy = replace(POLICY, handover=replace(HANDOVER, windows=(WINDOW,)))
    result = plan([], policy=policy, now=at(4000))
    assert result.submissions == () and result.notes == ("m: no new job during maintenance until 2026-05-01T14:00:00Z",)


@pytest.mark.parametrize("startups, expected", [
    ([], 120.0),  # nothing seen: the floor
    ([10.0], 120.0),  # fast starts: still the floor
    ([100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0], 960.0),  # p90 + margin
    ([50.0] * 9 + [5000.0], 110.0 + 10.0),  # one outlier in ten is above the 90th percentile
])
def test_lead_time_from_history(startups: list[float], expected: float) -> None:
    assert lead_time_s(startups, floor_s=120.0, margin_s=60.0, percentile=90) == max(expected, 120.0)


def test_startup_times_keep_each_models_last_n() -> None:
    rows = [("a", at(0), at(30)), ("b", at(0), at(5)), ("a", at(0), at(20)), ("a", at(0), at(10))]
    assert startup_times(rows, per_model=2) == {"a": [30.0, 20.0], "b": [5.0]}


def _policy(time: str, startups: dict[str, list[float]] | None = None, **settings: Any) -> Handover:
    catalog = catalog_from_dict({"models": {"m": {"engine": "command", "weights": "none", "command": ["x"],
                                                  "time": time}}}, "c.toml", {})
    return handover_policy(catalog, ClusterSettings(**settings), startups or {})


def test_lead_covers_signal_lead_slurms_resolution_start_up_and_margin() -> None:
    # defaults: signal_lead_s 120 + 60 s resolution + p90 of start-ups (178 s) + margin 120
    handover = _policy("4:00:00", {"m": [79.0, 120.0, 178.0]})
    assert handover.lead("m") == 120 + 60 + 178 + 120
    assert handover.ready_within_s["m"] == 178 + 120 and handover.last_safe_s == 60 + 10
    # the floor still holds, and a drain threshold above the signal's reach counts instead of it
    assert _policy("4:00:00", {"m": [10.0] * 3}, successor_lead_floor_s=900).lead("m") == 900
    assert _policy("4:00:00", {"m": [0.0] * 3}, drain_threshold_s=400).lead("m") == 410 + 0 + 120


def test_until_three_start_ups_were_seen_the_lead_counts_on_the_start_deadline() -> None:
    # one quick start on an empty node (22 s) must not plan a successor that starts beside a busy
    # replica: the cluster's start_deadline_s (900) counts until three were seen
    assert _policy("12:00:00", {"m": [22.0]}).lead("m") == 120 + 60 + 900 + 120
    assert _policy("12:00:00", {}).ready_within_s["m"] == 900 + 120
    assert _policy("12:00:00", {"m": [22.0, 30.0, 25.0]}).lead("m") == 120 + 60 + 30 + 120
    # a catalog entry's own start deadline counts instead of the cluster's
    catalog = catalog_from_dict({"models": {"m": {"engine": "command", "weights": "none", "command": ["x"],
                                                  "time": "12:00:00", "start_deadline": 300}}}, "c.toml", {})
    assert handover_policy(catalog, ClusterSettings(), {"m": [22.0]}).lead("m") == 120 + 60 + 300 + 120


def test_lead_is_not_capped_by_a_short_limit_and_the_limit_is_reported() -> None:
    handover = _policy("3", {"m": [150.0] * 3})
    assert handover.lead("m") == 120 + 60 + 150 + 120  # the learned start-up is kept
    cluster = ClusterSettings()
    (line,) = handover_problems({"m": 180.0}, cluster, {"m": 150.0})
    assert line.startswith("m: time limit 180 s is too short for a handover") and "lead of 450 s" in line
    assert handover_problems({"m": 3600.0}, cluster, {"m": 150.0}) == []


def test_a_late_successors_own_successor_is_planned_from_its_end_not_at_once() -> None:
    handover = Handover({"m": 400.0}, time_limit_s={"m": 600.0})
    policy = replace(POLICY, handover=handover)
    # ready 350 s after its start, 250 s left: inside the lead, but it serves a quarter of its limit first
    late = dep(1, left=250, ready_at=at(0))
    assert handover.due_at(late) == at(150)
    assert plan([late], policy=policy).submissions == ()
    (submission,) = plan([late], policy=policy, now=at(150)).submissions
    assert submission.predecessor_id == 1
    # one ready in time: a lead before its end
    assert handover.due_at(dep(2, left=500, ready_at=at(-90))) == at(100)


def test_at_its_last_safe_moment_a_job_drains_though_its_successor_is_not_ready() -> None:
    policy = replace(POLICY, handover=replace(HANDOVER, last_safe_s=70.0))
    rows = [dep(1, left=71), dep(2, state="pending", left=None, predecessor_id=1, reason="Resources")]
    assert plan(rows, policy=policy).drains == ()  # it keeps serving
    rows[0] = replace(rows[0], end_time=at(69))
    result = plan(rows, policy=policy)
    (drain,) = result.drains
    assert drain.deployment_id == 1 and "last safe moment" in drain.reason
    assert [(u.deployment_id, u.changes["state"]) for u in result.updates if "state" in u.changes] == [(1, "draining")]
    # with its successor ready it drains once, handed over
    ready = replace(rows[1], state="ready", end_time=at(7000), ready_at=at(-1))
    (handed,) = plan([rows[0], ready], policy=policy).drains
    assert handed.reason == "handed over to #2"


def test_parse_window_and_whole_minutes() -> None:
    window = parse_window("2026-05-01T14:00+02:00/2026-05-01T18:00Z")
    assert (window.start, window.end) == (at(0), at(6 * 3600))
    assert slurm_minutes(allowed_seconds([window], at(-179), 7200)) == 1
    assert allowed_seconds([window], at(10), 7200) == 0
    for bad in ("2026-05-01", "2026-05-01T18:00Z/2026-05-01T14:00Z", "x/y"):
        with pytest.raises(ValueError, match="maintenance window"):
            parse_window(bad)


RESERVATIONS = (
    "ReservationName=maint StartTime=2026-05-01T14:00:00 EndTime=2026-05-01T16:00:00 Duration=02:00:00 "
    "Nodes=n[1-4] NodeCnt=4 CoreCnt=32 Features=(null) PartitionName=(null) Flags=MAINT,SPEC_NODES "
    "TRES=cpu=32 Users=root Groups=(null) Accounts=(null) Licenses=(null) State=INACTIVE BurstBuffer=(null) "
    "Watts=n/a MaxStartDelay=(null)\n"
    "ReservationName=course StartTime=2026-05-02T09:00:00 EndTime=2026-05-02T12:00:00 Duration=03:00:00 "
    "Nodes=n1 Flags=SPEC_NODES State=INACTIVE\n"
)


def test_maint_reservations_become_windows_in_utc() -> None:
    (window,) = parse_reservations(RESERVATIONS, timezone(timedelta(hours=2)))
    assert (window.name, window.start, window.end) == ("maint", at(0), at(7200))
    assert parse_reservations("No reservations in the system\n", UTC) == ()


def test_a_replica_serving_all_along_does_not_lift_a_stop_of_its_failing_successors() -> None:
    rows = [dep(1, left=100)]
    stopped = reconcile(rows, running(rows), {"m": Target("m", 1, 3, None, "stopped after 3")}, POLICY, NOW)
    assert stopped.submissions == () and stopped.targets == ()


def test_status_flags_a_successor_still_pending_near_its_predecessors_end() -> None:
    from launcher.cli.status_cmd import build_report, links_text

    rows = [dep(1, left=100), dep(2, state="pending", left=None, predecessor_id=1, reason="Resources")]
    first, second = build_report(rows, {}, None, NOW, late_s=120)["deployments"]
    assert links_text(first) == "next #2 pending LATE" and links_text(second) == "after #1"
    assert links_text(build_report(rows, {}, None, NOW, late_s=60)["deployments"][0]) == "next #2 pending"
