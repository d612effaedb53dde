"""SlurmClient against the real local cluster (scripts/local-slurm), plus its failure modes."""

from __future__ import annotations

import re
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from tests.integration.slurm_fixtures import SlurmCluster, slurm_cluster  # noqa: F401  (fixture)

from launcher.slurm.client import JobInfo, SlurmClient, SlurmError

# The job writes "host port gpus" once its server listens; the server stays in the job's
# process tree (no setsid) and is waited on, so a TERM trap could run during the wait.
SERVER_JOB = """#!/bin/bash
#SBATCH --job-name=llm-launch-test-http
{python} -c '
import http.server, os, socket, sys
srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
open(sys.argv[1], "w").write(f"{{socket.gethostname()}} {{srv.server_port}} {{gpus}}\\n")
srv.serve_forever()
' {addr_file} &
wait
"""


def wait_for(client: SlurmClient, job_id: str, ready: Callable[[JobInfo], bool]) -> JobInfo:
    """Poll until the job satisfies ready; fail with its last state after 60 s."""
    job = None
    for _ in range(600):
        job = client.jobs([job_id]).get(job_id)
        if job is not None and ready(job):
            return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} never got there; last seen: {job}")


def wait_for_file(path: Path) -> str:
    for _ in range(300):
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.1)
    pytest.fail(f"{path} was never written")


@pytest.mark.slurm
def test_gpu_job_runs_a_server_then_cancel_ends_it(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    client = slurm_cluster.client()
    addr_file = tmp_path / "addr"
    script = SERVER_JOB.format(python=sys.executable, addr_file=addr_file)
    args = ["--gres=gpu:1", "--time=5", f"--output={tmp_path}/%j.out", f"--chdir={tmp_path}"]
    job_id = client.submit(script, args=args)

    job = wait_for(client, job_id, lambda j: j.state == "RUNNING")
    assert job.node == slurm_cluster.node
    assert job.name == "llm-launch-test-http"
    assert job.start_time and job.end_time and job.end_time - job.start_time == timedelta(minutes=5)
    assert job.time_limit_s == 300 and not job.finished

    _host, port, gpus = wait_for_file(addr_file).split()
    assert gpus in {"0", "1", "2", "3"}  # the fake GPU Slurm gave this job
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert response.status == 200

    client.cancel(job_id)
    job = wait_for(client, job_id, lambda j: j.finished)
    assert job.state == "CANCELLED"
    client.cancel(job_id)  # cancelling an ended job is a no-op, not an error


@pytest.mark.slurm
def test_jobs_is_one_command_and_sees_held_jobs(slurm_cluster: SlurmCluster) -> None:
    client = slurm_cluster.client()
    ids = [client.submit("#!/bin/sh\ntrue\n", args=["--hold", "--output=/dev/null"]) for _ in range(3)]
    try:
        before = client.commands_run
        jobs = client.jobs(ids)
        assert client.commands_run == before + 1
        assert set(jobs) == set(ids)
        assert {(j.state, j.reason) for j in jobs.values()} == {("PENDING", "JobHeldUser")}

        client.update_time_limit(ids[0], 7)
        assert client.jobs([ids[0]])[ids[0]].time_limit_s == 7 * 60
    finally:
        for job_id in ids:
            client.cancel(job_id)
    assert all(j.state == "CANCELLED" for j in client.jobs(ids).values())


@pytest.mark.slurm
def test_bad_partition_gives_sbatchs_message(slurm_cluster: SlurmCluster) -> None:
    with pytest.raises(SlurmError, match="Invalid partition name specified") as info:
        slurm_cluster.client().submit("#!/bin/sh\ntrue\n", args=["--partition=no-such-partition"])
    assert "\n" not in str(info.value)


@pytest.mark.slurm
def test_drained_node_shows_its_reason_until_resumed(slurm_cluster: SlurmCluster) -> None:
    client, node = slurm_cluster.client(), slurm_cluster.node
    client.set_node_state(node, "DRAIN", reason="llm-launch test")
    try:
        drained = {n.name: n for n in client.nodes()}[node]
        assert "DRAIN" in drained.state and drained.reason == "llm-launch test"
        assert drained.gres == "gpu:4"
    finally:
        client.set_node_state(node, "RESUME")
    assert "DRAIN" not in {n.name: n for n in client.nodes()}[node].state


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slurm
def test_unreachable_controller_is_a_slurm_error(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    text = slurm_cluster.conf.read_text()
    conf.write_text(re.sub(r"(?m)^SlurmctldPort=.*$", f"SlurmctldPort={_free_port()}", text))
    client = SlurmClient(timeout_s=3, env={**slurm_cluster.env, "SLURM_CONF": str(conf)})

    assert client.ping() is False
    for call in (client.jobs, lambda: client.submit("#!/bin/sh\ntrue\n")):
        with pytest.raises(SlurmError, match="Slurm is not reachable") as info:
            call()
        assert "scripts/local-slurm start" in str(info.value) and "\n" not in str(info.value)


def test_missing_slurm_tools_are_a_slurm_error(tmp_path: Path) -> None:
    client = SlurmClient(env={"PATH": str(tmp_path)})
    with pytest.raises(SlurmError, match="sbatch not found"):
        client.submit("#!/bin/sh\ntrue\n")
    assert client.ping() is False
