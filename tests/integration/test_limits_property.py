"""The limits' promise (docs/reliability.md), as a property of the real router and the fake backend.

Hypothesis draws a key's limits, a backend's behaviour (honours max_tokens or not, answer length)
and bursts of concurrent requests: chat and completions with `n`, `best_of` or no `max_tokens`,
streams the client cuts mid-way, transcriptions of WAV and of other uploads. The accounting is the
real one, watched: every admission and settlement is logged in the order the router made them.

The promise checked: at every admission, what was used plus what is reserved fits every limit;
at the end, a limit is exceeded by at most what the requests in flight at its last admission used
beyond their allowance, which the test computes from the request alone (the documented rule:
a quarter of the body's bytes plus max_tokens, else the default, times the choices; an upload's
WAV length, else its size at 16 kbit/s); rpm and max_parallel are never exceeded; reservations
settle to zero; the ledger, once flushed, holds exactly what was charged.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import math
import time
import wave
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp
import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from launcher.core.settings import KeyLimits, RouterSettings, Settings
from router.accounting.ledger_db import load_totals
from router.accounting.metered import LimitsAccounting
from router.accounting.seam import Admission, RequestInfo, Usage
from tests.conftest import SECRET, LoopThread, Registry, RouterHandle
from tests.fake_backend import FakeBackend


@dataclass
class Event:
    """One admission (reserved) or settlement (used) of a request, in the router's order."""

    admit: bool
    request_id: str
    key_id: int
    tokens: float
    audio: float
    usage: Usage | None = None
    prompt_estimate: int = 0


class Watched(LimitsAccounting):
    """The real accounting, logging what it reserves and charges."""

    events: list[Event]

    def admit_now(self, info: RequestInfo, now: float) -> Admission:
        admission = super().admit_now(info, now)
        self.events.append(Event(True, info.request_id, info.key.id, admission.reserved_tokens,
                                 admission.reserved_audio, prompt_estimate=info.prompt_estimate))
        return admission

    def finish(self, admission: Admission, status: int, usage: Usage, backend: str | None, now: float) -> None:
        super().finish(admission, status, usage, backend, now)
        self.events.append(Event(False, admission.info.request_id, admission.info.key.id,
                                 usage.total_tokens, usage.audio_seconds, usage))


@dataclass(frozen=True)
class Ask:
    """One request of a burst."""

    kind: str  # "chat", "completions", "stream", "cut", "wav", "blob"
    max_tokens: int | None
    n: int
    best_of: int | None
    cut_after: int
    audio: float  # seconds of a WAV, or kilobytes of another upload


limit = st.none() | st.integers(20, 800)
limits_st = st.builds(KeyLimits, rpm=st.none() | st.integers(1, 30), tpm=limit, daily_tokens=limit,
                      monthly_tokens=limit, max_parallel=st.none() | st.integers(1, 6),
                      daily_audio_seconds=st.none() | st.integers(0, 20))
ask_st = st.builds(Ask, kind=st.sampled_from(["chat", "completions", "stream", "cut", "wav", "blob"]),
                   max_tokens=st.none() | st.integers(1, 60), n=st.integers(1, 4),
                   best_of=st.none() | st.integers(1, 5), cut_after=st.integers(1, 4),
                   audio=st.floats(0.2, 4.0))
backend_st = st.fixed_dictionaries({"honour_max_tokens": st.booleans(), "chunks": st.integers(1, 40),
                                    "latency_ms": st.integers(0, 120), "audio_seconds": st.floats(0.5, 6.0)})
bursts_st = st.lists(st.lists(ask_st, min_size=1, max_size=8), min_size=1, max_size=3)
HI = [{"role": "user", "content": "say something"}]
DEFAULT_RESERVE = 64  # the router's default_reserve_tokens in this test
AUDIO_KINDS = ("wav", "blob")
Sent = tuple[int, str, Ask]  # status, request id, what was asked


def test_no_mix_of_requests_overshoots_a_limit_beyond_the_stated_bound(
    servers: LoopThread, registry: Registry, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    chat = make_backend(models=["fake-chat"], secret=SECRET, chunk_delay_ms=3)
    whisper = make_backend(models=["fake-whisper"], secret=SECRET)
    registry.add_backend("fake-chat", chat.url)  # a name outside any catalog
    registry.add_backend("fake-whisper", whisper.url, kind="transcription")
    accounting = Watched.from_settings(Settings(database=registry.url, router=RouterSettings()), registry.engine)
    accounting.events = []
    router = make_router(accounting=accounting, stall_timeout_s=10, default_reserve_tokens=DEFAULT_RESERVE)
    names = (f"prop{i}" for i in itertools.count())

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(limits=limits_st, backend=backend_st, bursts=bursts_st)
    def check(limits: KeyLimits, backend: dict[str, Any], bursts: list[list[Ask]]) -> None:
        for fake in (chat, whisper):
            for field, value in backend.items():
                setattr(fake.config, field, value)
        key = registry.add_key(next(names), limits=limits)
        _wait(lambda: _me(router, key) is not None)
        sent = asyncio.run(_send(router, key, bursts))
        statuses = [status for status, _, _ in sent]
        assert set(statuses) <= {200, 429, 499}, statuses
        event(f"refused: {'some' if 429 in statuses else 'none'}")
        events = _settled(accounting, key, router)
        _check_limits(events, limits, {rid: ask for _, rid, ask in sent})
        _check_settled(router, key, events)
        _check_ledger(servers, accounting, registry, events)

    check()


async def _send(router: RouterHandle, key: str, bursts: list[list[Ask]]) -> list[Sent]:
    """Each burst at once, one after the other; what the client saw (499: it cut the stream)."""
    sent: list[Sent] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(router.base_url + "/", headers=headers) as session:
        for burst in bursts:
            sent += await asyncio.gather(*(_one(session, ask) for ask in burst))
    return sent


async def _one(session: aiohttp.ClientSession, ask: Ask) -> Sent:
    if ask.kind in AUDIO_KINDS:
        form = aiohttp.FormData()
        form.add_field("model", "fake-whisper")
        form.add_field("file", _upload(ask), filename="clip", content_type="application/octet-stream")
        async with session.post("audio/transcriptions", data=form) as reply:
            await reply.read()
            return reply.status, reply.headers["x-request-id"], ask
    doc: dict[str, Any] = {"model": "fake-chat", "n": ask.n}
    if ask.max_tokens is not None:
        doc["max_tokens"] = ask.max_tokens
    if ask.kind == "completions":
        doc["prompt"] = "once upon a time"
        if ask.best_of is not None:
            doc["best_of"] = max(ask.best_of, ask.n)
    else:
        doc["messages"] = HI
        doc["stream"] = ask.kind in ("stream", "cut")
    path = "completions" if ask.kind == "completions" else "chat/completions"
    async with session.post(path, json=doc) as reply:
        if ask.kind == "cut" and reply.status == 200:
            for _ in range(ask.cut_after):
                await reply.content.readline()
            reply.close()  # the client goes away mid-stream
            return 499, reply.headers["x-request-id"], ask
        await reply.read()
        return reply.status, reply.headers["x-request-id"], ask


def _upload(ask: Ask) -> bytes:
    """A WAV of ask.audio seconds, or bytes no header explains (ask.audio KiB of them)."""
    return _wav(ask.audio) if ask.kind == "wav" else b"\xff\xfb" * int(ask.audio * 512)


def _allowance(ask: Ask, prompt_estimate: int, limits: KeyLimits) -> tuple[float, float]:
    """(tokens, audio seconds) the documented rule lets ASK use, computed from the request alone."""
    if ask.kind in AUDIO_KINDS:
        seconds = int(ask.audio * 8000) / 8000 if ask.kind == "wav" else len(_upload(ask)) / 2000
        wanted = float(max(math.ceil(seconds), 1))
        cap = limits.daily_audio_seconds
        return 0.0, min(wanted, cap) if cap else wanted
    choices = max(ask.n, ask.best_of or 1) if ask.kind == "completions" else ask.n
    wanted = prompt_estimate + (ask.max_tokens or DEFAULT_RESERVE) * choices
    caps = [c for c in (limits.tpm, limits.daily_tokens, limits.monthly_tokens) if c is not None]
    return float(max(min([wanted, *caps]), 1)), 0.0


def _wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(b"\x80" * int(seconds * 8000))
    return out.getvalue()


def _settled(accounting: Watched, key: str, router: RouterHandle) -> list[Event]:
    """This key's events, once every request it was admitted has settled (cut streams settle late)."""
    me = _me(router, key)
    assert me is not None
    key_id: int = me["id"]

    def key_events() -> list[Event]:
        return [e for e in list(accounting.events) if e.key_id == key_id]

    _wait(lambda: _most_in_flight(key_events(), at_end=True) == 0)
    return key_events()


def _check_limits(events: list[Event], limits: KeyLimits, asked: dict[str, Ask]) -> None:
    admitted = [e for e in events if e.admit]
    if limits.rpm is not None:
        assert len(admitted) <= limits.rpm
    if limits.max_parallel is not None:
        assert _most_in_flight(events) <= limits.max_parallel
    allowed = {e.request_id: _allowance(asked[e.request_id], e.prompt_estimate, limits) for e in admitted}
    for cap in (limits.tpm, limits.daily_tokens, limits.monthly_tokens):
        if cap is not None:
            _check_one(events, cap, "tokens", {r: a[0] for r, a in allowed.items()})
    if limits.daily_audio_seconds is not None:
        audio = {e.request_id for e in admitted if asked[e.request_id].kind in AUDIO_KINDS}
        _check_one(events, limits.daily_audio_seconds, "audio", {r: a[1] for r, a in allowed.items()}, audio)


def _check_one(events: list[Event], cap: float, what: str, allowed: dict[str, float],
               governed: set[str] | None = None) -> None:
    """At each admission used + reserved fits CAP; at the end the total exceeds CAP by at most what
    the requests in flight at the last admission this limit governs used beyond their allowance."""
    reserved: dict[str, float] = {}
    used: dict[str, float] = {}
    in_flight: set[str] = set()
    last_in_flight: set[str] = set()
    for e in events:
        amount = getattr(e, what)
        if e.admit:
            reserved[e.request_id] = amount
            in_flight.add(e.request_id)
            if governed is None or e.request_id in governed:  # audio limits govern audio requests only
                assert sum(used.values()) + sum(reserved[r] for r in in_flight) <= cap + 1e-9
                last_in_flight = set(in_flight)
        else:
            used[e.request_id] = amount
            in_flight.discard(e.request_id)
    bound = sum(max(0.0, used[r] - allowed[r]) for r in last_in_flight)
    event(f"{what}: {'over the limit, within the bound' if sum(used.values()) > cap else 'within the limit'}")
    assert sum(used.values()) <= cap + bound + 1e-9, (what, cap, bound, used, reserved)


def _most_in_flight(events: list[Event], at_end: bool = False) -> int:
    """The most requests in flight at once in EVENTS (AT_END: how many still are at the end)."""
    level = most = 0
    for e in events:
        level += 1 if e.admit else -1
        most = max(most, level)
    return level if at_end else most


def _check_settled(router: RouterHandle, key: str, events: list[Event]) -> None:
    me = _me(router, key)
    assert me is not None
    charged = [e for e in events if not e.admit]
    windows = me["windows"]
    assert windows["requests_in_flight"]["used"] == 0
    assert windows["tokens_per_minute"]["used"] == sum(e.tokens for e in charged)
    assert windows["daily_audio_seconds"]["used"] == pytest.approx(sum(e.audio for e in charged))


def _check_ledger(servers: LoopThread, accounting: Watched, registry: Registry, events: list[Event]) -> None:
    servers.run(accounting.ledger.flush())
    charged = [e.usage for e in events if not e.admit and e.usage is not None]
    if not charged:
        return
    today, _ = load_totals(registry.engine, time.time())[events[0].key_id]
    assert today[:4] == [len(charged), sum(u.prompt_tokens for u in charged),
                         sum(u.completion_tokens for u in charged), sum(u.reasoning_tokens for u in charged)]
    assert today[4] == pytest.approx(sum(u.audio_seconds for u in charged))


def _me(router: RouterHandle, key: str) -> dict[str, Any] | None:
    reply = requests.get(router.base_url + "/me", headers={"Authorization": f"Bearer {key}"})
    found: dict[str, Any] | None = reply.json() if reply.status_code == 200 else None
    return found


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
