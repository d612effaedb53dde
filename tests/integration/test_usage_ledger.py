"""The usage ledger through the real router, on SQLite and on PostgreSQL: exact backend counts,
streams, disconnects, report."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime
from typing import Any, Callable, Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
import requests
from click.testing import CliRunner
from sqlalchemy import select

from launcher.cli import main
from launcher.core.db import open_engine
from launcher.core.schema import UsageDaily, UsageRequest
from tests.conftest import LoopThread, Registry, RouterHandle, Stack

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    """This module's registry: once on SQLite, once on PostgreSQL."""
    engine = open_engine(db_url)
    yield Registry(db_url, engine)
    engine.dispose()


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.router.base_url, api_key=stack.key, max_retries=0)


def stop(servers: LoopThread, router: RouterHandle) -> None:
    """Shut the router down gracefully: the ledger writes what it still holds."""
    servers.run(router.runner.cleanup())


def daily_rows(registry: Registry) -> dict[str, dict[str, Any]]:
    with registry.engine.connect() as conn:
        rows = conn.execute(select(UsageDaily)).mappings().all()
    return {row["model"]: dict(row) for row in rows}


def backend_usage(stack: Stack) -> list[dict[str, Any]]:
    """The usage events the chat backends sent, parsed."""
    events = [e for b in stack.chat for e in b.usage_events]
    return [json.loads(e[len(b"data: "):])["usage"] for e in events]


def test_streams_with_and_without_client_usage_are_charged_the_backends_numbers(
    stack: Stack, servers: LoopThread,
) -> None:
    c = client(stack)
    plain = list(c.chat.completions.create(model="fake-chat", messages=HI, stream=True))
    asked = list(c.chat.completions.create(model="fake-chat", messages=HI, stream=True,
                                           stream_options={"include_usage": True}))
    assert all(chunk.usage is None for chunk in plain) and plain[-1].choices
    assert asked[-1].usage is not None and asked[-1].choices == []
    stop(servers, stack.router)
    reported = backend_usage(stack)
    assert len(reported) == 2  # the router asked for usage on both streams
    row = daily_rows(stack.registry)["fake-chat"]
    assert (row["requests"], row["estimated_requests"]) == (2, 0)
    assert row["prompt_tokens"] == sum(u["prompt_tokens"] for u in reported)
    assert row["completion_tokens"] == sum(u["completion_tokens"] for u in reported) == 10
    assert row["reasoning_tokens"] == 6
    assert row["account"] is None and row["key_name"] == "alice"


def test_a_client_that_disconnects_mid_stream_is_charged_what_was_streamed(
    registry: Registry, make_backend: Callable[..., Any], make_router: Callable[..., RouterHandle],
    servers: LoopThread,
) -> None:
    backend = make_backend(models=["fake-chat"], secret="s", chunks=200, chunk_delay_ms=20)
    registry.add_backend("fake-chat", backend.url, secret="s")
    key = registry.add_key("carol")
    router = make_router(per_request_usage=True, stall_timeout_s=5)
    c = openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0)
    stream = c.chat.completions.create(model="fake-chat", messages=HI, stream=True)
    seen = [chunk for _, chunk in zip(range(3), stream)]
    stream.close()
    assert len(seen) == 3
    _wait_for(lambda: backend.cancelled == 1)  # the GPU stops generating
    _wait_for(lambda: _me(router, key)["usage"]["today"]["requests"] == 1)
    stop(servers, router)
    streamed = backend.sent[0].count(b"\n\n")
    row = daily_rows(registry)["fake-chat"]
    assert (row["requests"], row["estimated_requests"]) == (1, 1)
    assert 3 <= row["completion_tokens"] <= streamed < 200
    assert row["prompt_tokens"] > 0  # estimated from the request body
    with registry.engine.connect() as conn:
        request = conn.execute(select(UsageRequest)).mappings().one()
    assert (request["status"], request["estimated"]) == (499, 1)
    assert request["completion_tokens"] == row["completion_tokens"]
    assert request["backend"] == backend.url


def test_usage_report_totals_equal_what_the_backends_reported_in_every_format(
    stack: Stack, servers: LoopThread,
) -> None:
    c = client(stack)
    answers = [c.chat.completions.create(model="fake-chat", messages=HI) for _ in range(3)]
    list(c.chat.completions.create(model="fake-chat", messages=HI, stream=True))
    vectors = c.embeddings.create(model="fake-embed", input=["a b c", "d e"])
    c.audio.transcriptions.create(model="fake-whisper", file=("a.wav", b"RIFFfake", "audio/wav"))
    stop(servers, stack.router)
    streamed = backend_usage(stack)[0]
    prompt = sum(a.usage.prompt_tokens for a in answers if a.usage) + streamed["prompt_tokens"] \
        + vectors.usage.prompt_tokens
    completion = sum(a.usage.completion_tokens for a in answers if a.usage) + streamed["completion_tokens"]
    expected = {"requests": 6, "prompt_tokens": prompt, "completion_tokens": completion,
                "reasoning_tokens": 4 * 3, "audio_seconds": 3.0}
    for fmt in ("json", "csv", "table"):
        assert _report_totals(stack.registry, fmt) == expected, fmt


def _report_totals(registry: Registry, fmt: str) -> dict[str, float]:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    result = CliRunner().invoke(main, ["--db", registry.url, "usage", "--by", "model", "--since",
                                       today, "--until", today, "--format", fmt])
    assert result.exit_code == 0, result.output
    names = ("requests", "prompt_tokens", "completion_tokens", "reasoning_tokens", "audio_seconds")
    if fmt == "table":
        lines = result.output.splitlines()
        header, total = lines[1].lower().split(), lines[-1].split()
        assert total[0] == "TOTAL"
        values = dict(zip(header[-len(total) + 1:], total[1:]))
        return {n: float(values[n]) for n in names}
    rows = json.loads(result.output) if fmt == "json" else list(csv.DictReader(io.StringIO(result.output)))
    return {n: sum(float(r[n]) for r in rows) for n in names}


def _me(router: RouterHandle, key: str) -> dict[str, Any]:
    reply = requests.get(router.base_url + "/me", headers={"Authorization": f"Bearer {key}"})
    result: dict[str, Any] = reply.json()
    return result


def _wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
