"""Per-key limits: each trips at its number, resets when its window passes, headers count down."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine

from launcher.core.keys import KeyRecord
from launcher.core.settings import KeyLimits
from router.accounting import limits as quota
from router.accounting.seam import Admission, QuotaExceeded, RequestInfo, Usage
from router.accounting.ledger import Ledger
from router.accounting.metered import LimitsAccounting, WindowView, windows

T0 = datetime(2026, 3, 14, 12, 0, 0, tzinfo=UTC).timestamp()


class Clock:
    """The tests' clock: time moves only when a test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def views_of(acc: LimitsAccounting, key: KeyRecord, now: float) -> dict[str, WindowView]:
    st = acc.state(key.id, now)
    quota.roll(st, now)
    return windows(st, key.limits, now)


def make_accounting() -> LimitsAccounting:
    return LimitsAccounting(Ledger(create_engine("sqlite://")))


def make_key(limits: KeyLimits, key_id: int = 1) -> KeyRecord:
    return KeyRecord(id=key_id, name=f"key{key_id}", prefix="sk-llm-abc", key_hash="h",
                     models=None, account="proj", tier=None, limits=limits, expires_at=None,
                     revoked_at=None, created_at=datetime(2026, 1, 1))


def request(key_limits: KeyLimits, *, prompt: int = 10, max_tokens: int = 0,
            endpoint: str = "chat", key_id: int = 1) -> RequestInfo:
    return RequestInfo("req", make_key(key_limits, key_id), "m", endpoint, prompt, max_tokens)


@pytest.mark.parametrize(
    ("limits", "info_kw", "usage", "window_s", "phrase", "label"),
    [
        (KeyLimits(rpm=3), {}, Usage(), 60, "requests per minute", "rpm"),
        (KeyLimits(tpm=300), {"prompt": 100}, Usage(prompt_tokens=100), 60, "tokens per minute", "tpm"),
        (KeyLimits(daily_tokens=300), {"prompt": 100}, Usage(prompt_tokens=100), 12 * 3600,
         "daily token budget", "daily_tokens"),
        (KeyLimits(monthly_tokens=300), {"prompt": 100}, Usage(prompt_tokens=100),
         18 * 86400 + 12 * 3600, "monthly token budget", "monthly_tokens"),
        (KeyLimits(daily_audio_seconds=90), {"endpoint": "transcriptions", "prompt": 0},
         Usage(audio_seconds=30.0), 12 * 3600, "Daily audio budget", "daily_audio_seconds"),
    ],
)
def test_limit_trips_at_its_number_and_resets_when_window_passes(
    limits: KeyLimits, info_kw: dict[str, object], usage: Usage, window_s: int, phrase: str, label: str
) -> None:
    acc, clock = make_accounting(), Clock(T0)
    info = request(limits, **info_kw)  # type: ignore[arg-type]
    for _ in range(3):
        acc.finish(acc.admit_now(info, clock.now), 200, usage, "b", clock.now)
        clock.advance(1)
    with pytest.raises(QuotaExceeded) as refused:
        acc.admit_now(info, clock.now)
    assert phrase in str(refused.value)
    assert refused.value.limit == label  # the metrics label of the limit
    assert "resets in" in str(refused.value)
    assert 1 <= refused.value.retry_after_s <= window_s
    clock.advance(refused.value.retry_after_s)
    acc.finish(acc.admit_now(info, clock.now), 200, usage, "b", clock.now)


def test_concurrency_limit_is_exact_and_frees_on_finish() -> None:
    acc, clock = make_accounting(), Clock(T0)
    info = request(KeyLimits(max_parallel=2))
    first, _second = acc.admit_now(info, clock.now), acc.admit_now(info, clock.now)
    with pytest.raises(QuotaExceeded, match="in flight: the limit is 2") as refused:
        acc.admit_now(info, clock.now)
    assert refused.value.limit == "max_parallel"
    acc.finish(first, 499, Usage(), None, clock.now)
    acc.admit_now(info, clock.now)


def test_request_headers_count_down_and_reset() -> None:
    acc, clock = make_accounting(), Clock(T0)
    info = request(KeyLimits(rpm=3))
    seen = []
    for _ in range(3):
        adm = acc.admit_now(info, clock.now)
        seen.append((adm.headers["x-ratelimit-remaining-requests"],
                     adm.headers["x-ratelimit-reset-requests"]))
        clock.advance(10)
    assert seen == [("2", "1m0s"), ("1", "50s"), ("0", "40s")]
    with pytest.raises(QuotaExceeded) as refused:
        acc.admit_now(info, clock.now)
    assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.value.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.value.retry_after_s == 30


def test_tokens_reserve_at_admission_and_settle_with_real_usage() -> None:
    acc, clock = make_accounting(), Clock(T0)
    info = request(KeyLimits(tpm=1000), prompt=100, max_tokens=400)
    first = acc.admit_now(info, clock.now)
    second = acc.admit_now(info, clock.now)
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(QuotaExceeded, match="tokens per minute: limit 1000, used 1000"):
        acc.admit_now(info, clock.now)
    acc.finish(first, 200, Usage(prompt_tokens=90, completion_tokens=10), "b", clock.now)
    with pytest.raises(QuotaExceeded, match="used 600"):  # 100 settled + 500 reserved
        acc.admit_now(info, clock.now)
    third = acc.admit_now(request(KeyLimits(tpm=1000), prompt=100, max_tokens=300), clock.now)
    assert third.headers["x-ratelimit-remaining-tokens"] == "0"
    acc.finish(second, 200, Usage(prompt_tokens=90, completion_tokens=10), "b", clock.now)
    acc.finish(third, 200, Usage(prompt_tokens=90, completion_tokens=10), "b", clock.now)
    assert views_of(acc, info.key, clock.now)["tokens_per_minute"].used == 300


def test_a_burst_cannot_overshoot_the_token_limit() -> None:
    acc, clock = make_accounting(), Clock(T0)
    info = request(KeyLimits(tpm=10 * 150), prompt=50, max_tokens=100)
    admitted: list[Admission] = []
    for _ in range(50):
        try:
            admitted.append(acc.admit_now(info, clock.now))
        except QuotaExceeded:
            pass
    assert len(admitted) == 10


def test_reservation_larger_than_the_limit_runs_alone_in_an_empty_window() -> None:
    acc, clock = make_accounting(), Clock(T0)
    info = request(KeyLimits(tpm=1000), prompt=10, max_tokens=131072)
    adm = acc.admit_now(info, clock.now)
    assert adm.reserved_tokens == 1000
    with pytest.raises(QuotaExceeded):
        acc.admit_now(info, clock.now)


def test_daily_budget_resets_at_midnight_utc_and_month_at_month_end() -> None:
    acc, clock = make_accounting(), Clock(datetime(2026, 3, 31, 23, 59, tzinfo=UTC).timestamp())
    info = request(KeyLimits(daily_tokens=100, monthly_tokens=150), prompt=100)
    acc.finish(acc.admit_now(info, clock.now), 200, Usage(prompt_tokens=100), "b", clock.now)
    with pytest.raises(QuotaExceeded) as refused:
        acc.admit_now(info, clock.now)
    assert "daily token budget" in str(refused.value)
    assert refused.value.retry_after_s == 60
    assert refused.value.headers["x-ratelimit-reset-tokens"] == "1m0s"
    clock.advance(60)  # April: both the day and the month are new
    views = views_of(acc, info.key, clock.now)
    assert (views["daily_tokens"].used, views["monthly_tokens"].used) == (0, 0)
    acc.admit_now(info, clock.now)


def test_request_finishing_after_its_window_charges_the_new_day() -> None:
    acc, clock = make_accounting(), Clock(datetime(2026, 3, 14, 23, 59, 30, tzinfo=UTC).timestamp())
    info = request(KeyLimits(daily_tokens=1000, tpm=1000), prompt=100, max_tokens=100)
    adm = acc.admit_now(info, clock.now)
    clock.advance(3600)
    acc.finish(adm, 200, Usage(prompt_tokens=100, completion_tokens=50), "b", clock.now)
    views = views_of(acc, info.key, clock.now)
    assert views["daily_tokens"].used == 150
    assert views["tokens_per_minute"].used == 0
    assert views["requests_in_flight"].used == 0


def test_limits_are_per_key_and_unlimited_keys_get_no_headers() -> None:
    acc, clock = make_accounting(), Clock(T0)
    a, b = request(KeyLimits(rpm=1), key_id=1), request(KeyLimits(rpm=1), key_id=2)
    acc.admit_now(a, clock.now)
    acc.admit_now(b, clock.now)
    assert acc.admit_now(request(KeyLimits(), key_id=3), clock.now).headers == {}


@pytest.mark.parametrize(
    "limits",
    [KeyLimits(rpm=0), KeyLimits(tpm=0), KeyLimits(max_parallel=0), KeyLimits(daily_tokens=0),
     KeyLimits(monthly_tokens=0)],
)
def test_a_zero_limit_refuses_every_request(limits: KeyLimits) -> None:
    acc, clock = make_accounting(), Clock(T0)
    for _ in range(2):
        with pytest.raises(QuotaExceeded):
            acc.admit_now(request(limits, prompt=0), clock.now)
        clock.advance(61)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-3, "0s"), (0.0201, "21ms"), (1, "1s"), (6.2, "7s"), (60, "1m0s"),
     (61, "1m1s"), (3600, "1h0m0s"), (3723, "1h2m3s")],
)
def test_reset_durations_use_openai_style(seconds: float, text: str) -> None:
    assert quota.fmt_duration(seconds) == text


@pytest.mark.parametrize(
    ("when", "start", "end"),
    [((2026, 3, 14), (2026, 3, 1), (2026, 4, 1)), ((2026, 12, 31), (2026, 12, 1), (2027, 1, 1))],
)
def test_month_bounds_follow_the_utc_calendar(
    when: tuple[int, int, int], start: tuple[int, int, int], end: tuple[int, int, int]
) -> None:
    ts = datetime(*when, 15, 0, tzinfo=UTC).timestamp()
    assert quota.month_bounds(ts) == (datetime(*start, tzinfo=UTC).timestamp(),
                                      datetime(*end, tzinfo=UTC).timestamp())
