"""Rerank and score through the router on the demo's real vLLM (MiniLM, scored by cosine), checked
against the engine's own answer to the same request."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from launcher.core.db import open_engine, session_factory
from launcher.core.deployments import list_deployments
from tests.e2e.conftest import DemoStack

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Bananas are yellow.", "France is a country in Europe."]


def _embedder(stack: DemoStack) -> tuple[str, str]:
    """The ready MiniLM server's URL and the secret it requires (the router's, not a user's)."""
    engine = open_engine(f"sqlite:///{stack.state / 'registry.db'}")
    try:
        with session_factory(engine)() as session:
            row = next(r for r in list_deployments(session) if r.model == "minilm-embed" and r.state == "ready")
            return row.url or "", row.secret or ""
    finally:
        engine.dispose()


def _both(stack: DemoStack, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The router's answer for the public name, and the engine's for its served name."""
    via_router = requests.post(f"{stack.base_url.removesuffix('/v1')}{path}", timeout=120,
                               json={"model": "qwen3-reranker-8B", **body},
                               headers={"Authorization": f"Bearer {stack.key}"})
    assert via_router.status_code == 200, via_router.text
    url, secret = _embedder(stack)
    direct = requests.post(url + path, json={"model": "minilm-embed", **body}, timeout=120,
                           headers={"Authorization": f"Bearer {secret}"})
    assert direct.status_code == 200, direct.text
    return via_router.json(), direct.json()


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_orders_like_the_engine_and_puts_the_answer_first(demo_stack: DemoStack, path: str) -> None:
    ours, engine = _both(demo_stack, path, {"query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert [r["index"] for r in ours["results"]] == [r["index"] for r in engine["results"]]
    assert ours["results"][0]["index"] == 0 and len(ours["results"]) == 2
    for a, b in zip(ours["results"], engine["results"]):
        assert a["relevance_score"] == pytest.approx(b["relevance_score"], abs=1e-5)
    assert ours["usage"]["total_tokens"] == engine["usage"]["total_tokens"] > 0


@pytest.mark.parametrize("path", ["/v1/score", "/score"])
def test_score_matches_the_engine(demo_stack: DemoStack, path: str) -> None:
    ours, engine = _both(demo_stack, path, {"text_1": QUERY, "text_2": DOCUMENTS})
    assert [d["score"] for d in ours["data"]] == pytest.approx([d["score"] for d in engine["data"]], abs=1e-5)
    assert ours["data"][0]["score"] > ours["data"][1]["score"]
    assert ours["usage"]["prompt_tokens"] == engine["usage"]["prompt_tokens"] > 0
