"""Host memory and CPUs of GPU jobs: safe built-in defaults, and a production catalog whose every
entry is sized by the admin guide's rule (host RAM >= weights + 16 GB per GPU, CPUs >= 4 per GPU)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher.core.catalog import CatalogError, catalog_from_dict, load_catalog, packaged_catalog
from launcher.core.settings import ClusterSettings
from launcher.slurm.render import JobSecrets, JobSpec, render_script

ROOT = Path(__file__).resolve().parents[2]
SECRETS = JobSecrets(registration_token="t", backend_secret="s")
SPEC = JobSpec(log_dir="/logs", python="/venv/bin/python")
# Size on disk of each production entry's weights (GB), as the hub lists them.
WEIGHTS_GB = {"qwen3-5-122b": 65, "gemma-4-31b-it": 62, "whisper-large-v3": 3, "qwen3-embedding-8b": 16,
              "qwen3-reranker-8b": 16}
HEADROOM_GB_PER_GPU = 16
_UNITS = {"K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1, "T": 1024}


def gigabytes(mem: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([KMGT]?)", mem).groups()  # type: ignore[union-attr]
    return int(number) * _UNITS[unit or "M"]  # Slurm's default unit is megabytes


def sbatch(script: str) -> set[str]:
    return {line for line in script.splitlines() if line.startswith("#SBATCH")}


def test_built_in_defaults_are_enough_for_a_real_gpu_job() -> None:
    cluster = ClusterSettings()
    assert cluster.cpus_per_gpu >= 8 and gigabytes(cluster.mem_per_gpu) >= 64
    entry = catalog_from_dict({"models": {"x": {"engine": "vllm", "weights": "/w", "gpus": 2}}}, "c.toml", {}).entry("x")
    lines = sbatch(render_script(entry, cluster, SECRETS, SPEC))
    assert {"#SBATCH --cpus-per-gpu=8", "#SBATCH --mem-per-gpu=64G"} <= lines


def test_every_production_entry_sets_memory_and_cpus_that_fit_its_model() -> None:
    catalog = load_catalog(packaged_catalog("production"), environ={})
    assert set(catalog.entries) == set(WEIGHTS_GB), "a new production entry needs its weights size here"
    for name, entry in catalog.entries.items():
        assert entry.mem and entry.cpus, f"{name}: set mem and cpus, the settings' defaults may not fit"
        assert gigabytes(entry.mem) >= WEIGHTS_GB[name] + HEADROOM_GB_PER_GPU * entry.gpus, name
        assert entry.cpus >= 4 * entry.gpus, name
        lines = sbatch(render_script(entry, ClusterSettings(), SECRETS, SPEC))
        assert {f"#SBATCH --cpus-per-task={entry.cpus}", f"#SBATCH --mem={entry.mem}"} <= lines


def test_the_sizing_rule_is_written_next_to_the_catalog_fields() -> None:
    guide = (ROOT / "docs" / "admin-guide.md").read_text()
    assert "weights size + 16 GB per GPU" in guide and "4 CPUs per GPU" in guide


@pytest.mark.parametrize("mem", ["lots", "64 G", "64GB", "-1G", "0", "1.5G", 64])
def test_a_catalog_mem_that_slurm_would_refuse_names_the_field(mem: object) -> None:
    with pytest.raises(CatalogError, match=r"\[models.x\] mem: expected"):
        catalog_from_dict({"models": {"x": {"engine": "vllm", "weights": "/w", "mem": mem}}}, "c.toml", {})


@pytest.mark.parametrize("mem", ["64G", "512M", "2T", "4000"])
def test_a_catalog_mem_in_slurm_units_is_taken(mem: str) -> None:
    entry = catalog_from_dict({"models": {"x": {"engine": "vllm", "weights": "/w", "mem": mem}}}, "c.toml", {})
    assert entry.entry("x").mem == mem


def test_the_demo_keeps_its_jobs_small_for_the_local_cluster() -> None:
    demo = (ROOT / "scripts" / "demo").read_text()
    assert "cpus_per_gpu = 1" in demo and 'mem_per_gpu = "2G"' in demo
