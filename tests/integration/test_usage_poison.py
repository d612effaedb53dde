"""Usage a backend gets wrong, through the real router, fake backends and a SQLite registry.

Whatever a backend puts in `usage`, the client gets the backend's answer unchanged, the key is
never credited and never charged an absurd number, and the ledger keeps writing every other record.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

import openai
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionMessageParam
from sqlalchemy import select

from launcher.core.schema import UsageDaily, UsageRequest
from launcher.core.settings import KeyLimits
from tests.conftest import SECRET, LoopThread, Registry, RouterHandle
from tests.fake_backend import AUTO, FakeBackend
from tests.waiting import wait_for

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
TOKEN_BOUND = 10**9  # per request and count, as the docs promise (docs/reliability.md)
AUDIO_BOUND_S = 7 * 86400.0
NAN_AUDIO = {"type": "duration", "seconds": "nan"}
# Malformed usage objects that once broke the client's answer (a 500, or a stream without [DONE]).
MALFORMED = [
    "12", ["1"], 7, {"prompt_tokens": "12"}, {"prompt_tokens": [1], "completion_tokens": 2},
    {"prompt_tokens": -5, "completion_tokens": 3}, {"prompt_tokens": 1e308}, {"completion_tokens": 10**30},
    {"prompt_tokens": 3, "completion_tokens_details": {"reasoning_tokens": "many"}},
    {"prompt_tokens": 1.5}, {"prompt_tokens": True},
]


@dataclass
class Poisoned:
    """A bad chat and whisper backend used by mallory's key; a good one used by alice's."""

    router: RouterHandle
    registry: Registry
    bad: FakeBackend
    whisper: FakeBackend
    good: FakeBackend
    mallory: str
    alice: str


@pytest.fixture
def poisoned(registry: Registry, make_backend: Callable[..., FakeBackend],
             make_router: Callable[..., RouterHandle]) -> Poisoned:
    bad = make_backend(models=["bad-chat"], secret=SECRET)
    whisper = make_backend(models=["bad-whisper"], secret=SECRET)
    good = make_backend(models=["good-chat"], secret=SECRET)
    registry.add_backend("bad-chat", bad.url)
    registry.add_backend("bad-whisper", whisper.url, kind="transcription")
    registry.add_backend("good-chat", good.url)
    mallory = registry.add_key("mallory", limits=KeyLimits(daily_tokens=10_000_000))
    alice = registry.add_key("alice")
    router = make_router(per_request_usage=True, ledger_flush_s=0.05, stall_timeout_s=5)
    return Poisoned(router, registry, bad, whisper, good, mallory, alice)


def sdk(p: Poisoned, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=p.router.base_url, api_key=key, max_retries=0)


def me(p: Poisoned, key: str) -> dict[str, Any]:
    reply = requests.get(p.router.base_url + "/me", headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def request_rows(p: Poisoned, model: str) -> list[dict[str, Any]]:
    with p.registry.engine.connect() as conn:
        query = select(UsageRequest).where(UsageRequest.model == model).order_by(UsageRequest.id)
        return [dict(r) for r in conn.execute(query).mappings().all()]


def daily_row(p: Poisoned, model: str) -> dict[str, Any]:
    with p.registry.engine.connect() as conn:
        return dict(conn.execute(select(UsageDaily).where(UsageDaily.model == model)).mappings().one())


def alice_chats(p: Poisoned, times: int = 1) -> None:
    """Requests of another key, on a healthy backend; their records must reach the ledger."""
    before = len(request_rows(p, "good-chat"))
    for _ in range(times):
        sdk(p, p.alice).chat.completions.create(model="good-chat", messages=HI)
    wait_for(lambda: len(request_rows(p, "good-chat")) == before + times, timeout_s=5,
             what="alice's records in the ledger")


def post(p: Poisoned, key: str, doc: dict[str, Any]) -> requests.Response:
    return requests.post(p.router.base_url + "/chat/completions", json=doc, timeout=10,
                         headers={"Authorization": f"Bearer {key}"})


def stop(servers: LoopThread, p: Poisoned) -> None:
    servers.run(p.router.runner.cleanup())


def tokens(row: dict[str, Any]) -> int:
    return int(row["prompt_tokens"] + row["completion_tokens"])


# --- item 1: one bad value must not stop the ledger -------------------------------------------


def test_nan_audio_seconds_neither_stop_the_ledger_nor_break_the_keys_me(
    poisoned: Poisoned, servers: LoopThread,
) -> None:
    p = poisoned
    p.whisper.config.usage = NAN_AUDIO
    text = sdk(p, p.mallory).audio.transcriptions.create(model="bad-whisper", file=("a.wav", b"RIFF", "audio/wav"))
    assert text.text == "hello from the fake whisper"
    alice_chats(p)
    standing = me(p, p.mallory)["usage"]["today"]
    # charged the reservation: a 4-byte upload reserves the minimum, one second
    assert standing["audio_seconds"] == 1.0 and standing["requests"] == 1
    alice_chats(p)  # later records keep flowing
    stop(servers, p)
    row = daily_row(p, "bad-whisper")
    assert (row["requests"], row["estimated_requests"], row["audio_seconds"]) == (1, 1, 1.0)
    assert daily_row(p, "good-chat")["requests"] == 2


def test_a_streamed_prompt_of_10_to_the_30_is_charged_the_reservation_and_the_ledger_flows(
    poisoned: Poisoned, servers: LoopThread,
) -> None:
    p = poisoned
    p.bad.config.usage = {"prompt_tokens": 10**30, "completion_tokens": 5, "total_tokens": 10**30 + 5}
    chunks = list(sdk(p, p.mallory).chat.completions.create(model="bad-chat", messages=HI, stream=True,
                                                             max_tokens=100))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 tok4 "
    alice_chats(p)
    charged = me(p, p.mallory)["usage"]["today"]["total_tokens"]
    assert 100 < charged < 200  # the reservation: the prompt estimate plus max_tokens
    stop(servers, p)
    row = daily_row(p, "bad-chat")
    assert (row["requests"], row["estimated_requests"], tokens(row)) == (1, 1, charged)


def test_a_graceful_stop_writes_every_record_after_a_poisoned_one(
    poisoned: Poisoned, servers: LoopThread,
) -> None:
    p = poisoned
    p.bad.config.usage = {"prompt_tokens": 10**30, "completion_tokens": 1}
    p.whisper.config.usage = NAN_AUDIO
    sdk(p, p.mallory).chat.completions.create(model="bad-chat", messages=HI)
    sdk(p, p.mallory).audio.transcriptions.create(model="bad-whisper", file=("a.wav", b"RIFF", "audio/wav"))
    for _ in range(3):
        sdk(p, p.alice).chat.completions.create(model="good-chat", messages=HI)
    stop(servers, p)
    assert daily_row(p, "good-chat")["requests"] == len(request_rows(p, "good-chat")) == 3
    assert all(0 <= tokens(r) <= TOKEN_BOUND for r in request_rows(p, "bad-chat"))


def test_invalid_usage_is_logged_once_per_backend_naming_it(
    poisoned: Poisoned, caplog: pytest.LogCaptureFixture,
) -> None:
    p = poisoned
    p.bad.config.usage = {"prompt_tokens": "nan", "completion_tokens": 1}
    p.whisper.config.usage = NAN_AUDIO
    client = sdk(p, p.mallory)
    with caplog.at_level(logging.WARNING, logger="router.upstream.usage_check"):
        for _ in range(3):
            client.chat.completions.create(model="bad-chat", messages=HI)
            list(client.chat.completions.create(model="bad-chat", messages=HI, stream=True))
            client.audio.transcriptions.create(model="bad-whisper", file=("a.wav", b"RIFF", "audio/wav"))
    warned = [r.getMessage() for r in caplog.records if r.name == "router.upstream.usage_check"]
    assert len(warned) == 2
    chat, audio = sorted(warned, key=lambda m: p.whisper.url in m)
    assert f"backend {p.bad.url} (model bad-chat)" in chat and "prompt_tokens='nan'" in chat
    assert f"backend {p.whisper.url} (model bad-whisper)" in audio and "seconds='nan'" in audio


# --- item 2: negative usage is never credited -------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_negative_usage_gives_no_budget_back_and_never_reaches_the_ledger(
    poisoned: Poisoned, servers: LoopThread, stream: bool,
) -> None:
    p = poisoned
    client = sdk(p, p.mallory)
    client.chat.completions.create(model="good-chat", messages=HI)  # honest usage first
    honest = me(p, p.mallory)["usage"]["today"]["total_tokens"]
    p.bad.config.usage = {"prompt_tokens": -1000005, "completion_tokens": 5, "total_tokens": -1000000}
    if stream:
        list(client.chat.completions.create(model="bad-chat", messages=HI, stream=True, max_tokens=50))
    else:
        client.chat.completions.create(model="bad-chat", messages=HI, max_tokens=50)
    standing = me(p, p.mallory)
    today, daily = standing["usage"]["today"], standing["windows"]["daily_tokens"]
    assert today["total_tokens"] > honest and today["prompt_tokens"] >= 0
    assert daily["used"] == today["total_tokens"] and daily["remaining"] <= 10_000_000 - honest
    stop(servers, p)
    row = daily_row(p, "bad-chat")
    assert min(row[c] for c in ("prompt_tokens", "completion_tokens", "reasoning_tokens")) >= 0
    assert row["estimated_requests"] == 1 and tokens(row) == today["total_tokens"] - honest
    assert all(r["prompt_tokens"] >= 0 and r["completion_tokens"] >= 0 for r in request_rows(p, "bad-chat"))


# --- item 3: the client gets the backend's answer, whatever its usage ---------------------------


@pytest.mark.parametrize("usage", MALFORMED, ids=[json.dumps(u) for u in MALFORMED])
def test_malformed_usage_leaves_a_plain_answer_as_the_backend_sent_it(poisoned: Poisoned, usage: Any) -> None:
    p = poisoned
    p.bad.config.usage = usage
    reply = post(p, p.mallory, {"model": "bad-chat", "messages": HI})
    assert reply.status_code == 200, reply.text
    assert reply.content == p.bad.sent[-1]
    assert me(p, p.mallory)["usage"]["today"]["requests"] == 1


@pytest.mark.parametrize("usage", MALFORMED, ids=[json.dumps(u) for u in MALFORMED])
@pytest.mark.parametrize("asked", [True, False])
def test_malformed_usage_leaves_a_stream_whole(poisoned: Poisoned, usage: Any, asked: bool) -> None:
    p = poisoned
    p.bad.config.usage = usage
    doc: dict[str, Any] = {"model": "bad-chat", "messages": HI, "stream": True}
    if asked:
        doc["stream_options"] = {"include_usage": True}
    reply = post(p, p.mallory, doc)
    assert reply.status_code == 200
    assert reply.content.endswith(b"data: [DONE]\n\n") and b'"error"' not in reply.content
    sent = p.bad.sent[-1]
    assert reply.content == (sent if asked else sent.replace(p.bad.usage_events[-1], b""))


# --- the property: any usage value ------------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
    st.integers(min_value=0, max_value=2 * TOKEN_BOUND),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["nan", "inf", "-inf", "1", "", "1e308"]),
    st.lists(st.integers(), max_size=3),
)
TOKEN_USAGE = st.fixed_dictionaries({}, optional={
    "prompt_tokens": SCALARS, "completion_tokens": SCALARS, "total_tokens": SCALARS,
    "completion_tokens_details": st.one_of(SCALARS, st.fixed_dictionaries({"reasoning_tokens": SCALARS})),
})
AUDIO_USAGE = st.fixed_dictionaries({"type": st.just("duration"), "seconds": SCALARS})
ANY_USAGE = st.one_of(TOKEN_USAGE, SCALARS)


def honest_tokens(usage: Any) -> tuple[int, int, int] | None:
    """(prompt, completion, reasoning) when USAGE is within the promise, else None (the test's oracle)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("completion_tokens_details")
    if details is not None and not isinstance(details, dict):
        return None
    values = [usage.get("prompt_tokens"), usage.get("completion_tokens"), (details or {}).get("reasoning_tokens")]
    if any(v is not None and not _count(v) for v in values):
        return None
    return int(values[0] or 0), int(values[1] or 0), int(values[2] or 0)


def _count(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value == int(value) and 0 <= value <= TOKEN_BOUND


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(usage=ANY_USAGE, stream=st.booleans(), audio=AUDIO_USAGE)
def test_any_usage_value_keeps_the_answer_bounds_the_ledger_and_blocks_no_other_key(
    poisoned: Poisoned, usage: Any, stream: bool, audio: Any,
) -> None:
    p = poisoned
    p.bad.config.usage, p.whisper.config.usage = usage, audio
    chats, heard = len(request_rows(p, "bad-chat")), len(request_rows(p, "bad-whisper"))
    doc: dict[str, Any] = {"model": "bad-chat", "messages": HI, "max_tokens": 64}
    if stream:
        doc.update(stream=True, stream_options={"include_usage": True})
    reply = post(p, p.mallory, doc)
    assert (reply.status_code, reply.content) == (200, p.bad.sent[-1])
    text = sdk(p, p.mallory).audio.transcriptions.create(model="bad-whisper", file=("a.wav", b"RIFF", "audio/wav"))
    assert text.text == "hello from the fake whisper"
    alice_chats(p)
    wait_for(lambda: len(request_rows(p, "bad-chat")) > chats and len(request_rows(p, "bad-whisper")) > heard,
             timeout_s=5, what="mallory's records")
    row = request_rows(p, "bad-chat")[-1]
    assert all(0 <= row[c] <= TOKEN_BOUND for c in ("prompt_tokens", "completion_tokens", "reasoning_tokens"))
    expected = honest_tokens(usage)
    if expected is not None:
        assert (row["prompt_tokens"], row["completion_tokens"], row["reasoning_tokens"]) == expected
        assert row["estimated"] == 0
    elif usage is not None:  # null is missing usage, not a bad one: charged as before (zero, or the stream's estimate)
        assert row["estimated"] == 1
    assert 0.0 <= request_rows(p, "bad-whisper")[-1]["audio_seconds"] <= AUDIO_BOUND_S
    p.bad.config.usage = p.whisper.config.usage = AUTO
