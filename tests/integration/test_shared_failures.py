"""Shared mode when Redis goes away: fail closed (the default) or open, and budgets after a restart.

Redis here is the test's own, without persistence, so a restart comes back empty: every key's
budgets must then be seeded from the ledger once, whichever router asks first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import requests

from launcher.core.db import open_engine
from launcher.core.settings import KeyLimits
from router.accounting.shared import LEASE_S
from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.integration.test_shared_limits import CHAT, burst, me, routers
from tests.shared_services import PrivateRedis

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def registry(pg_url: str) -> Iterator[Registry]:
    engine = open_engine(pg_url)
    yield Registry(pg_url, engine)
    engine.dispose()


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
