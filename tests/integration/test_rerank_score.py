"""Rerank and score through the real router: routed only to models that have the capability,
answered byte for byte, charged the backend's own token counts, held to the key's limits
(real router and accounting, a fake vLLM-speaking backend as a real HTTP server)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from sqlalchemy import select

from launcher.core.schema import UsageDaily
from launcher.core.settings import ClusterSettings, KeyLimits, RouterSettings, Settings
from tests.conftest import SECRET, TEST_ROUTER, Registry, RouterHandle
from tests.fake_backend import FakeBackend

# A reranker of its own kind, an embedding model that also reranks (as vLLM does for embedding
# models), and a plain embedding model that does not.
CATALOG = """
[models.reranker]
engine = "vllm"
kind = "rerank"
weights = "/models/reranker"

[models.embed-rerank]
engine = "vllm"
kind = "embeddings"
weights = "/models/embed-rerank"
capabilities = ["embeddings", "rerank"]

[models.embed-only]
engine = "vllm"
kind = "embeddings"
weights = "/models/embed-only"
"""
QUERY = "capital of France"
DOCUMENTS = ["Paris is the capital of France", "Reranking is fun", "France borders Spain"]
RERANK = {"query": QUERY, "documents": DOCUMENTS}
SCORE = {"text_1": QUERY, "text_2": DOCUMENTS}
PATHS = {"/v1/rerank": RERANK, "/rerank": RERANK, "/v2/rerank": RERANK, "/v1/score": SCORE, "/score": SCORE}


@dataclasses.dataclass
class Stack:
    router: RouterHandle
    registry: Registry
    backends: dict[str, FakeBackend]
    key: str  # no limits
    limited: str  # rpm 10

    def post(self, path: str, model: str, key: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(self.router.url + path, json={"model": model, **body},
                             headers={"Authorization": f"Bearer {key}"}, timeout=10)


@pytest.fixture
def stack(tmp_path: Path, registry: Registry, make_backend: Callable[..., FakeBackend],
          start_router: Callable[..., RouterHandle]) -> Iterator[Stack]:
    (tmp_path / "catalog.toml").write_text(CATALOG)
    backends = {name: make_backend(models=[name], secret=SECRET) for name in ("reranker", "embed-rerank", "embed-only")}
    registry.add_backend("reranker", backends["reranker"].url, kind="rerank")
    for name in ("embed-rerank", "embed-only"):
        registry.add_backend(name, backends[name].url, kind="embeddings")
    rs = dataclasses.replace(RouterSettings(), **TEST_ROUTER)
    settings = Settings(database=registry.url, router=rs, cluster=ClusterSettings(catalog=str(tmp_path / "catalog.toml")))
    key, limited = registry.add_key("rag"), registry.add_key("rag-rpm", limits=KeyLimits(rpm=10))
    yield Stack(start_router(settings), registry, backends, key, limited)


def daily(registry: Registry, model: str) -> dict[str, Any]:
    with registry.engine.connect() as conn:
        rows = conn.execute(select(UsageDaily).where(UsageDaily.model == model)).mappings().all()
    assert len(rows) == 1, rows
    return dict(rows[0])


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("model", ["reranker", "embed-rerank"])
def test_rerank_and_score_reach_capable_models_byte_for_byte(stack: Stack, path: str, model: str) -> None:
    key = stack.key
    answer = stack.post(path, model, key, PATHS[path])
    assert answer.status_code == 200, answer.text
    backend = stack.backends[model]
    (received,) = backend.received
    assert received.path == path  # the engine's own path, not rewritten
    assert answer.content == backend.sent[-1]
    if "rerank" in path:
        assert [r["index"] for r in answer.json()["results"]] == [0, 2, 1]  # most relevant first
    else:
        assert [d["index"] for d in answer.json()["data"]] == [0, 1, 2]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/score"])
def test_a_model_without_the_capability_is_refused_and_nothing_is_forwarded(stack: Stack, path: str) -> None:
    key = stack.key
    answer = stack.post(path, "embed-only", key, PATHS[path])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "wrong_endpoint_for_model" and error["param"] == "model"
    assert error["message"] == "model 'embed-only' is a embeddings model; it serves /v1/embeddings"
    assert not stack.backends["embed-only"].received
    # and a reranker is no embedding model
    refused = stack.post("/v1/embeddings", "reranker", key, {"input": "hi"})
    assert refused.status_code == 400 and "it serves /v1/rerank, /v1/score" in refused.json()["error"]["message"]


def test_no_key_no_rerank(stack: Stack) -> None:
    answer = requests.post(stack.router.url + "/v1/rerank", json={"model": "reranker", **RERANK}, timeout=10)
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "missing_api_key"
    assert not stack.backends["reranker"].received


def test_the_ledger_charges_the_backends_own_token_counts(stack: Stack, servers: Any) -> None:
    key = stack.key
    for path in PATHS:
        assert stack.post(path, "reranker", key, PATHS[path]).status_code == 200
    reported = []
    for body in stack.backends["reranker"].sent:
        usage = requests.models.complexjson.loads(body)["usage"]
        reported.append(usage.get("prompt_tokens", usage["total_tokens"]))
    servers.run(stack.router.runner.cleanup())  # a graceful stop writes what the ledger holds
    row = daily(stack.registry, "reranker")
    assert (row["requests"], row["estimated_requests"]) == (5, 0)
    assert row["prompt_tokens"] == sum(reported) > 0 and row["completion_tokens"] == 0


@pytest.mark.parametrize("usage", [{"total_tokens": -5}, {"total_tokens": "many"}, "lots", {"total_tokens": 10 ** 15}])
def test_hostile_usage_is_charged_as_the_reservation_not_as_reported(stack: Stack, servers: Any, usage: Any) -> None:
    key = stack.key
    stack.backends["reranker"].config.usage = usage
    assert stack.post("/v1/rerank", "reranker", key, RERANK).status_code == 200
    servers.run(stack.router.runner.cleanup())
    row = daily(stack.registry, "reranker")
    assert row["estimated_requests"] == 1
    assert 0 < row["prompt_tokens"] < 1000  # the body-size estimate, not what the backend claimed


async def test_rpm_holds_across_rerank_score_and_embeddings_on_one_key(stack: Stack) -> None:
    key = stack.limited
    mixes = [("/v1/rerank", "reranker", RERANK), ("/v1/score", "embed-rerank", SCORE),
             ("/v1/embeddings", "embed-only", {"input": "hi"})] * 10
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async def one(path: str, model: str, body: dict[str, Any]) -> int:
            async with session.post(stack.router.url + path, json={"model": model, **body}) as reply:
                await reply.read()
                return reply.status
        statuses = await asyncio.gather(*(one(*m) for m in mixes))
    assert sorted(statuses).count(200) == 10 and statuses.count(429) == 20
    assert sum(len(b.received) for b in stack.backends.values()) == 10
