"""Three routers on one PostgreSQL registry: a revoked key, a new key, a backend registered or
removed reach all three within 1 s through LISTEN/NOTIFY (their periodic refresh is off here, so
only the notification can bring the change)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from launcher.cli import main
from launcher.core.db import open_engine
from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.integration.test_registration import TOKEN, post, submitted_job
from tests.shared_services import PrivatePostgres

LIMIT_S = 1.0
HI: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    """The shared test server's fresh database, or the test's own server (private_pg) if it asks."""
    if "private_pg" in request.fixturenames:
        url: str = request.getfixturevalue("private_pg").url
    else:
        url = request.getfixturevalue("pg_url")
    engine = open_engine(url)
    yield Registry(url, engine)
    engine.dispose()


def chat_status(router: RouterHandle, key: str, model: str = "fake-chat") -> int:
    reply = requests.post(router.base_url + "/chat/completions", json={**HI, "model": model},
                          headers={"Authorization": f"Bearer {key}"}, timeout=5)
    return reply.status_code


def until_all(routers: list[RouterHandle], check: Callable[[RouterHandle], bool]) -> float:
    """Seconds until CHECK holds on every router (each checked until it holds), at most 3 s."""
    start = time.monotonic()
    pending = list(routers)
    while pending:
        pending = [r for r in pending if not check(r)]
        assert time.monotonic() - start < 3.0, f"{len(pending)} router(s) never saw the change"
    return time.monotonic() - start


def cli(registry: Registry, *args: str) -> None:
    result = CliRunner().invoke(main, ["--db", registry.url, *args])
    assert result.exit_code == 0, result.output


def test_changes_reach_three_routers_within_a_second(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    backend = make_backend(models=["fake-chat", "fake-other"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    alice = registry.add_key("alice")
    routers = [make_router(registry_refresh_s=3600.0, redis_url=redis_url) for _ in range(3)]  # shared mode
    assert [chat_status(r, alice) for r in routers] == [200] * 3

    figures: dict[str, float] = {}
    cli(registry, "keys", "revoke", "alice")
    figures["key revoked"] = until_all(routers, lambda r: chat_status(r, alice) == 401)
    bob = registry.add_key("bob")
    figures["key created"] = until_all(routers, lambda r: chat_status(r, bob) == 200)
    cli(registry, "backends", "add", "fake-other", backend.url, "--secret", SECRET)
    figures["backend added"] = until_all(routers, lambda r: chat_status(r, bob, "fake-other") == 200)
    cli(registry, "backends", "remove", "2")
    figures["backend removed"] = until_all(routers, lambda r: chat_status(r, bob, "fake-other") != 200)

    print("\n" + ", ".join(f"{what}: all 3 routers in {s * 1000:.0f} ms" for what, s in figures.items()))
    assert max(figures.values()) < LIMIT_S, figures


def test_after_a_database_restart_the_routers_listen_again(
    private_pg: PrivatePostgres, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle], registry: Registry,
) -> None:
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    alice = registry.add_key("alice")
    router = make_router(registry_refresh_s=3600.0)
    assert chat_status(router, alice) == 200
    private_pg.stop()
    assert chat_status(router, alice) == 200  # served from the last snapshot meanwhile
    private_pg.start()
    cli(registry, "keys", "revoke", "alice")
    # The listener reconnects (backoff at most 5 s) and refreshes for what it missed.
    start = time.monotonic()
    while chat_status(router, alice) != 401:
        assert time.monotonic() - start < 8.0, "the router never saw the revocation"
        time.sleep(0.05)


def test_a_job_registers_through_one_router_and_the_others_route_to_it_within_a_second(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    """The URL a job is given may be a load balancer: whichever router takes its registration,
    every router routes to it (and stops when it deregisters) within 1 s."""
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    alice = registry.add_key("alice")
    first, *others = [make_router(registry_refresh_s=3600.0, redis_url=redis_url) for _ in range(3)]
    submitted_job(registry)
    assert all(chat_status(r, alice) != 200 for r in (first, *others))  # nothing serves yet
    claim = {"job_id": "4242", "url": backend.url, "node": "gpu7", "token": TOKEN}
    assert post(first, "register", claim).status_code == 200
    registered = until_all(others, lambda r: chat_status(r, alice) == 200)
    assert post(others[0], "deregister", {**claim, "reason": "job ending"}).status_code == 200
    deregistered = until_all([first, others[1]], lambda r: chat_status(r, alice) != 200)
    print(f"\nregistered via one router: others route in {registered * 1000:.0f} ms; "
          f"deregistered: others stop in {deregistered * 1000:.0f} ms")
    assert registered < LIMIT_S and deregistered < LIMIT_S
