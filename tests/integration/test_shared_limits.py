"""Shared mode: three routers on one PostgreSQL registry and one Redis enforce one set of limits.

A burst spread over the routers admits exactly what one router would; reservations of a router
killed with SIGKILL return within the lease; budgets survive a Redis that restarts empty
(seeded once from the ledger, not once per router); Redis down fails closed by default.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import requests
from sqlalchemy import text

from launcher.core.db import open_engine
from launcher.core.settings import KeyLimits
from router.accounting.ledger import Ledger
from router.accounting.ledger_db import load_totals
from router.accounting.resp import RespClient
from router.accounting.seam import QuotaExceeded
from router.accounting.shared import LEASE_S, SharedAccounting
from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.integration.test_reservations import wav
from tests.unit.test_quota import request

pytestmark = pytest.mark.timeout(180)

CHAT: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.fixture
def registry(pg_url: str) -> Iterator[Registry]:
    engine = open_engine(pg_url)
    yield Registry(pg_url, engine)
    engine.dispose()


def routers(make_router: Callable[..., RouterHandle], redis: str, count: int = 3, **overrides: Any) -> list[RouterHandle]:
    # the slow backends answer after seconds; a burst of connections to them takes a moment
    settings = {"stall_timeout_s": 300.0, "connect_timeout_s": 10.0, **overrides}
    return [make_router(redis_url=redis, **settings) for _ in range(count)]


async def _burst(urls: list[str], key: str, count: int, send: Callable[..., Any]) -> dict[int, int]:
    """COUNT requests at once, spread round-robin over URLS: how many got each status."""
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     headers={"Authorization": f"Bearer {key}"}) as session:
        async def one(i: int) -> None:
            try:
                status = await send(session, urls[i % len(urls)])
            except aiohttp.ClientError:
                status = 0  # a router that was killed
            statuses[status] = statuses.get(status, 0) + 1
        await asyncio.gather(*(one(i) for i in range(count)))
    return statuses


async def _chat(session: aiohttp.ClientSession, url: str) -> int:
    async with session.post(url + "/v1/chat/completions", json=CHAT) as reply:
        await reply.read()
        return reply.status


def burst(urls: list[str], key: str, count: int, send: Callable[..., Any] = _chat) -> dict[int, int]:
    return asyncio.run(_burst(urls, key, count, send))


def me(url: str, key: str) -> dict[str, Any]:
    reply = requests.get(url + "/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


# Each chat request reserves its prompt estimate (body bytes / 4, as aiohttp sends it) + max_tokens.
RESERVE = len(json.dumps(CHAT)) // 4 + CHAT["max_tokens"]


@pytest.mark.parametrize(("limits", "sent", "admitted"), [
    (KeyLimits(rpm=100), 1000, 100),
    (KeyLimits(tpm=200 * RESERVE), 1000, 200),
    (KeyLimits(max_parallel=8), 200, 8),
    (KeyLimits(daily_tokens=12 * RESERVE), 200, 12),
    (KeyLimits(monthly_tokens=9 * RESERVE), 200, 9),
], ids=["rpm", "tpm", "max_parallel", "daily_tokens", "monthly_tokens"])
def test_a_burst_over_three_routers_admits_exactly_the_limit(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle], limits: KeyLimits, sent: int, admitted: int,
) -> None:
    # The backend answers after the burst has been decided, so no reservation settles during it.
    backend = make_backend(models=["fake-chat"], secret=SECRET, latency_ms=10_000)
    registry.add_backend("fake-chat", backend.url)
    key = registry.add_key("burst", limits=limits)
    three = routers(make_router, redis_url)
    statuses = burst([r.url for r in three], key, sent)
    assert statuses == {200: admitted, 429: sent - admitted}


def test_audio_seconds_over_three_routers(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    backend = make_backend(models=["fake-whisper"], secret=SECRET, latency_ms=3000)
    registry.add_backend("fake-whisper", backend.url, kind="transcription")
    key = registry.add_key("ears", limits=KeyLimits(daily_audio_seconds=12))
    clip = wav(3.0)

    async def transcribe(session: aiohttp.ClientSession, url: str) -> int:
        form = aiohttp.FormData()
        form.add_field("model", "fake-whisper")
        form.add_field("file", clip, filename="clip.wav", content_type="audio/wav")
        async with session.post(url + "/v1/audio/transcriptions", data=form) as reply:
            await reply.read()
            return reply.status

    three = routers(make_router, redis_url)
    assert burst([r.url for r in three], key, 40, transcribe) == {200: 4, 429: 36}
    used = me(three[0].url, key)["windows"]["daily_audio_seconds"]
    assert used["used"] == 12 and used["remaining"] == 0


def test_streams_cut_mid_way_settle_and_the_budget_stays_exact(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    backend = make_backend(models=["fake-chat"], secret=SECRET, chunks=20, chunk_delay_ms=20)
    registry.add_backend("fake-chat", backend.url)
    key = registry.add_key("cut", limits=KeyLimits(max_parallel=4, daily_tokens=100_000))
    three = routers(make_router, redis_url)

    async def cut(session: aiohttp.ClientSession, url: str) -> int:
        async with session.post(url + "/v1/chat/completions", json={**CHAT, "stream": True}) as reply:
            if reply.status == 200:
                await reply.content.readany()  # the first chunk, then the client goes away
            return reply.status

    first = burst([r.url for r in three], key, 30, cut)
    assert first[200] >= 4 and first[200] + first.get(429, 0) == 30
    deadline = time.monotonic() + 10
    while (view := me(three[1].url, key)["windows"])["requests_in_flight"]["used"] != 0:
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
    # Every cut stream was settled: no reservation is left, and Redis counted what the ledger has.
    counted = me(three[2].url, key)["usage"]["today"]
    assert view["daily_tokens"]["used"] == counted["total_tokens"] > 0
    assert counted["requests"] == first[200]
    time.sleep(1.5)  # the routers' ledger flush (ledger_flush_s 1 s)
    today, _ = load_totals(registry.engine, time.time())[key_id(registry, "cut")]
    assert (today[0], today[1] + today[2]) == (first[200], counted["total_tokens"])
    assert burst([r.url for r in three], key, 4) == {200: 4}


def key_id(registry: Registry, name: str) -> int:
    with registry.engine.connect() as conn:
        return int(conn.execute(text("SELECT id FROM api_keys WHERE name = :n"), {"n": name}).scalar_one())


def shared_router_process(registry: Registry, redis: str, tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    (tmp_path / "none.toml").write_text("")
    env = {**os.environ, "LLM_LAUNCH_CONFIG": str(tmp_path / "none.toml")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from launcher.cli import main; main()", "--db", registry.url, "router",
         "--host", "127.0.0.1", "--port", "0", "--set", f"redis_url={redis}", "--set", "request_log=false"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "listening on" in line:
            return proc, line.split("listening on ")[1].split()[0].removesuffix("/v1")
    raise AssertionError("the router did not start")


def test_a_killed_routers_reservations_return_within_the_lease(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle], tmp_path: Path,
) -> None:
    backend = make_backend(models=["fake-chat"], secret=SECRET, latency_ms=120_000)
    registry.add_backend("fake-chat", backend.url)
    key = registry.add_key("held", limits=KeyLimits(max_parallel=3))
    survivor = routers(make_router, redis_url, count=1)[0]
    proc, url = shared_router_process(registry, redis_url, tmp_path)
    try:
        session = requests.Session()
        for _ in range(3):  # three requests held by the process's backend call
            threading_post(session, url, key)
        deadline = time.monotonic() + 10
        while me(survivor.url, key)["windows"]["requests_in_flight"]["used"] != 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert burst([survivor.url], key, 1) == {429: 1}
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while me(survivor.url, key)["windows"]["requests_in_flight"]["used"] != 0:
            assert time.monotonic() - killed < LEASE_S + 2, "the dead router's reservations never returned"
            time.sleep(0.2)
        returned = time.monotonic() - killed
        print(f"\nin-flight count back to 0 {returned:.1f} s after SIGKILL (lease {LEASE_S:.0f} s)")
        backend.config.latency_ms = 0
        assert burst([survivor.url], key, 3) == {200: 3}
    finally:
        proc.kill()
        proc.wait(10)


def threading_post(session: requests.Session, url: str, key: str) -> None:
    """Send a chat request that nobody waits for (its router is about to be killed)."""
    threading.Thread(target=lambda: _ignore(session, url, key), daemon=True).start()


def _ignore(session: requests.Session, url: str, key: str) -> None:
    try:
        session.post(url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}, timeout=200)
    except requests.RequestException:
        pass


async def test_routers_with_skewed_clocks_never_admit_past_the_limit(pg_url: str, redis_url: str) -> None:
    """Two limiters whose clocks differ by SKEW: a window's edges move by the skew, its count never passes rpm."""
    skew, rpm = 0.7, 10
    engine = open_engine(pg_url)
    a, b = (SharedAccounting(Ledger(engine), RespClient(redis_url)) for _ in range(2))
    info = request(KeyLimits(rpm=rpm))
    start, admitted = time.time(), []
    for i in range(240):  # two minutes of attempts every half second, alternating routers
        at = start + i * 0.5
        limiter, clock = (a, at) if i % 2 else (b, at + skew)
        try:
            await limiter.admit(info, clock)
            admitted.append(at)
        except QuotaExceeded:
            pass
    assert len(admitted) >= 2 * rpm  # both minutes were used
    for first in admitted:  # in true time, any span of a minute less the skew holds at most rpm
        assert sum(first <= t < first + 60 - skew for t in admitted) <= rpm
    engine.dispose()


def test_redis_holds_no_key_no_secret_and_no_text(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    key = registry.add_key("private", limits=KeyLimits(rpm=100, daily_tokens=10_000))
    three = routers(make_router, redis_url)
    assert burst([r.url for r in three], key, 6) == {200: 6}
    me(three[0].url, key)
    client = redis.Redis.from_url(redis_url)
    stored = b""
    for name in client.scan_iter():
        kind = client.type(name)
        values = (client.hgetall(name) if kind == b"hash" else dict(client.zrange(name, 0, -1, withscores=True)))
        stored += name + b"".join(k + str(v).encode() for k, v in values.items())
    assert stored and key.encode() not in stored and key[:12].encode() not in stored
    assert SECRET.encode() not in stored and b"hi" not in stored and b"private" not in stored
