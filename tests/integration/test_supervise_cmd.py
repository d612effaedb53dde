"""`llm-launch supervise` as a real process: one pass with --once, a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.slurm_fixtures import SlurmCluster, slurm_cluster  # noqa: F401

CATALOG = '[models.tiny]\nengine = "command"\nweights = "none"\ncommand = ["true"]\n'


def launcher(tmp_path: Path, *args: str) -> list[str]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG)
    return [str(Path(sys.executable).parent / "llm-launch"), "--db", str(tmp_path / "registry.db"),
            "supervise", "--catalog", str(catalog), *args]


@pytest.mark.slurm
def test_once_runs_one_pass_with_one_slurm_query(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    done = subprocess.run(launcher(tmp_path, "--once"), env=slurm_cluster.env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "0 deployment(s), 0 changed, 0 submitted, 0 cancelled; 1 Slurm command(s)" in done.stdout


def test_once_without_slurm_says_so_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path), "SLURM_CONF": str(tmp_path / "none.conf")}
    done = subprocess.run(launcher(tmp_path, "--once"), env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert "Error: squeue not found" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_stops_the_loop_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no Slurm tools: passes fail, the loop goes on
    child = subprocess.Popen(launcher(tmp_path, "--interval", "0.2"), env=env, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    for line in child.stderr:
        if "supervising every 0.2 s" in line:
            break
    child.send_signal(signal.SIGTERM)
    _, rest = child.communicate(timeout=30)
    assert child.returncode == 0 and "Traceback" not in rest
    assert rest.count("Slurm query failed") <= 1  # an outage is logged once, not every pass
