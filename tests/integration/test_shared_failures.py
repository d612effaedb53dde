"""Shared mode when Redis goes away: fail closed (the default) or open, and budgets after a restart.

Redis here is the test's own, without persistence, so a restart comes back empty: every key's
budgets must then be seeded from the ledger once, whichever router asks first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from launcher.core.schema import UsageDaily
from launcher.core.settings import KeyLimits
from router.accounting.shared import LEASE_S
from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.integration.test_shared_limits import (  # noqa: F401 (registry: a fixture)
    CHAT, RESERVE, burst, me, registry, routers, shared_router_process)
from tests.shared_services import PrivateRedis
from tests.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def chat_backend(registry: Registry, make_backend: Callable[..., FakeBackend]) -> FakeBackend:
    """A chat backend registered for fake-chat."""
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    return backend


def chat(router: RouterHandle, key: str) -> requests.Response:
    return requests.post(router.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"},
                         timeout=10)


@pytest.mark.usefixtures("chat_backend")
def test_redis_down_fails_closed_then_budgets_come_back_from_the_ledger_once(
    registry: Registry, private_redis: PrivateRedis, make_router: Callable[..., RouterHandle],
) -> None:
    key = registry.add_key("budget", limits=KeyLimits(daily_tokens=1_000_000))
    three = routers(make_router, private_redis.url)
    assert burst([r.url for r in three], key, 30) == {200: 30}
    used = me(three[0].url, key)["usage"]["today"]
    time.sleep(1.5)  # ledger_flush_s: every router's batch is in the ledger

    private_redis.kill()
    refused = chat(three[1], key)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "limiter_unavailable" and int(refused.headers["Retry-After"]) >= 1
    assert requests.get(three[2].url + "/v1/me", headers={"Authorization": f"Bearer {key}"},
                        timeout=10).status_code == 503

    private_redis.start()  # empty
    # Three routers at once ask for the same key: it is seeded once, not once per router.
    assert burst([r.url for r in three], key, 3) == {200: 3}
    after = me(three[2].url, key)["usage"]["today"]
    assert after["requests"] == used["requests"] + 3
    assert after["total_tokens"] > used["total_tokens"]
    assert after["total_tokens"] < 2 * used["total_tokens"]
    wait_for(lambda: ledger_requests(registry, "budget") == 33, 10, "33 requests in the ledger, each once")


@pytest.mark.usefixtures("chat_backend")
def test_redis_down_fails_open_on_each_routers_share_and_serves_under_load(
    registry: Registry, private_redis: PrivateRedis, make_router: Callable[..., RouterHandle],
) -> None:
    key = registry.add_key("open", limits=KeyLimits(rpm=30))
    load = registry.add_key("load")
    three = routers(make_router, private_redis.url, redis_fail_open=True)
    time.sleep(LEASE_S / 3 + 1)  # every router has renewed once and counted three live routers
    assert burst([r.url for r in three], load, 30) == {200: 30}

    private_redis.kill()
    # Each router admits its share: rpm 30 over three routers is 10 each, 30 in all.
    assert burst([r.url for r in three], key, 90) == {200: 30, 429: 60}
    assert burst([r.url for r in three], load, 60) == {200: 60}  # no request fails meanwhile

    private_redis.start()
    assert burst([r.url for r in three], load, 30) == {200: 30}
    # Back on Redis: a fresh window there, shared again.
    assert burst([r.url for r in three], key, 90) == {200: 30, 429: 60}
    # Every answered request is in the ledger once, whether admitted by Redis or by a share
    wait_for(lambda: ledger_requests(registry, "load") == 120 and ledger_requests(registry, "open") == 60, 10,
             "the ledger to hold each answered request once")


def ledger_requests(registry: Registry, key_name: str) -> int:
    """Requests KEY_NAME has in the shared ledger (written by every router)."""
    with registry.engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(UsageDaily.requests), 0))
                                .where(UsageDaily.key_name == key_name)).scalar_one())


@pytest.mark.parametrize(("limits", "sent", "allowed"), [
    (KeyLimits(rpm=100), 600, 100),
    (KeyLimits(tpm=100 * RESERVE), 600, 100),
], ids=["rpm", "tpm"])
def test_a_router_killed_mid_burst_lets_no_request_past_the_limit(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle], tmp_path: Path, limits: KeyLimits, sent: int, allowed: int,
) -> None:
    """Admissions are counted in Redis as they are made: the requests a dead router admitted
    still count, so its survivors admit only the rest. Bounds: what reaches the backend never
    exceeds the limit, and falls short of it by at most the requests lost with the dead router."""
    backend = make_backend(models=["fake-chat"], secret=SECRET, latency_ms=1500)
    registry.add_backend("fake-chat", backend.url)
    key = registry.add_key("burst", limits=limits)
    survivors = routers(make_router, redis_url, count=2)
    proc, doomed = shared_router_process(registry, redis_url, tmp_path)
    statuses: dict[int, int] = {}
    sender = threading.Thread(target=lambda: statuses.update(burst([r.url for r in survivors] + [doomed], key, sent)))
    try:
        sender.start()
        wait_for(lambda: len(backend.received) >= allowed // 4, 30, "the burst to reach the backend", poll_s=0.005)
        proc.kill()  # mid-burst: some of its requests admitted, some held by the backend, some not yet read
        sender.join(60)
    finally:
        proc.kill()
        proc.wait(10)
    reached, lost = len(backend.received), statuses.get(0, 0)
    print(f"\n{limits}: {sent} sent over 3 routers, one killed mid-burst: {statuses}, {reached} reached the backend")
    assert set(statuses) <= {200, 429, 0} and sum(statuses.values()) == sent
    assert reached <= allowed
    assert reached + lost >= allowed  # survivors admitted everything the limit had left
    assert statuses.get(200, 0) <= reached
