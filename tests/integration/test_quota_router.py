"""Quotas through the real router, fake backends and the openai SDK."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import openai
from openai.types.chat import ChatCompletionMessageParam
import pytest
import requests

from launcher.core.settings import KeyLimits, RouterSettings, Settings
from router.accounting.seam import Admission, RequestInfo, Usage
from router.accounting.metered import LimitsAccounting
from router.accounting.ownership import LimitsOwnershipError
from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


class ShiftedClock(LimitsAccounting):
    """The real accounting with a clock the test can move forward (no sleeping)."""

    shift = 0.0

    def admit_now(self, info: RequestInfo, now: float) -> Admission:
        return super().admit_now(info, now + self.shift)

    def finish(self, admission: Admission, status: int, usage: Usage, backend: str | None,
               now: float) -> None:
        super().finish(admission, status, usage, backend, now + self.shift)


def setup(registry: Registry, make_backend: Callable[..., FakeBackend], limits: KeyLimits,
          **backend: Any) -> tuple[str, FakeBackend]:
    fake = make_backend(models=["fake-chat"], secret=SECRET, **backend)
    registry.add_backend("fake-chat", fake.url)
    return registry.add_key("bob", limits=limits), fake


def me(router: RouterHandle, key: str) -> dict[str, Any]:
    reply = requests.get(router.base_url + "/me", headers={"Authorization": f"Bearer {key}"})
    assert reply.status_code == 200
    result: dict[str, Any] = reply.json()
    return result


async def test_fifty_concurrent_requests_admit_exactly_what_the_token_limit_allows(
    registry: Registry, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    # Each request reserves its ~20-token prompt estimate + 2000 max_tokens: 10 fit in 20,500.
    key, fake = setup(registry, make_backend, KeyLimits(tpm=20_500), latency_ms=2000)
    router = make_router(stall_timeout_s=10)
    client = openai.AsyncOpenAI(base_url=router.base_url, api_key=key, max_retries=0)

    async def one() -> openai.types.chat.ChatCompletion | None:
        try:
            return await client.chat.completions.create(model="fake-chat", messages=HI, max_tokens=2000)
        except openai.RateLimitError as exc:
            assert "tokens per minute" in exc.message
            return None

    results = await asyncio.gather(*(one() for _ in range(50)))
    await client.close()
    admitted = [r for r in results if r is not None]
    assert len(admitted) == 10
    assert len(fake.received) == 10  # refused requests reached no backend
    reported = sum(r.usage.total_tokens for r in admitted if r.usage is not None)
    standing = me(router, key)
    assert standing["usage"]["today"]["total_tokens"] == reported
    assert standing["windows"]["tokens_per_minute"]["used"] == reported  # reservations settled


def test_request_limit_trips_at_its_number_headers_count_down_and_window_resets(
    registry: Registry, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    key, fake = setup(registry, make_backend, KeyLimits(rpm=3, tpm=100_000))
    accounting = ShiftedClock.from_settings(_settings(registry), registry.engine)
    router = make_router(accounting=accounting)
    client = openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0)
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="fake-chat", messages=HI)
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-limit-tokens"] == "100000"
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="fake-chat", messages=HI)
    response = refused.value.response
    assert "requests per minute" in refused.value.message and "resets in" in refused.value.message
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-request-id"]
    assert len(fake.received) == 3
    accounting.shift += 60  # the minute passes
    raw = client.chat.completions.with_raw_response.create(model="fake-chat", messages=HI)
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"


def _settings(registry: Registry) -> Settings:
    return Settings(database=registry.url, router=RouterSettings())


async def test_requests_in_flight_are_limited_exactly(
    registry: Registry, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    key, fake = setup(registry, make_backend, KeyLimits(max_parallel=2), latency_ms=1000)
    router = make_router(stall_timeout_s=10)
    client = openai.AsyncOpenAI(base_url=router.base_url, api_key=key, max_retries=0)
    calls = [client.chat.completions.create(model="fake-chat", messages=HI) for _ in range(4)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    await client.close()
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(refused) == 2 and "in flight: the limit is 2" in refused[0].message
    assert me(router, key)["windows"]["requests_in_flight"]["used"] == 0


def test_me_shows_limits_remaining_and_usage_for_free(
    registry: Registry, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    key, fake = setup(registry, make_backend, KeyLimits(rpm=5, daily_tokens=10_000))
    router = make_router()
    answer = openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0) \
        .chat.completions.create(model="fake-chat", messages=HI)
    for _ in range(3):  # /v1/me itself costs nothing
        standing = me(router, key)
    assert answer.usage is not None
    assert standing["name"] == "bob" and standing["limits"]["rpm"] == 5
    assert standing["windows"]["requests_per_minute"]["remaining"] == 4
    assert standing["windows"]["daily_tokens"]["remaining"] == 10_000 - answer.usage.total_tokens
    assert standing["usage"]["today"] == standing["usage"]["this_month"] == {
        "requests": 1, "prompt_tokens": answer.usage.prompt_tokens,
        "completion_tokens": answer.usage.completion_tokens, "reasoning_tokens": 3,
        "total_tokens": answer.usage.total_tokens, "audio_seconds": 0.0,
    }
    assert "key_hash" not in standing
    assert requests.get(router.base_url + "/me").status_code == 401


def test_restart_keeps_the_daily_budget_consumed_before_it(
    registry: Registry, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle], servers: Any,
) -> None:
    key, fake = setup(registry, make_backend, KeyLimits(daily_tokens=60))
    first = make_router()
    client = openai.OpenAI(base_url=first.base_url, api_key=key, max_retries=0)
    answer = client.chat.completions.create(model="fake-chat", messages=HI, max_tokens=50)
    assert answer.usage is not None
    with pytest.raises(openai.RateLimitError, match="daily token budget"):
        client.chat.completions.create(model="fake-chat", messages=HI, max_tokens=50)
    servers.run(first.runner.cleanup())  # graceful stop: the ledger is flushed
    second = make_router()
    client = openai.OpenAI(base_url=second.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError, match="daily token budget"):
        client.chat.completions.create(model="fake-chat", messages=HI, max_tokens=50)
    assert me(second, key)["usage"]["today"]["total_tokens"] == answer.usage.total_tokens
    assert len(fake.received) == 1


def test_a_second_router_on_the_same_registry_refuses_to_start(
    registry: Registry, make_router: Callable[..., RouterHandle],
) -> None:
    make_router()
    with pytest.raises(LimitsOwnershipError, match="already enforces the quotas"):
        make_router()
