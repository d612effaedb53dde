"""The `slurm_cluster` fixture: a real one-node Slurm started by scripts/local-slurm.

Import it from a conftest (`from slurm_fixtures import slurm_cluster`) or a test module.
The cluster is left running at the end: starting an already running one costs ~0.05 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from launcher.slurm.client import SlurmClient

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local-slurm"
# Jobs on the local test cluster (8 CPUs, 16 GB): small requests, not the defaults for GPU jobs.
SMALL_JOBS: dict[str, Any] = {"cpus_per_gpu": 1, "mem_per_gpu": "2G"}


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs to use the local cluster."""

    env: dict[str, str]  # full environment for subprocesses, SLURM_CONF included
    node: str
    conf: Path

    def client(self, timeout_s: float = 30.0) -> SlurmClient:
        """A SlurmClient bound to this cluster's configuration."""
        return SlurmClient(timeout_s=timeout_s, env=self.env)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "local Slurm needs root: scripts/local-slurm installs packages and runs daemons as root"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "Slurm is not installed and apt-get is unavailable to install it"
    return None


def _start(env: dict[str, str]) -> str:
    done = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    output = (done.stderr + done.stdout).strip()
    if done.returncode != 0 and "apt-get" in output:
        pytest.skip(f"cannot install Slurm with apt: {output.splitlines()[-1]}")
    if done.returncode != 0:
        pytest.fail(f"scripts/local-slurm start failed:\n{output[-2000:]}")
    return done.stdout


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start (or reuse) the local cluster; skip where it cannot run."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ)
    # the script's last line is "export SLURM_CONF=<path>    # ...": no second copy of its default
    conf = Path(_start(env).split("SLURM_CONF=", 1)[1].split()[0])
    env["SLURM_CONF"] = str(conf)
    node = SlurmClient(env=env).nodes()[0].name
    yield SlurmCluster(env=env, node=node, conf=conf)
