"""The API page's promises on real servers: vLLM (CPU build) and faster-whisper, run by Slurm jobs.

Everything goes through the stack scripts/demo starts: the real router with its catalog, jobs
submitted by `llm-launch up`, registered by themselves, supervised.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from launcher.core.db import open_engine, session_factory
from launcher.core.keys import create_key
from launcher.core.deployments import add_backend, list_deployments
from launcher.core.settings import ClusterSettings, KeyLimits, RouterSettings, Settings
from tests.conftest import LoopThread
from tests.e2e.conftest import SPARE, DemoStack, model_entry
from tests.waiting import wait_for
from tests.e2e.recording_proxy import RecordingProxy

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]
SPOKEN = "The quick brown fox jumps over the lazy dog."


def speech(folder: Path, text: str = SPOKEN) -> Path:
    """A WAV clip of TEXT spoken by espeak-ng."""
    path = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors."""
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_chat_answers_on_the_public_name(demo_stack: DemoStack) -> None:
    answer = demo_stack.client().chat.completions.create(
        model="qwen3.5-122b", messages=[{"role": "user", "content": "Name three planets."}], max_tokens=40)
    assert answer.choices[0].message.content and answer.choices[0].message.content.strip()
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 40


def test_chat_streams_token_by_token_and_hides_the_usage_chunk_it_did_not_ask_for(demo_stack: DemoStack) -> None:
    stream = demo_stack.client().chat.completions.create(
        model="qwen3.5-122b", messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=30, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 3 and text.strip()
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in chunks)  # the router's own usage request is stripped


def test_max_tokens_above_the_models_limit_is_a_400_naming_it(demo_stack: DemoStack) -> None:
    with pytest.raises(openai.BadRequestError, match="1024"):
        demo_stack.client().chat.completions.create(
            model="qwen3.5-122b", messages=[{"role": "user", "content": "Hi"}], max_tokens=5000)


def test_embeddings_have_384_dimensions_and_similar_sentences_are_closer(demo_stack: DemoStack) -> None:
    sentences = ["The cat sat on the mat.", "A feline rested on the rug.", "Stock markets fell sharply today."]
    result = demo_stack.client().embeddings.create(model="qwen3-embedding-8B", input=sentences)
    vectors = [d.embedding for d in result.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_transcription_of_a_spoken_clip(demo_stack: DemoStack, tmp_path: Path) -> None:
    with speech(tmp_path).open("rb") as audio:
        text = demo_stack.client().audio.transcriptions.create(
            model="whisper-large-v3", file=audio, language="en").text.lower()
    assert sum(word in text for word in ("quick", "brown", "fox", "lazy", "dog")) >= 3, text


def test_a_model_server_refuses_callers_without_its_secret(demo_stack: DemoStack) -> None:
    for model in ("smollm2-135m", "minilm-embed", "whisper-tiny.en"):
        url = demo_stack.ready(model)["url"]
        for headers in ({}, {"Authorization": f"Bearer {demo_stack.key}"}):  # a user's key is no secret
            reply = requests.get(f"{url}/v1/models", headers=headers, timeout=10)
            assert reply.status_code == 401, (model, headers, reply.text[:200])


def test_models_status_follows_a_job_from_pending_through_loading_to_ready(
    demo_stack: DemoStack, tmp_path: Path,
) -> None:
    held = demo_stack.settings_variant("held.toml", extra_sbatch_args='["--hold"]')
    assert model_entry(demo_stack, SPARE)["status"] == "offline"
    up = demo_stack.llm("up", SPARE, config=held)
    assert up.returncode == 0, up.stderr
    job = re.search(r"submitted job (\d+)", up.stdout)
    assert job, up.stdout
    try:
        pending = wait_for(lambda: _entry_if(demo_stack, "pending"), 30, "status pending")
        assert pending["replicas"]["ready"] == 0
        _assert_503(demo_stack, tmp_path, "queued")
        release = subprocess.run(["scontrol", "release", job.group(1)], env=demo_stack.env,
                                 capture_output=True, text=True, check=False)
        assert release.returncode == 0, release.stderr
        # released, it may still wait for a GPU that another job holds; then it loads for 8 s or more
        wait_for(lambda: _entry_if(demo_stack, "loading"), 300, "status loading")
        _assert_503(demo_stack, tmp_path, "loading")
        ready = wait_for(lambda: _entry_if(demo_stack, "ready"), 120, "status ready")
        assert ready["replicas"] == {"ready": 1, "wanted": 1}
    finally:
        down = demo_stack.llm("down", SPARE, "--now")
        assert down.returncode == 0, down.stderr


def _entry_if(stack: DemoStack, status: str) -> dict[str, Any] | None:
    entry = model_entry(stack, SPARE)
    return entry if entry["status"] == status else None


def _assert_503(stack: DemoStack, folder: Path, word: str) -> None:
    with speech(folder, "Hello.").open("rb") as audio:
        reply = requests.post(f"{stack.base_url}/audio/transcriptions", files={"file": audio},
                              data={"model": SPARE}, headers={"Authorization": f"Bearer {stack.key}"},
                              timeout=30)
    assert reply.status_code == 503, reply.text
    assert int(reply.headers["Retry-After"]) > 0
    assert word in reply.json()["error"]["message"]


# --- the alias: what the backend receives -----------------------------------------------------

@dataclass
class AliasRig:
    """A second router on its own registry whose only chat backend is a recorder before real vLLM."""

    base_url: str
    key: str
    proxy: RecordingProxy

    def ask(self, model: str, **params: Any) -> tuple[str, dict[str, Any]]:
        """The answer's text and the body the backend received."""
        client = openai.OpenAI(base_url=self.base_url, api_key=self.key, max_retries=0)
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, **params)
        return answer.choices[0].message.content or "", self.proxy.bodies[-1]


@pytest.fixture
def alias_rig(demo_stack: DemoStack, servers: LoopThread, tmp_path: Path) -> Iterator[AliasRig]:
    from router.app import create_app
    from router.serve import start

    chat = _chat_record(demo_stack)
    proxy = RecordingProxy(chat.url or "")
    servers.run(proxy.start())
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = open_engine(url)
    with session_factory(engine)() as session:
        add_backend(session, chat.model, proxy.url, kind="chat", secret=chat.secret)
        key, _ = create_key(session, "alias-test", limits=KeyLimits())
    settings = Settings(database=url, cluster=ClusterSettings(catalog=str(demo_stack.catalog)),
                        router=RouterSettings(health_interval_s=3600.0, stall_timeout_s=120.0))
    runner, port = servers.run(start(create_app(settings, engine), "127.0.0.1", 0, 1.0))
    yield AliasRig(f"http://127.0.0.1:{port}/v1", key, proxy)
    servers.run(runner.cleanup())
    servers.run(proxy.stop())
    engine.dispose()


def _chat_record(stack: DemoStack) -> Any:
    engine = open_engine(f"sqlite:///{stack.state / 'registry.db'}")
    try:
        with session_factory(engine)() as session:
            return next(r for r in list_deployments(session) if r.model == "smollm2-135m" and r.state == "ready")
    finally:
        engine.dispose()


def test_nonthinking_alias_sends_thinking_off_and_its_defaults_and_the_client_wins(alias_rig: AliasRig) -> None:
    text, body = alias_rig.ask("qwen3.5-122b-nonthinking", temperature=0.2)
    assert text.strip()  # real vLLM took the merged body
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["temperature"] == 0.2  # the client's own value, not the alias's 0.7
    assert (body["top_p"], body["presence_penalty"]) == (0.8, 1.5)


def test_each_public_name_brings_its_own_defaults(alias_rig: AliasRig) -> None:
    _, gemma = alias_rig.ask("gemma-4-31B-it")
    assert (gemma["temperature"], gemma["top_p"], gemma["top_k"]) == (1.0, 0.95, 64)
    assert "chat_template_kwargs" not in gemma
    _, thinking = alias_rig.ask("qwen3.5-122b", top_p=0.5)
    assert (thinking["temperature"], thinking["top_p"]) == (0.7, 0.5)
    assert "chat_template_kwargs" not in thinking
    _, honest = alias_rig.ask("smollm2-135m")
    assert "temperature" not in honest and "top_p" not in honest
