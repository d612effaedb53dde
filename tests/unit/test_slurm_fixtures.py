"""Parsers and SlurmClient on real output of Slurm 22.05 and 24.11 (tests/fixtures/slurm/<version>).

scripts/capture-slurm-fixtures recorded the files on one-node clusters from scripts/local-slurm:
the same jobs, in the same order, on each version, so both must read alike where Slurm agrees.
"""

from __future__ import annotations

from datetime import timedelta, timezone
from pathlib import Path

import pytest

from launcher.core.maintenance import parse_reservations
from launcher.slurm.client import SlurmClient, SlurmError
from launcher.slurm.parse import (
    JobInfo,
    parse_sbatch_output,
    parse_scontrol_show_job_line,
    parse_sinfo_json,
    parse_squeue_json,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
VERSIONS = ("22.05", "24.11")
# NODE_FAIL: 22.05 reports the job's SIGTERM, 24.11 a SIGHUP
NODE_FAIL_EXIT = {"22.05": 128 + 15, "24.11": 128 + 1}


def read(version: str, name: str) -> str:
    return (FIXTURES / version / name).read_text()


def node_of(version: str) -> str:
    return "n" + version.replace(".", "")


def squeue(version: str, capture: str) -> dict[str, JobInfo]:
    """A `squeue --json` capture's jobs by name (each job of the capture has its own)."""
    return {job.name: job for job in parse_squeue_json(read(version, f"squeue_{capture}.json")).values()}


def test_every_version_has_every_capture() -> None:
    names = {v: sorted(p.name for p in (FIXTURES / v).iterdir()) for v in VERSIONS}
    assert names["22.05"] == names["24.11"] and len(names["24.11"]) >= 30


# name -> state, reason, exit code, finished, time limit (s), while jobs run and pend
ACTIVE = {
    "run": ("RUNNING", None, None, False, 600),
    "timeout": ("RUNNING", None, None, False, 60),
    "done": ("COMPLETED", None, 0, True, None),
    "fail3": ("FAILED", "NonZeroExitCode", 3, True, None),
    "pend-res": ("PENDING", "Resources", None, False, 600),
    "pend-prio": ("PENDING", "Priority", None, False, 1200),
    "nolimit": ("PENDING", "Priority", None, False, None),
    "held": ("PENDING", "JobHeldUser", None, False, None),
    "dep": ("PENDING", "Dependency", None, False, None),
    "parsable": ("CANCELLED", "JobHeldUser", 0, True, None),  # held, cancelled before it ran
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ACTIVE)
def test_squeue_states_while_jobs_run_and_pend(version: str, name: str) -> None:
    job = squeue(version, "pending_running")[name]
    assert (job.state, job.reason, job.exit_code, job.finished, job.time_limit_s) == ACTIVE[name]


@pytest.mark.parametrize("version", VERSIONS)
def test_squeue_times_nodes_and_expected_starts(version: str) -> None:
    jobs = squeue(version, "pending_running")
    run, pend, nolimit, held = jobs["run"], jobs["pend-res"], jobs["nolimit"], jobs["held"]
    assert run.node == node_of(version) and run.start_time and run.end_time == run.start_time + timedelta(minutes=10)
    # backfill's expected start: when the running GPU job reaches its limit
    assert pend.node is None and pend.start_time == run.end_time
    assert pend.end_time == pend.start_time + timedelta(minutes=10)
    assert nolimit.start_time and nolimit.end_time is None  # no limit: no end
    assert held.start_time is None and held.end_time is None
    assert run.submit_time and run.submit_time.tzinfo == timezone.utc


@pytest.mark.parametrize("version", VERSIONS)
def test_squeue_signal_kill_and_completing(version: str) -> None:
    killed = squeue(version, "pending_running")["killed"]
    assert (killed.state, killed.exit_code, killed.finished) == ("FAILED", 128 + 9, True)
    jobs = squeue(version, "completing")
    completing, cancelled = jobs["completing"], jobs["cancel"]
    assert (completing.state, completing.finished, completing.exit_code) == ("COMPLETING", False, None)
    assert (cancelled.state, cancelled.exit_code, cancelled.finished) == ("CANCELLED", 128 + 15, True)


@pytest.mark.parametrize("version", VERSIONS)
def test_squeue_finished_jobs(version: str) -> None:
    jobs = squeue(version, "finished")
    seen = {name: (jobs[name].state, jobs[name].exit_code) for name in ("timeout", "run", "completing", "fail3")}
    assert seen == {"timeout": ("TIMEOUT", 143), "run": ("NODE_FAIL", NODE_FAIL_EXIT[version]),
                    "completing": ("CANCELLED", 137), "fail3": ("FAILED", 3)}
    assert jobs["run"].reason == "NodeDown" and jobs["dep"].reason == "DependencyNeverSatisfied"
    assert all(jobs[name].finished for name in seen)


@pytest.mark.parametrize("version", VERSIONS)
def test_plain_squeue_json_hides_finished_jobs_from_24_11_on(version: str) -> None:
    """Why SlurmClient.jobs passes --states=all: without it 24.11 drops what the supervisor must see."""
    finished = {name for name, job in squeue(version, "default").items() if job.finished}
    assert finished == ({"parsable", "done", "fail3", "killed"} if version == "22.05" else set())


@pytest.mark.parametrize("version", VERSIONS)
def test_squeue_jobs_filter(version: str) -> None:
    """--jobs=run,held: 24.11 prints those two; 22.05 ignores the filter in --json."""
    names = set(squeue(version, "jobs_filter"))
    assert names == {"run", "held"} if version == "24.11" else names >= {"run", "held", "done"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("capture, state, reason", [
    ("idle", "IDLE", None), ("mixed", "MIXED", None),
    ("drain", "MIXED+DRAIN", "capture: drained by hand"), ("down", "DOWN", "capture: set down by hand"),
])
def test_sinfo_json(version: str, capture: str, state: str, reason: str | None) -> None:
    (node,) = parse_sinfo_json(read(version, f"sinfo_{capture}.json"))
    # 24.11 adds flags such as PLANNED (backfill holds the node for a pending job)
    assert node.state == state or node.state.startswith(state + "+")
    assert (node.name, node.reason, node.gres) == (node_of(version), reason, "gpu:4")


# capture -> state, exit code, time limit (s), on a node
SCONTROL = {
    "run": ("RUNNING", None, 600, True), "pend_res": ("PENDING", None, 600, False),
    "pend_prio": ("PENDING", None, 1200, False), "nolimit": ("PENDING", None, None, False),
    "held": ("PENDING", None, None, False), "dep": ("PENDING", None, None, False),
    "done": ("COMPLETED", 0, None, True), "fail": ("FAILED", 3, None, True),
    "sig": ("FAILED", 137, None, True), "timeout": ("TIMEOUT", 143, 60, True),
    "cancelled": ("CANCELLED", 143, 600, True), "completing": ("COMPLETING", None, 600, True),
    "cancelled_completing": ("CANCELLED", 137, 600, True), "pending_drained": ("PENDING", None, 600, False),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("capture", SCONTROL)
def test_scontrol_show_job_lines(version: str, capture: str) -> None:
    job = parse_scontrol_show_job_line(read(version, f"scontrol_show_job_{capture}.txt").strip(), tz=timezone.utc)
    state, exit_code, limit_s, on_node = SCONTROL[capture]
    assert (job.state, job.exit_code, job.time_limit_s, job.node is not None) == (state, exit_code, limit_s, on_node)
    assert job.submit_time is not None


@pytest.mark.parametrize("version", VERSIONS)
def test_scontrol_node_fail_and_times_match_squeue(version: str) -> None:
    line = parse_scontrol_show_job_line(read(version, "scontrol_show_job_node_fail.txt").strip(), tz=timezone.utc)
    assert (line.state, line.reason, line.exit_code) == ("NODE_FAIL", "NodeDown", NODE_FAIL_EXIT[version])
    text = parse_scontrol_show_job_line(read(version, "scontrol_show_job_pend_res.txt").strip(), tz=timezone.utc)
    json_job = squeue(version, "pending_running")["pend-res"]
    assert (text.start_time, text.end_time) == (json_job.start_time, json_job.end_time)


@pytest.mark.parametrize("version", VERSIONS)
def test_reservations_and_sbatch(version: str) -> None:
    (window,) = parse_reservations(read(version, "scontrol_show_reservation.txt"), timezone.utc)
    assert window.name == "maint_window" and window.end - window.start == timedelta(minutes=90)
    assert parse_reservations(read(version, "scontrol_show_reservation_none.txt"), timezone.utc) == ()
    assert parse_sbatch_output(read(version, "sbatch_parsable.txt")) == "2"


def replay(tmp_path: Path, version: str, commands: dict[str, str]) -> SlurmClient:
    """A SlurmClient whose Slurm commands print a capture (run_rc format, or plain stdout)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for command, capture in commands.items():
        text, status = read(version, capture), 0
        if text.startswith("# exit status "):
            head, _, rest = text.partition("\n# stdout\n")
            status = int(head.split()[-1])
            out, _, err = rest.rpartition("# stderr\n")
            (bin_dir / f"{command}.err").write_text(err)
            text = out
        (bin_dir / f"{command}.out").write_text(text)
        script = bin_dir / command
        script.write_text(f'#!/bin/sh\necho "$@" >"{bin_dir}/{command}.args"\ncat "{bin_dir}/{command}.out"\n'
                          f'cat "{bin_dir}/{command}.err" >&2 2>/dev/null\nexit {status}\n')
        script.chmod(0o755)
    return SlurmClient(timeout_s=10, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


@pytest.mark.parametrize("version", VERSIONS)
def test_client_asks_for_all_states_of_its_jobs(version: str, tmp_path: Path) -> None:
    client = replay(tmp_path, version, {"squeue": "squeue_finished.json"})
    jobs = client.jobs(["1", "3"])
    assert {j.state for j in jobs.values()} == {"TIMEOUT", "NODE_FAIL"}
    assert (tmp_path / "bin" / "squeue.args").read_text().split() == ["--json", "--states=all", "--jobs=1,3"]
    assert len(client.jobs()) == 13


@pytest.mark.parametrize("version", VERSIONS)
def test_client_lone_unknown_job_is_no_job(version: str, tmp_path: Path) -> None:
    """24.11 fails `squeue --jobs=<one forgotten id>`; 22.05 prints every job."""
    client = replay(tmp_path, version, {"squeue": "squeue_unknown_job.txt", "scontrol": "scontrol_show_job_unknown.txt"})
    assert client.jobs(["999999"]) == {}
    assert client.job("999999") is None


@pytest.mark.parametrize("version", VERSIONS)
def test_client_unreachable_controller(version: str, tmp_path: Path) -> None:
    """22.05 reports it inside JSON with exit status 0; 24.11 on stderr with status 1."""
    client = replay(tmp_path, version, {"squeue": "squeue_unreachable.txt", "sinfo": "sinfo_unreachable.txt"})
    with pytest.raises(SlurmError, match="Slurm is not reachable"):
        client.jobs()
    with pytest.raises(SlurmError, match="Slurm is not reachable"):
        client.nodes()


@pytest.mark.parametrize("version", VERSIONS)
def test_client_scancel_of_finished_job_and_ping(version: str, tmp_path: Path) -> None:
    client = replay(tmp_path, version, {"scancel": "scancel_finished.txt", "scontrol": "scontrol_ping.txt"})
    client.cancel("6")
    assert client.ping()
