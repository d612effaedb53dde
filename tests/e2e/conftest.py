"""The e2e tier's stack: scripts/demo on its own state dir, port and catalog, through the local Slurm.

One stack per session (each vLLM server starts once); the teardown downs its jobs and stops the
router and supervisor it started, whatever the tests did.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from launcher.core.catalog import packaged_catalog
from tests.integration.slurm_fixtures import SlurmCluster

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo"
LLM_LAUNCH = str(Path(sys.executable).with_name("llm-launch"))
SPARE = "whisper-spare"
STACK_GPUS = 4  # chat, embeddings, transcription, and the spare the status test starts
# A whisper server that takes 8 s more to load, like a large model would: its job is visibly
# `loading` between Slurm starting it and the server registering.
SPARE_ENTRY = """
[models.{name}]
engine = "command"
kind = "transcription"
weights = "${{LLM_LAUNCH_WHISPER_MODEL}}"
gpus = 1
time = "00:30:00"
start_deadline = 120
mem = "1G"
capabilities = ["transcription"]
base_model = "Whisper tiny.en"
command = {command}
"""
SPARE_SCRIPT = ('sleep 8; exec "$0" -m launcher.engines.whisper.server --model "$1" --served-name "$2" '
                '--host 0.0.0.0 --port "$3" --device cpu --compute-type int8')


@dataclass(frozen=True)
class DemoStack:
    """A running demo service: its base URL, a key, and the admin's `llm-launch` on its settings."""

    base_url: str
    key: str
    state: Path
    env: dict[str, str]
    catalog: Path

    def llm(self, *args: str, config: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run `llm-launch --config <stack settings> ARGS` as the admin would."""
        settings = config or self.state / "settings.toml"
        return subprocess.run([LLM_LAUNCH, "--config", str(settings), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def settings_variant(self, name: str, **cluster: str) -> Path:
        """A copy of the stack's settings with more [cluster] lines (TOML values, given as text)."""
        text = (self.state / "settings.toml").read_text()
        extra = "".join(f"{key} = {value}\n" for key, value in cluster.items())
        path = self.state / name
        path.write_text(text.replace("[cluster]\n", "[cluster]\n" + extra, 1))
        return path

    def deployments(self) -> list[dict[str, Any]]:
        """`llm-launch status --json`'s deployments (not gone)."""
        done = self.llm("status", "--json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)["deployments"]
        return rows

    def ready(self, model: str) -> dict[str, Any]:
        """The ready deployment of catalog entry MODEL."""
        return next(d for d in self.deployments() if d["model"] == model and d["state"] == "ready")

    def client(self, **options: Any) -> openai.OpenAI:
        """The openai SDK on this stack, without retries (tests see every answer)."""
        return openai.OpenAI(base_url=self.base_url, api_key=self.key, max_retries=0, **options)


def model_entry(stack: DemoStack, name: str) -> dict[str, Any]:
    """NAME's entry of GET /v1/models."""
    reply = requests.get(f"{stack.base_url}/models", headers={"Authorization": f"Bearer {stack.key}"}, timeout=10)
    reply.raise_for_status()
    entry: dict[str, Any] = next(m for m in reply.json()["data"] if m["id"] == name)
    return entry


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def demo_paths_env() -> Path:
    """Where scripts/prepare-demo-models wrote the paths of the demo models."""
    default = Path.home() / ".cache" / "llm-launch" / "demo"
    return Path(os.environ.get("LLM_LAUNCH_DEMO_DIR") or default) / "paths.env"


def _skip_reason() -> str | None:
    paths = demo_paths_env()
    if not paths.exists() or "LLM_LAUNCH_VLLM_VENV=" not in paths.read_text():
        return f"the demo models are not prepared ({paths} missing): run scripts/prepare-demo-models"
    if shutil.which("espeak-ng") is None:
        return "espeak-ng (Debian) is needed to make speech clips"
    return None


def write_catalog(path: Path) -> None:
    """The packaged demo catalog plus a spare whisper entry the status test starts and stops."""
    command = ["bash", "-c", SPARE_SCRIPT, sys.executable, "{weights}", SPARE, "{port}"]
    spare = SPARE_ENTRY.format(name=SPARE, command=json.dumps(command))
    path.write_text(packaged_catalog("demo").read_text() + spare)


def _run_demo(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(DEMO), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


@pytest.fixture(scope="session")
def demo_stack(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    """scripts/demo --no-setup --no-examples on a private state dir; stopped (jobs down) at the end."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    _wait_for_gpus(slurm_cluster, STACK_GPUS)
    state = tmp_path_factory.mktemp("demo-state")
    catalog = state / "catalog.toml"
    write_catalog(catalog)
    port = free_port()
    env = {k: v for k, v in slurm_cluster.env.items()
           if k not in ("LLM_LAUNCH_DB", "LLM_LAUNCH_CONFIG", "LLM_LAUNCH_CATALOG")}
    env.update(LLM_LAUNCH_DEMO_STATE=str(state), LLM_LAUNCH_DEMO_PORT=str(port),
               LLM_LAUNCH_DEMO_CATALOG=str(catalog), LLM_LAUNCH_DEMO_TIMEOUT="400")
    up = _run_demo(env, "--no-setup", "--no-examples", timeout=540)
    try:
        if up.returncode != 0:
            pytest.fail(f"scripts/demo failed:\n{up.stderr[-3000:]}\n{up.stdout[-1000:]}\n"
                        f"router log:\n{_log_tail(state / 'router.log')}")
        stack_env = {**env, **_paths_env()}
        yield DemoStack(f"http://127.0.0.1:{port}/v1", (state / "api-key").read_text().strip(),
                        state, stack_env, catalog)
    finally:
        _stop(env, state, slurm_cluster)


def _gpus(env: dict[str, str], command: list[str]) -> int:
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=True).stdout
    return sum(int(n) for n in re.findall(r"gpu(?::[\w-]+)?:(\d+)", out))


def _wait_for_gpus(cluster: SlurmCluster, needed: int, timeout_s: float = 180) -> None:
    """Wait until the local Slurm has NEEDED fake GPUs free; a running demo holds three."""
    total = _gpus(cluster.env, ["sinfo", "-h", "-o", "%G"])
    deadline = time.monotonic() + timeout_s
    while (free := total - _gpus(cluster.env, ["squeue", "-h", "-t", "PD,R,CF,CG", "-o", "%b"])) < needed:
        if time.monotonic() > deadline:
            pytest.fail(f"the local Slurm has {free} of {total} GPUs free and the e2e stack needs {needed}: "
                        "other jobs hold them (a demo left running? `scripts/demo stop` ends it)")
        time.sleep(2)


def _paths_env() -> dict[str, str]:
    lines = demo_paths_env().read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def _stop(env: dict[str, str], state: Path, slurm_cluster: SlurmCluster) -> None:
    """scripts/demo stop, then cancel any job the registry still knows (whatever went wrong)."""
    _run_demo(env, "stop", timeout=300)
    done = subprocess.run([LLM_LAUNCH, "--config", str(state / "settings.toml"), "status", "--json"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return
    client = slurm_cluster.client()
    for row in json.loads(done.stdout)["deployments"]:
        if row["job_id"]:
            client.cancel(str(row["job_id"]))
