"""Model status, the 503 when no replica is ready, /v1/models entries, probes, audio usage, logs, metrics labels."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import cast

import orjson
import pytest

from launcher.core.catalog import catalog_from_dict
from launcher.core.deployments import DeploymentRecord
from router.accounting.seam import QuotaExceeded, Usage
from router.upstream.health import DOWN, HealthState, probe_paths, probe_verdict
from router.api.metrics import Metrics
from router.api.model_list import model_entry
from router.api.model_status import LOADING, OFFLINE, PENDING, READY, ModelStatus, model_status, retry_after, unavailable
from router.request_log import JsonRequestLog, RequestContext
from router.state import RouterState
from router.upstream.names import Names
from router.upstream.snapshot import Backend
from router.upstream.usage import usage_from_audio_header

NOW = datetime(2025, 3, 1, 12, 0, 0)  # registry times are naive UTC
T = NOW.replace(tzinfo=UTC).timestamp()


def backend(state: str, *, expected: datetime | None = None, reason: str | None = None,
            down: str = "") -> Backend:
    record = DeploymentRecord(
        id=1, model="m", kind="chat", engine="vllm", state=state, reason=reason, job_id="7", node=None,
        url="http://n:1" if state == "ready" else None, secret=None, expected_start=expected, end_time=None,
        submitted_at=NOW, ready_at=NOW if state == "ready" else None, predecessor_id=None, updated_at=NOW,
    )
    b = Backend(record)
    if down:
        b.set_health(HealthState(DOWN, down, T))
    return b


@pytest.mark.parametrize(("states", "status"), [
    (["ready"], READY),
    (["ready", "starting"], READY),
    (["starting", "pending"], LOADING),
    (["pending"], PENDING),
    (["draining"], OFFLINE),
    ([], OFFLINE),
])
def test_status_of_a_model(states: list[str], status: str) -> None:
    assert model_status([backend(s) for s in states]).status == status


def test_pending_takes_the_earliest_expected_start_and_slurms_reason() -> None:
    later, sooner = NOW.replace(hour=14), NOW.replace(hour=13)
    status = model_status([backend("pending", expected=later, reason="Priority"), backend("pending", expected=sooner)])
    assert status == ModelStatus(PENDING, 0, T + 3600, "Priority")


def test_a_replica_failing_its_probes_is_offline_with_the_reason() -> None:
    status = model_status([backend("ready", down="/health answered 500")])
    assert (status.status, status.reason) == (OFFLINE, "/health answered 500")


@pytest.mark.parametrize(("status", "now", "seconds"), [
    (ModelStatus(PENDING, 0, T + 600), T, 600),
    (ModelStatus(PENDING, 0, T + 0.2), T, 1),
    (ModelStatus(PENDING, 0, T - 60), T, 7),  # Slurm's estimate already passed: the default
    (ModelStatus(PENDING), T, 7),  # no estimate yet
    (ModelStatus(LOADING), T, 7),
    (ModelStatus(OFFLINE), T, 7),
])
def test_retry_after(status: ModelStatus, now: float, seconds: int) -> None:
    assert retry_after(status, now, 7) == seconds


@pytest.mark.parametrize(("status", "code", "words", "retry"), [
    (ModelStatus(LOADING), "model_loading", ["is loading", "job is running"], "7"),
    (ModelStatus(PENDING, 0, T + 600, "Priority"), "model_queued",
     ["queued in Slurm", "Priority", "2025-03-01T12:10:00Z", "10 min"], "600"),
    (ModelStatus(PENDING), "model_queued", ["queued in Slurm", "no expected start"], "7"),
    (ModelStatus(OFFLINE), "model_offline", ["is offline", "no replica is running or queued"], "7"),
])
def test_503_says_loading_queued_or_offline(status: ModelStatus, code: str, words: list[str], retry: str) -> None:
    err = unavailable("qwen", status, T, 7)
    assert (err.status, err.code, err.headers) == (503, code, {"Retry-After": retry})
    for word in words:
        assert word in err.message


CATALOG = {"models": {"emb": {
    "engine": "vllm", "kind": "embeddings", "weights": "/w", "dimensions": 384, "context_length": 256,
    "capabilities": ["embeddings"], "base_model": "MiniLM", "best_for": "search",
    "names": {"emb-small": {"defaults": {"encoding_format": "float"}}},
}}}


def test_models_entry_has_openai_fields_status_replicas_and_catalog_fields() -> None:
    entry = catalog_from_dict(CATALOG, "c.toml", {}).entries["emb"]
    pending = backend("pending", expected=NOW.replace(minute=30), reason="Resources")
    got = model_entry("emb-small", entry, [pending], 2, entry.names[0].defaults)
    assert got == {
        "id": "emb-small", "object": "model", "created": int(T), "owned_by": "llm-launch",
        "status": "pending", "expected_start": "2025-03-01T12:30:00Z", "status_reason": "Resources",
        "replicas": {"ready": 0, "wanted": 2}, "context_length": 256, "max_tokens": None,
        "capabilities": ["embeddings"], "dimensions": 384, "base_model": "MiniLM", "best_for": "search",
        "recommended_parameters": {"encoding_format": "float"}, "maintenance": None,
    }


def test_models_entry_of_a_model_outside_the_catalog() -> None:
    got = model_entry("manual", None, [backend("ready")], 1)
    assert (got["status"], got["replicas"], got["capabilities"], got["expected_start"]) == (
        "ready", {"ready": 1, "wanted": 1}, [], None)


@pytest.mark.parametrize(("kind", "engine", "paths"), [
    ("transcription", "whisper", ("/health",)),
    ("chat", "vllm", ("/health", "/v1/models")),
    ("embeddings", "vllm", ("/health", "/v1/models")),
    ("chat", "external", ("/v1/models",)),
])
def test_probes_never_generate(kind: str, engine: str, paths: tuple[str, ...]) -> None:
    assert probe_paths(kind, engine) == paths  # no chat completion: no GPU time, no content to judge


@pytest.mark.parametrize(("path", "status", "body", "verdict"), [
    ("/health", 200, b"", ""),
    ("/health", 503, b"", "/health answered 503"),
    ("/v1/models", 200, b'{"data":[{"id":"qwen3.5-122b"},{"id":"qwen3.5-122b-nonthinking"}]}', ""),
    ("/v1/models", 200, b'{"data":[{"id":"other"}]}', "/v1/models does not list 'qwen3.5-122b'"),
    ("/v1/models", 200, b"<html>", "/v1/models answered something that is not a model list"),
])
def test_probe_verdict_checks_the_served_name(path: str, status: int, body: bytes, verdict: str) -> None:
    assert probe_verdict(path, status, body, "qwen3.5-122b") == verdict


@pytest.mark.parametrize(("header", "seconds"), [("2.4", 3.0), ("3", 3.0), ("0", 0.0), (None, None),
                                                 ("", None), ("soon", "rejected"), ("-1", "rejected"),
                                                 ("nan", "rejected"), ("1e9", "rejected")])
def test_audio_seconds_header_is_billed_in_whole_seconds(header: str | None, seconds: float | str | None) -> None:
    usage = usage_from_audio_header(header)
    if seconds == "rejected":  # a header that is there but no length: charged as the reservation
        assert usage is not None and usage.rejected and usage.audio_seconds == 0.0
    else:
        assert (usage.audio_seconds if usage else None) == seconds


@pytest.mark.parametrize("label", ["tpm", "rpm", "daily_tokens", "monthly_tokens", "daily_audio_seconds",
                                   "max_parallel", "other"])
def test_quota_rejections_are_labelled_by_the_refusing_limit(label: str) -> None:
    snapshot = SimpleNamespace(backends={}, pools={})
    state = cast(RouterState, SimpleNamespace(view=SimpleNamespace(snapshot=snapshot), names=Names()))
    metrics = Metrics(state)
    ctx = RequestContext("req-1", 0.0)
    ctx.refusal = QuotaExceeded("whatever the message says", 1, {}, limit=label)
    metrics.observe("POST", "/v1/chat/completions", 429, ctx)
    assert metrics.registry.get_sample_value("llm_router_quota_rejections_total", {"limit": label}) == 1.0


def test_json_log_line_has_the_fields_and_no_key_or_text() -> None:
    out = io.StringIO()
    log = JsonRequestLog(out)
    ctx = RequestContext("req-1", 0.0)
    ctx.model, ctx.key_id, ctx.backend, ctx.ttft_s = "qwen", 3, "http://gpu1:20001", 0.25
    ctx.usage = replace(Usage(), prompt_tokens=11, completion_tokens=5)
    log.write("POST", "/v1/chat/completions", 200, ctx)
    log.flush()
    line = orjson.loads(out.getvalue())
    assert set(line) == {"ts", "request_id", "method", "path", "status", "model", "latency_ms", "ttft_ms",
                         "key_id", "backend", "prompt_tokens", "completion_tokens"}
    assert (line["request_id"], line["status"], line["key_id"], line["ttft_ms"]) == ("req-1", 200, 3, 250.0)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (11, 5)
    assert line["ts"].endswith("Z") and "T" in line["ts"]


def test_offline_model_that_is_wanted_says_a_replacement_is_coming() -> None:
    from router.api.model_status import OFFLINE, ModelStatus, unavailable

    err = unavailable("m", ModelStatus(OFFLINE), now=0.0, default_s=7, wanted=1)
    assert err.status == 503 and err.code == "model_restarting"
    assert "starting a replacement" in err.message and err.headers["Retry-After"] == "7"
    assert unavailable("m", ModelStatus(OFFLINE), now=0.0, default_s=7).code == "model_offline"


def test_a_pending_replacement_is_named_in_the_503_and_in_the_models_list() -> None:
    from dataclasses import replace as copy

    queued = Backend(copy(backend("pending", expected=NOW.replace(minute=30), reason="Resources").record,
                          id=2, predecessor_id=1))
    draining = Backend(copy(backend("ready").record, state="draining"))
    status = model_status([draining, queued])
    assert status.replacement == "replacement queued in Slurm (reason Resources, expected start 2025-03-01T12:30:00Z)"
    err = unavailable("qwen", status, T, 7)
    assert err.status == 503 and err.code == "model_queued"
    assert "its job reached the end of its time limit; replacement queued in Slurm (reason Resources" in err.message
    # while the old replica still serves, /v1/models already says a replacement waits
    serving = model_status([backend("ready"), queued])
    assert serving.status == "ready" and serving.replacement.startswith("replacement queued in Slurm")
    assert model_entry("qwen", None, [backend("ready"), queued], 1)["status_reason"] == serving.replacement
