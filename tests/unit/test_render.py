"""Job scripts: the #SBATCH lines, secrets kept off argv, masking, and valid bash for every engine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from launcher.core.catalog import Catalog, load_catalog, packaged_catalog
from launcher.slurm.render import JobSecrets, JobSpec, RenderError, render_script
from launcher.core.settings import ClusterSettings, EngineEnv

SECRETS = JobSecrets(registration_token="reg-token-123", backend_secret="backend-secret-456")
SPEC = JobSpec(log_dir="/logs", python="/venv/bin/python")
CLUSTER = ClusterSettings(
    partition="gpu", account="proj42", qos="high", default_time="02:00:00", cpus_per_gpu=8,
    mem_per_gpu="64G", router_url="http://router.internal:8000/", port_range=(21000, 21999),
    signal_lead_s=90, extra_sbatch_args=("--constraint=a100",),
    engines={"vllm": EngineEnv(setup=("module load cuda/12.4", "source /opt/vllm/bin/activate"))},
)


@pytest.fixture(scope="module")
def production() -> Catalog:
    return load_catalog(packaged_catalog("production"), environ={})


def sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_vllm_job_carries_catalog_and_cluster_settings(production: Catalog) -> None:
    script = render_script(production.entry("qwen3.5-122b"), CLUSTER, SECRETS, SPEC)
    lines = sbatch_lines(script)
    for expected in ("--gres=gpu:4", "--time=24:00:00", "--signal=B:USR1@90", "--no-requeue",
                     "--partition=gpu", "--account=proj42", "--qos=high", "--constraint=a100",
                     "--cpus-per-task=32", "--mem=160G", "--job-name=llm-qwen3-5-122b",
                     "--output=/logs/qwen3-5-122b-%j.out"):
        assert f"#SBATCH {expected}" in lines
    assert "module load cuda/12.4\nsource /opt/vllm/bin/activate" in script
    assert "vllm serve Qwen/Qwen3.5-122B-A10B-GPTQ-Int4" in script
    assert "--served-model-name qwen3.5-122b qwen3.5-122b-nonthinking" in script
    assert "--tensor-parallel-size 4" in script and "--reasoning-parser qwen3" in script
    assert "router_url=http://router.internal:8000\n" in script
    assert "local lo=21000 hi=21999" in script


def test_secrets_reach_the_server_by_environment_never_argv(production: Catalog) -> None:
    script = render_script(production.entry("qwen3.5-122b"), CLUSTER, SECRETS, SPEC)
    assert "export VLLM_API_KEY=backend-secret-456" in script
    assert "--api-key" not in script
    server_line = next(line for line in script.splitlines() if "vllm serve" in line)
    assert "secret" not in server_line and "token" not in server_line
    assert script.count("reg-token-123") == 1  # one shell variable, sent on curl's stdin


def test_whisper_job_uses_the_project_server_and_its_secret_variable(production: Catalog) -> None:
    script = render_script(production.entry("whisper-large-v3"), CLUSTER, SECRETS, SPEC)
    assert "export LLM_LAUNCH_BACKEND_SECRET=backend-secret-456" in script
    assert "/venv/bin/python -m launcher.engines.whisper.server --model Systran/faster-whisper-large-v3" in script
    assert "--device cuda" in script and "#SBATCH --gres=gpu:1" in sbatch_lines(script)
    assert "module load" not in script  # engine setup is per engine


def test_masking_hides_both_secrets(production: Catalog) -> None:
    script = render_script(production.entry("gemma-4-31B-it"), CLUSTER, SECRETS, SPEC, mask=True)
    assert "backend-secret-456" not in script and "reg-token-123" not in script
    assert "export VLLM_API_KEY='****'" in script and "registration_token='****'" in script


def test_time_override_and_cluster_default(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[models.w]\nengine = "whisper"\nweights = "/w"\n')
    entry = load_catalog(path).entry("w")
    assert "#SBATCH --time=02:00:00" in render_script(entry, CLUSTER, SECRETS, SPEC)
    spec = JobSpec(log_dir="/logs", time_limit="00:01:00")
    assert "#SBATCH --time=00:01:00" in render_script(entry, CLUSTER, SECRETS, spec)
    with pytest.raises(RenderError, match="not a Slurm time limit: 'soon'"):
        render_script(entry, CLUSTER, SECRETS, JobSpec(log_dir="/l", time_limit="soon"))


def test_container_prefix_and_catalog_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[models.w]\nengine = "whisper"\nweights = "/w"\ncpus = 4\nmem = "20G"\n'
                    'env = { OMP_NUM_THREADS = 4 }\n')
    cluster = ClusterSettings(engines={"whisper": EngineEnv(prefix="apptainer exec --nv /img/w.sif")})
    script = render_script(load_catalog(path).entry("w"), cluster, SECRETS, SPEC)
    assert "apptainer exec --nv /img/w.sif python -m launcher.engines.whisper.server" in script
    assert {"#SBATCH --cpus-per-task=4", "#SBATCH --mem=20G"} <= set(sbatch_lines(script))
    assert "export OMP_NUM_THREADS=4" in script


def test_command_engine_fills_placeholders(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[models.x]\nengine = "command"\nweights = "/models/x y"\n'
                    'command = ["my-server", "--port={port}", "--model", "{weights}", "--bind", "{host}"]\n')
    script = render_script(load_catalog(path).entry("x"), ClusterSettings(), SECRETS, SPEC)
    assert "my-server --port=\"$port\" --model '/models/x y' --bind 0.0.0.0 &" in script


def test_unset_weights_variable_fails_rendering_with_its_name() -> None:
    entry = load_catalog(packaged_catalog("demo"), environ={}).entry("whisper-tiny.en")
    with pytest.raises(RenderError, match="LLM_LAUNCH_WHISPER_MODEL is not set"):
        render_script(entry, CLUSTER, SECRETS, SPEC)


@pytest.mark.parametrize("model", ["qwen3.5-122b", "whisper-large-v3", "qwen3-embedding-8B"])
def test_rendered_scripts_are_valid_bash(production: Catalog, model: str) -> None:
    script = render_script(production.entry(model), CLUSTER, SECRETS, SPEC)
    done = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


def _function(script: str, name: str) -> str:
    start = script.index(f"\n{name}() {{")
    return script[start:script.index("\n}\n", start)]


def test_slurms_warning_does_not_deregister_the_drain_signal_does(production: Catalog) -> None:
    script = render_script(production.entry("qwen3.5-122b"), CLUSTER, SECRETS, SPEC)
    assert "trap on_warning USR1" in script and "trap on_drain USR2" in script and "trap on_term TERM" in script
    assert "deregister" not in _function(script, "on_warning")
    assert "deregister" in _function(script, "on_drain") and "deregister" in _function(script, "on_term")


def _thread_setup(script: str, cpus: str, given: str) -> str:
    """What the CPU job's thread set-up exports, run by bash on CPUS with SLURM_CPUS_ON_NODE=GIVEN."""
    start = script.index('if [ -z "${VLLM_CPU_OMP_THREADS_BIND:-}" ]')
    block = script[start:script.index("\nfi\n", start) + 4]
    probe = f'log() {{ :; }}\n{block}echo "$VLLM_CPU_OMP_THREADS_BIND ${{OMP_NUM_THREADS:-}}"'
    env = {"PATH": os.environ["PATH"], "SLURM_CPUS_ON_NODE": given}
    done = subprocess.run(["taskset", "-c", cpus, "bash", "-c", probe], env=env, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_vllm_cpu_jobs_bind_their_threads_to_the_cpus_slurm_gave_them(production: Catalog) -> None:
    demo = load_catalog(packaged_catalog("demo"), environ={
        "LLM_LAUNCH_CHAT_MODEL": "/m/chat", "LLM_LAUNCH_EMBED_MODEL": "/m/embed", "LLM_LAUNCH_WHISPER_MODEL": "/m/w"})
    cpu = render_script(demo.entry("minilm-embed"), CLUSTER, SECRETS, SPEC)
    assert cpu.index("VLLM_CPU_OMP_THREADS_BIND=") < cpu.index("vllm serve")
    # a job confined to its CPUs (cgroup or affinity) pins its threads there
    assert _thread_setup(cpu, "0", "1") == "0"
    if (os.cpu_count() or 1) >= 2:
        assert _thread_setup(cpu, "0,1", "2") == "0-1"
        # a job Slurm does not confine (task/none, no cgroup) runs as many threads as it was given,
        # unpinned: pinned, two such jobs on one node would spin on the same first cores
        assert _thread_setup(cpu, "0,1", "1") == "nobind 1"
    gpu = render_script(production.entry("qwen3.5-122b"), CLUSTER, SECRETS, SPEC)
    assert "VLLM_CPU_OMP_THREADS_BIND" not in gpu  # the GPU path is unchanged
