"""A backend that answers 401 or 403 to the router's own secret is broken, not the client's fault:
the client gets a 502 in the error envelope, another replica is tried, and the broken one leaves
the rotation (logged once)."""

from __future__ import annotations

from collections.abc import Callable

import openai
import pytest

from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend


def ask(router: RouterHandle, key: str) -> str:
    client = openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0)
    answer = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content or ""


@pytest.mark.parametrize("status", [401, 403])
def test_a_backend_rejecting_the_routers_secret_is_a_502_and_leaves_the_rotation(
    registry: Registry, make_router: Callable[..., RouterHandle], make_backend: Callable[..., FakeBackend],
    caplog: pytest.LogCaptureFixture, status: int,
) -> None:
    backend = make_backend(secret=SECRET, denied_status=status)
    registry.add_backend("fake-chat", backend.url, secret=SECRET)
    key = registry.add_key("alice")
    router = make_router()
    assert ask(router, key)  # healthy, probed
    backend.config.secret = "another-secret"  # restarted with a new secret, not registered again
    with pytest.raises(openai.APIStatusError) as caught:
        ask(router, key)
    assert caught.value.status_code == 502
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "backend_failed"
    assert "rejected the service's credentials" in body["message"] and "bad backend key" not in body["message"]
    with pytest.raises(openai.APIStatusError) as after:
        ask(router, key)
    assert after.value.status_code == 503  # out of rotation: the client is not sent there again
    downs = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    assert len(downs) == 1 and "rejected the service's credentials" in downs[0]  # logged once


def test_another_replica_answers_when_one_rejects_the_routers_secret(
    registry: Registry, make_router: Callable[..., RouterHandle], make_backend: Callable[..., FakeBackend],
) -> None:
    broken = make_backend(secret=SECRET)
    registry.add_backend("fake-chat", broken.url, secret=SECRET)
    registry.add_backend("fake-chat", make_backend(secret=SECRET).url, secret=SECRET)
    key = registry.add_key("alice")
    router = make_router()
    assert ask(router, key)
    broken.config.secret = "another-secret"
    assert all(ask(router, key) for _ in range(4))  # the one that rejects is skipped, nothing reaches the client
    assert broken.received[-1].headers["Authorization"] == f"Bearer {SECRET}"
