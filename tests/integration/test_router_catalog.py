"""Catalog semantics through the real router, a fake backend and the openai SDK; and /metrics.

The catalog serves `think` and its alias `think-nonthinking` from one deployment (entry `thinker`,
served as `think`), has a model queued in Slurm and one that is not deployed at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import requests
from openai.types.chat import ChatCompletionMessageParam

from launcher.core.db import session_factory, utcnow
from launcher.core.schema import Deployment, ModelTarget
from launcher.core.settings import ClusterSettings, RouterSettings, Settings
from router.accounting.seam import Admission, NoAccounting, RequestInfo, Usage
from tests.conftest import SECRET, TEST_ROUTER, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.waiting import wait_for

CATALOG = """
[models.thinker]
engine = "vllm"
kind = "chat"
weights = "/models/thinker"
served_name = "think"
replicas = 2
context_length = 4096
max_tokens = 100
capabilities = ["chat", "reasoning"]
base_model = "Thinker 1B"
best_for = "tests that think"

[models.thinker.names."think"]
defaults = { temperature = 0.6, top_p = 0.95 }

[models.thinker.names."think-nonthinking"]
defaults = { temperature = 0.7, top_p = 0.8, presence_penalty = 1.5, chat_template_kwargs = { enable_thinking = false } }

[models.queued]
engine = "vllm"
kind = "chat"
weights = "/models/queued"

[models.embedder]
engine = "vllm"
kind = "embeddings"
weights = "/models/embedder"
dimensions = 384
capabilities = ["embeddings"]
"""
ADMIN = "admin-token-for-tests"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


class RecordingAccounting(NoAccounting):
    """Admits everything and remembers what it was told (what a quota would reserve and charge)."""

    def __init__(self) -> None:
        self.admitted: list[RequestInfo] = []
        self.usages: list[Usage] = []

    async def admit(self, info: RequestInfo, now: float) -> Admission:
        self.admitted.append(info)
        return await super().admit(info, now)

    def finish(self, admission: Admission, status: int, usage: Usage, backend: str | None, now: float) -> None:
        self.usages.append(usage)


@dataclasses.dataclass
class CatalogStack:
    router: RouterHandle
    key: str
    backend: FakeBackend
    whisper: FakeBackend
    accounting: RecordingAccounting
    registry: Registry


@pytest.fixture
def boot(start_router: Callable[..., RouterHandle], registry: Registry, tmp_path: Path) -> Callable[..., RouterHandle]:
    """Start a router whose settings name the test catalog."""
    (tmp_path / "catalog.toml").write_text(CATALOG)

    def make(accounting: Any = None, **overrides: Any) -> RouterHandle:
        rs = dataclasses.replace(RouterSettings(), **{**TEST_ROUTER, **overrides})
        settings = Settings(database=registry.url, router=rs,
                            cluster=ClusterSettings(catalog=str(tmp_path / "catalog.toml")))
        return start_router(settings, accounting)

    return make


@pytest.fixture
def cstack(boot: Callable[..., RouterHandle], make_backend: Callable[..., FakeBackend],
           registry: Registry) -> CatalogStack:
    # The fake lists only the served name: the router's first probe round must look for that one.
    backend = make_backend(models=["think"], secret=SECRET)
    whisper = make_backend(models=["fake-whisper"], secret=SECRET)
    registry.add_backend("thinker", backend.url)
    registry.add_backend("fake-whisper", whisper.url, kind="transcription")  # not in the catalog
    add_row(registry, "queued", "pending", reason="Priority", expected_start=utcnow() + timedelta(minutes=10))
    key = registry.add_key("alice")  # before the router starts: its first snapshot has it
    accounting = RecordingAccounting()
    router = boot(accounting, admin_token=ADMIN)
    return CatalogStack(router, key, backend, whisper, accounting, registry)


def add_row(registry: Registry, model: str, state: str, **fields: Any) -> None:
    now = utcnow()
    with session_factory(registry.engine)() as session:
        session.add(Deployment(model=model, kind="chat", engine="vllm", state=state, job_id="42",
                               created_at=now, updated_at=now, **fields))
        session.commit()


def client(s: CatalogStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.router.base_url, api_key=s.key, max_retries=0)


def last_body(backend: FakeBackend) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(backend.received[-1].body)
    return doc


def test_alias_sends_its_defaults_and_thinking_off_under_the_served_name(cstack: CatalogStack) -> None:
    client(cstack).chat.completions.create(model="think-nonthinking", messages=HELLO, temperature=0.2)
    sent = last_body(cstack.backend)
    assert sent["model"] == "think"
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert (sent["top_p"], sent["presence_penalty"]) == (0.8, 1.5)
    assert sent["temperature"] == 0.2  # the client's explicit value won


def test_client_keys_win_inside_chat_template_kwargs(cstack: CatalogStack) -> None:
    client(cstack).chat.completions.create(model="think-nonthinking", messages=HELLO,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": True, "x": 1}})
    assert last_body(cstack.backend)["chat_template_kwargs"] == {"enable_thinking": True, "x": 1}


def test_nothing_to_add_reaches_the_backend_byte_for_byte(cstack: CatalogStack) -> None:
    body = b'{"model": "think", "temperature": 0.1, "top_p": 0.5, "messages": [{"role": "user", "content": "hi"}]}'
    reply = requests.post(cstack.router.base_url + "/chat/completions", data=body,
                          headers={"Authorization": f"Bearer {cstack.key}", "Content-Type": "application/json"})
    assert reply.status_code == 200
    assert cstack.backend.received[-1].body == body


def test_streamed_alias_gets_defaults_and_usage(cstack: CatalogStack) -> None:
    stream = client(cstack).chat.completions.create(model="think-nonthinking", messages=HELLO, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("tok0")
    sent = last_body(cstack.backend)
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert sent["stream_options"] == {"include_usage": True}
    # The router settles just after the last byte left it: the client may read [DONE] first.
    wait_for(lambda: cstack.accounting.usages, 5, "the stream's usage to be settled")
    assert cstack.accounting.usages[-1].completion_tokens == 5


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_over_the_models_limit_is_a_400_naming_it(cstack: CatalogStack, field: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(cstack).chat.completions.create(model="think", messages=HELLO, **{field: 101})  # type: ignore[call-overload]
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "max_tokens" and "at most 100" in error["message"]
    assert cstack.backend.received == []  # refused before any backend saw it


def test_quota_reserves_the_asked_or_the_models_limit(cstack: CatalogStack) -> None:
    c = client(cstack)
    c.chat.completions.create(model="think", messages=HELLO, max_tokens=30)
    c.chat.completions.create(model="think", messages=HELLO)
    assert [i.max_tokens for i in cstack.accounting.admitted] == [30, 100]
    assert [i.model for i in cstack.accounting.admitted] == ["think", "think"]  # the public name


def test_the_entry_name_is_not_a_public_name(cstack: CatalogStack) -> None:
    with pytest.raises(openai.NotFoundError, match="think, think-nonthinking"):
        client(cstack).chat.completions.create(model="thinker", messages=HELLO)


def test_models_list_carries_status_replicas_and_catalog_fields(cstack: CatalogStack) -> None:
    with session_factory(cstack.registry.engine)() as session:
        session.add(ModelTarget(model="thinker", desired_replicas=3, updated_at=utcnow()))
        session.commit()
    wait_for(lambda: listing(cstack)["think"]["replicas"]["wanted"] == 3, 5, "the router to see the new target")
    models = listing(cstack)
    assert list(models) == ["think", "think-nonthinking", "queued", "embedder", "fake-whisper"]
    think = models["think"]
    assert (think["status"], think["replicas"], think["max_tokens"], think["context_length"]) == (
        "ready", {"ready": 1, "wanted": 3}, 100, 4096)
    assert think["capabilities"] == ["chat", "reasoning"] and think["base_model"] == "Thinker 1B"
    assert models["think-nonthinking"]["recommended_parameters"]["chat_template_kwargs"] == {"enable_thinking": False}
    queued = models["queued"]
    assert (queued["status"], queued["status_reason"], queued["replicas"]) == ("pending", "Priority", {"ready": 0, "wanted": 1})
    assert queued["expected_start"].endswith("Z")
    assert (models["embedder"]["status"], models["embedder"]["dimensions"]) == ("offline", 384)
    assert models["fake-whisper"]["status"] == "ready" and models["fake-whisper"]["base_model"] is None


def test_a_key_sees_only_its_public_names(cstack: CatalogStack) -> None:
    key = cstack.registry.add_key("bob", models=["think-nonthinking"])
    c = openai.OpenAI(base_url=cstack.router.base_url, api_key=key, max_retries=0)
    wait_for(lambda: requests.get(cstack.router.base_url + "/models",
                                  headers={"Authorization": f"Bearer {key}"}).status_code == 200,
             5, "the router to see the new key")
    assert [m.id for m in c.models.list()] == ["think-nonthinking"]
    c.chat.completions.create(model="think-nonthinking", messages=HELLO)
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(model="think", messages=HELLO)


def test_queued_model_is_503_with_retry_after_from_slurms_expected_start(cstack: CatalogStack) -> None:
    reply = chat(cstack, "queued")
    assert reply.status_code == 503
    assert 500 <= int(reply.headers["Retry-After"]) <= 600
    assert "queued in Slurm (reason: Priority)" in reply.json()["error"]["message"]


def test_loading_and_offline_models_are_503_saying_so(cstack: CatalogStack) -> None:
    reply = embed(cstack, "embedder")
    assert (reply.status_code, reply.headers["Retry-After"]) == (503, "7")
    assert "is offline" in reply.json()["error"]["message"]
    add_row(cstack.registry, "embedder", "starting", node="gpu01")
    wait_for(lambda: "is loading" in embed(cstack, "embedder").json()["error"]["message"], 5, "the loading state")


def test_reasoning_answer_with_empty_content_is_served_and_keeps_the_backend_healthy(cstack: CatalogStack) -> None:
    cstack.backend.config.chunks = 0  # the answer: content "" and reasoning_content only
    c = client(cstack)
    for _ in range(2):
        answer = c.chat.completions.create(model="think", messages=HELLO)
        assert answer.choices[0].message.content == ""
        extra = answer.choices[0].message.model_extra
        assert extra is not None and extra["reasoning_content"] == "thinking…"
    assert {m.id: m.model_dump()["status"] for m in c.models.list()}["think"] == "ready"


def test_text_transcription_is_charged_its_audio_seconds(cstack: CatalogStack) -> None:
    text = client(cstack).audio.transcriptions.create(model="fake-whisper", file=("a.wav", b"RIFF....", "audio/wav"),
                                                      response_format="text")
    assert text.strip() == "hello from the fake whisper"
    wait_for(lambda: cstack.accounting.usages, 5, "the answer's usage to be settled")
    assert cstack.accounting.usages[-1].audio_seconds == 3.0  # header 2.4 s, billed in whole seconds up


def test_metrics_need_the_admin_token(cstack: CatalogStack, boot: Callable[..., RouterHandle]) -> None:
    assert requests.get(cstack.router.url + "/metrics").status_code == 401
    wrong = requests.get(cstack.router.url + "/metrics", headers={"Authorization": f"Bearer {cstack.key}"})
    assert wrong.status_code == 401
    no_token = boot()  # no router.admin_token configured
    refused = requests.get(no_token.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    assert refused.status_code == 403 and "admin_token" in refused.json()["error"]["message"]


def test_metrics_count_requests_tokens_errors_and_backends_without_keys_or_text(cstack: CatalogStack) -> None:
    c = client(cstack)
    c.chat.completions.create(model="think-nonthinking", messages=[{"role": "user", "content": "secret words"}])
    list(c.chat.completions.create(model="think", messages=HELLO, stream=True))
    chat(cstack, "queued")
    chat(cstack, "no-such-model-4711")
    c.models.retrieve("think")  # one label for every name, so names cannot blow up the series
    text = requests.get(cstack.router.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert 'endpoint="model"' in text and 'endpoint="other"' not in text
    assert 'llm_router_requests_total{endpoint="chat",model="think-nonthinking",status="200"} 1.0' in text
    assert 'llm_router_requests_total{endpoint="chat",model="queued",status="503"} 1.0' in text
    assert 'llm_router_requests_total{endpoint="chat",model="unknown",status="404"} 1.0' in text
    assert 'llm_router_errors_total{status="503"} 1.0' in text
    assert 'llm_router_tokens_total{model="think",type="completion"} 5.0' in text
    assert 'llm_router_time_to_first_token_seconds_count{model="think"} 1.0' in text
    assert 'llm_router_request_duration_seconds_count{model="think-nonthinking"} 1.0' in text
    assert f'llm_router_backend_up{{backend="1",model="thinker",url="{cstack.backend.url}"}} 1.0' in text
    assert 'llm_router_backend_in_flight{backend="1"' in text
    for leaked in (cstack.key, "secret words", "no-such-model-4711", SECRET):
        assert leaked not in text


def test_quota_rejections_are_counted_by_limit(boot: Callable[..., RouterHandle], make_backend: Callable[..., FakeBackend],
                                               registry: Registry) -> None:
    from launcher.core.settings import KeyLimits

    backend = make_backend(models=["think"], secret=SECRET)
    registry.add_backend("thinker", backend.url)
    key = registry.add_key("carol", limits=KeyLimits(rpm=1))
    router = boot(admin_token=ADMIN)  # the quota module's own accounting
    c = openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0)
    c.chat.completions.create(model="think", messages=HELLO)
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="think", messages=HELLO)
    text = requests.get(router.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert 'llm_router_quota_rejections_total{limit="rpm"} 1.0' in text


def listing(s: CatalogStack) -> dict[str, dict[str, Any]]:
    return {m.id: m.model_dump() for m in client(s).models.list()}


def chat(s: CatalogStack, model: str) -> requests.Response:
    return requests.post(s.router.base_url + "/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                         headers={"Authorization": f"Bearer {s.key}"})


def embed(s: CatalogStack, model: str) -> requests.Response:
    return requests.post(s.router.base_url + "/embeddings", json={"model": model, "input": "hi"},
                         headers={"Authorization": f"Bearer {s.key}"})



@pytest.mark.parametrize(("args", "message"), [
    (["--catalog", "{tmp}/missing.toml"], "catalog file not found"),
    (["--set", 'log_format="xml"'], "log_format"),
])
def test_router_command_refuses_a_bad_catalog_or_log_format(registry: Registry, tmp_path: Path, args: list[str],
                                                            message: str) -> None:
    from click.testing import CliRunner

    from launcher.cli import main

    (tmp_path / "settings.toml").write_text("")
    argv = ["--db", registry.url, "router", "--no-accounting", *(a.format(tmp=tmp_path) for a in args)]
    result = CliRunner().invoke(main, argv, env={"LLM_LAUNCH_CONFIG": str(tmp_path / "settings.toml"),
                                                 "LLM_LAUNCH_CATALOG": None})
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output
