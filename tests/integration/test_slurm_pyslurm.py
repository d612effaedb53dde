"""The optional pyslurm adapter: the same contract as the CLI client, where pyslurm is importable."""

import importlib.util
import os
import subprocess
import sys

import pytest

from launcher.slurm.client import SlurmError
from launcher.slurm.connect import open_slurm
from launcher.slurm.pyslurm_adapter import PySlurmClient
from tests.integration.slurm_fixtures import SlurmCluster, slurm_cluster  # noqa: F401

needs_pyslurm = pytest.mark.skipif(
    importlib.util.find_spec("pyslurm") is None,
    reason="pyslurm is not importable: PyPI's pyslurm needs Slurm 25.11; the test clusters run 22.05 or 24.11",
)


def test_adapter_choice_and_its_error_without_pyslurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_LAUNCH_SLURM_ADAPTER", "slurmrestd")
    with pytest.raises(SlurmError, match="expected 'cli' or 'pyslurm'"):
        open_slurm()
    monkeypatch.setenv("LLM_LAUNCH_SLURM_ADAPTER", "cli")
    assert type(open_slurm()).__name__ == "SlurmClient"
    if importlib.util.find_spec("pyslurm") is None:
        monkeypatch.setenv("LLM_LAUNCH_SLURM_ADAPTER", "pyslurm")
        with pytest.raises(SlurmError, match="pyslurm is not importable"):
            open_slurm()


def test_cli_names_the_missing_pyslurm_in_one_line(tmp_path: "os.PathLike[str]") -> None:
    if importlib.util.find_spec("pyslurm") is not None:
        pytest.skip("pyslurm is installed here")
    env = {**os.environ, "LLM_LAUNCH_SLURM_ADAPTER": "pyslurm", "LLM_LAUNCH_DB": f"{tmp_path}/r.db"}
    cli = os.path.join(os.path.dirname(sys.executable), "llm-launch")
    done = subprocess.run([cli, "supervise", "--once", "--catalog", "demo"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "pyslurm is not importable" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slurm
@needs_pyslurm
def test_submit_query_cancel_through_pyslurm(slurm_cluster: SlurmCluster) -> None:
    client = PySlurmClient(env=slurm_cluster.env)
    job_id = client.submit("#!/bin/bash\n#SBATCH --gres=gpu:1\n#SBATCH --time=1\nsleep 60\n")
    assert client.jobs([job_id])[job_id].state in ("PENDING", "RUNNING")
    client.cancel(job_id)
    assert client.jobs([job_id])[job_id].state in ("CANCELLED", "COMPLETING")
