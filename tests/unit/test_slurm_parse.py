"""Slurm output parsers on text captured from a real cluster (22.05) and the >= 23.02 shapes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from launcher.slurm.client import (
    SlurmError,
    parse_sbatch_output,
    parse_scontrol_show_job_line,
    parse_sinfo_json,
    parse_squeue_json,
)
from launcher.slurm.parse import parse_duration_s

T0 = 1795681939  # submit time of the captured jobs


def at(offset_s: int) -> datetime:
    return datetime.fromtimestamp(T0 + offset_s, tz=timezone.utc)


# `squeue --json` jobs from Slurm 22.05.8 (openapi/v0.0.38), trimmed to the fields we read plus a few.
V38_JOBS: list[dict[str, Any]] = [
    {"job_id": 1, "name": "run1", "job_state": "RUNNING", "state_reason": "None", "nodes": "gpu01",
     "batch_host": "gpu01", "submit_time": T0, "start_time": T0 + 1, "end_time": T0 + 301,
     "time_limit": 5, "exit_code": 0, "partition": "debug", "gres_detail": ["gpu:1(IDX:0)"],
     "tres_per_node": "gres:gpu:1"},
    {"job_id": 2, "name": "pend1", "job_state": "PENDING", "state_reason": "Resources", "nodes": "",
     "batch_host": "", "submit_time": T0, "start_time": T0 + 301, "end_time": T0 + 901,
     "time_limit": 10, "exit_code": 0, "partition": "debug", "gres_detail": [],
     "tres_per_node": "gres:gpu:4"},
    {"job_id": 3, "name": "nolimit", "job_state": "PENDING", "state_reason": "Priority", "nodes": "",
     "batch_host": "", "submit_time": T0, "start_time": T0 + 881, "end_time": 6090650056,
     "time_limit": None, "exit_code": 0, "partition": "debug", "gres_detail": [], "tres_per_node": ""},
    {"job_id": 4, "name": "held", "job_state": "PENDING", "state_reason": "JobHeldUser", "nodes": "",
     "batch_host": "", "submit_time": T0, "start_time": 0, "end_time": 0, "time_limit": None,
     "exit_code": 0, "partition": "debug", "gres_detail": [], "tres_per_node": ""},
    {"job_id": 5, "name": "fail3", "job_state": "FAILED", "state_reason": "NonZeroExitCode",
     "nodes": "gpu01", "batch_host": "gpu01", "submit_time": T0, "start_time": T0 + 45,
     "end_time": T0 + 45, "time_limit": None, "exit_code": 768, "partition": "debug",
     "gres_detail": [], "tres_per_node": ""},
    {"job_id": 6, "name": "srv", "job_state": "CANCELLED", "state_reason": "None", "nodes": "gpu01",
     "batch_host": "gpu01", "submit_time": T0, "start_time": T0 + 2, "end_time": T0 + 3,
     "time_limit": 7, "exit_code": 15, "partition": "debug", "gres_detail": [],
     "tres_per_node": "gres:gpu:2"},
]


def num(value: int | None, *, infinite: bool = False) -> dict[str, Any]:
    """A >= 23.02 number object."""
    return {"set": value is not None or infinite, "infinite": infinite, "number": value or 0}


def new_shape(job: dict[str, Any]) -> dict[str, Any]:
    """The same job as Slurm >= 23.02 prints it (v0.0.40 data_parser)."""
    raw = job["exit_code"]
    signal = raw & 0x7F
    return {
        **job,
        "job_state": [job["job_state"]],
        "submit_time": num(job["submit_time"]),
        "start_time": num(job["start_time"]),
        "end_time": num(job["end_time"]),
        "time_limit": num(job["time_limit"], infinite=job["time_limit"] is None),
        "exit_code": {
            "status": ["SIGNALED" if signal else "EXITED" if raw else "SUCCESS"],
            "return_code": num(None if signal else raw >> 8),
            "signal": {"id": num(signal or None), "name": "TERM" if signal == 15 else ""},
        },
    }


def squeue_text(jobs: list[dict[str, Any]], plugin: str = "openapi/v0.0.38") -> str:
    return json.dumps({"meta": {"plugin": {"type": plugin}}, "errors": [], "jobs": jobs})


SHAPES = {
    "22.05": squeue_text(V38_JOBS),
    "23.02+": squeue_text([new_shape(j) for j in V38_JOBS], plugin=""),
}

# job id -> state, reason, node, start, end, time limit (s), exit code, finished
EXPECTED = {
    "1": ("RUNNING", None, "gpu01", at(1), at(301), 300, None, False),
    "2": ("PENDING", "Resources", None, at(301), at(901), 600, None, False),  # expected start
    "3": ("PENDING", "Priority", None, at(881), None, None, None, False),  # no limit: no end
    "4": ("PENDING", "JobHeldUser", None, None, None, None, None, False),
    "5": ("FAILED", "NonZeroExitCode", "gpu01", at(45), at(45), None, 3, True),
    "6": ("CANCELLED", None, "gpu01", at(2), at(3), 420, 128 + 15, True),  # SIGTERM
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("job_id", EXPECTED)
def test_squeue_json_both_shapes(shape: str, job_id: str) -> None:
    job = parse_squeue_json(SHAPES[shape])[job_id]
    seen = (job.state, job.reason, job.node, job.start_time, job.end_time, job.time_limit_s,
            job.exit_code, job.finished)
    assert seen == EXPECTED[job_id]
    assert job.submit_time == at(0) and job.job_id == job_id


def test_state_list_with_completing_flag_is_completing() -> None:
    job = new_shape(V38_JOBS[0]) | {"job_state": ["CANCELLED", "COMPLETING"]}
    parsed = parse_squeue_json(squeue_text([job]))["1"]
    assert parsed.state == "COMPLETING" and not parsed.finished


# What 22.05's squeue --json prints, with exit status 0, when slurmctld does not answer.
UNREACHABLE = json.dumps({"errors": [{"description": "Failed while looking for jobs",
                                      "error_number": -1, "error": "Unspecified error",
                                      "source": "slurm_load_jobs"}], "jobs": []})


@pytest.mark.parametrize("text, message", [
    (UNREACHABLE, "Failed while looking for jobs"),
    ("slurm_load_jobs error: Unable to contact", "invalid JSON"),
    ("[]", "unexpected JSON"),
])
def test_squeue_json_errors_are_slurm_errors(text: str, message: str) -> None:
    with pytest.raises(SlurmError, match=message):
        parse_squeue_json(text)


@pytest.mark.parametrize("text, job_id", [
    ("42\n", "42"),
    ("1234;cluster-a\n", "1234"),
    ("sbatch: warning: something\n77\n", "77"),
])
def test_sbatch_parsable_output(text: str, job_id: str) -> None:
    assert parse_sbatch_output(text) == job_id


@pytest.mark.parametrize("text", ["", "Submitted batch job 5", "abc;x"])
def test_sbatch_output_without_id_is_an_error(text: str) -> None:
    with pytest.raises(SlurmError, match="no job id"):
        parse_sbatch_output(text)


# `sinfo --json` nodes from 22.05 (trimmed), idle and drained while one GPU job runs.
SINFO_V38 = json.dumps({"errors": [], "nodes": [
    {"name": "gpu01", "hostname": "gpu01", "state": "mixed", "state_flags": ["DRAIN"],
     "reason": "maintenance window", "gres": "gpu:4", "gres_used": "gpu:1", "cpus": 8},
    {"name": "gpu02", "hostname": "gpu02", "state": "idle", "state_flags": [], "reason": "",
     "gres": "", "gres_used": "", "cpus": 8},
]})
SINFO_NEW = json.dumps({"errors": [], "sinfo": [
    {"node": {"state": ["MIXED", "DRAIN"]}, "nodes": {"total": 1, "nodes": ["gpu01"]},
     "gres": {"total": "gpu:4", "used": "gpu:1(IDX:0)"}, "reason": {"description": "maintenance window"}},
    {"node": {"state": ["IDLE"]}, "nodes": {"total": 1, "nodes": ["gpu02"]},
     "gres": {"total": "", "used": ""}, "reason": {"description": ""}},
]})


@pytest.mark.parametrize("text", [SINFO_V38, SINFO_NEW], ids=["22.05", "23.02+"])
def test_sinfo_json_both_shapes(text: str) -> None:
    nodes = {n.name: (n.state, n.reason, n.gres) for n in parse_sinfo_json(text)}
    assert nodes == {"gpu01": ("MIXED+DRAIN", "maintenance window", "gpu:4"),
                     "gpu02": ("IDLE", None, None)}


SCONTROL_FAILED = (
    "JobId=3 JobName=fail3 UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901757 Nice=0 "
    "Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=1 "
    "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=3:0 RunTime=00:00:00 TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-11-26T08:32:19 EligibleTime=2026-11-26T08:32:19 StartTime=2026-11-26T08:33:04 "
    "EndTime=2026-11-26T08:33:04 Deadline=N/A Partition=debug AllocNode:Sid=localhost:2341 "
    "NodeList=gpu01 BatchHost=gpu01 NumNodes=1 NumCPUs=1 TRES=cpu=1,mem=256M,node=1,billing=1 "
    "WorkDir=/tmp/x StdOut=/tmp/x/3.out Power="
)
SCONTROL_PENDING = (
    "JobId=9 JobName=srv JobState=PENDING Reason=Nodes required for job are DOWN, DRAINED or "
    "reserved for jobs in higher priority partitions ExitCode=0:0 TimeLimit=1-02:00:00 "
    "SubmitTime=2026-11-26T08:32:19 StartTime=Unknown EndTime=Unknown NodeList=(null) BatchHost=(null)"
)


def test_scontrol_show_job_line_finished() -> None:
    job = parse_scontrol_show_job_line(SCONTROL_FAILED, tz=timezone(timedelta(hours=1)))
    assert (job.job_id, job.state, job.reason, job.node, job.exit_code) == ("3", "FAILED", "NonZeroExitCode", "gpu01", 3)
    assert job.start_time == datetime(2026, 11, 26, 7, 33, 4, tzinfo=timezone.utc)
    assert job.time_limit_s is None and job.finished


def test_scontrol_show_job_line_reason_with_spaces() -> None:
    job = parse_scontrol_show_job_line(SCONTROL_PENDING, tz=timezone.utc)
    assert job.reason is not None and job.reason.startswith("Nodes required for job are DOWN, DRAINED")
    assert (job.node, job.start_time, job.time_limit_s, job.exit_code) == (None, None, 26 * 3600, None)


@pytest.mark.parametrize("text, seconds", [
    ("5", 300), ("05:30", 330), ("01:02:03", 3723), ("2-0", 2 * 86400),
    ("1-02:03", 86400 + 2 * 3600 + 3 * 60), ("1-02:03:04", 93784),
    ("UNLIMITED", None), ("Partition_Limit", None), ("", None),
])
def test_durations(text: str, seconds: int | None) -> None:
    assert parse_duration_s(text) == seconds
