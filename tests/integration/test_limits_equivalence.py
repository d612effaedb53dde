"""Shared mode's promise that every limit means what it means in the embedded mode, as a property.

Hypothesis draws a key's limits and a sequence of admissions and settlements (chat with several
choices, transcriptions, usage past or under the reservation, usage the router rejected) at
times that cross minutes, days and a month's end. The embedded limiter (in memory) and the
shared one (Lua in a real Redis) get the same sequence at the same clock: each admission must get
the same answer (admitted with the same reservation and headers, or refused by the same limit
with the same message, Retry-After and headers), and the key's counters must end equal.

Leases are the one intended difference (a reservation not renewed for `lease_s` is settled as
used); the sequences here span hours of simulated time, so the test gives the shared limiter a
lease longer than any of them, as a router that keeps renewing has.
"""

from __future__ import annotations

import asyncio
import calendar
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from launcher.core.db import open_engine
from launcher.core.settings import KeyLimits
from router.accounting.ledger import Ledger
from router.accounting.limits import KeyState, Totals
from router.accounting.metered import LimitsAccounting
from router.accounting.resp import RespClient
from router.accounting.seam import Accounting, Admission, QuotaExceeded, RequestInfo, Usage
from router.accounting.shared import SharedAccounting
from tests.unit.test_quota import make_key

# Just before a month's end (a day, a month and minutes roll over) and in the middle of one
STARTS = [calendar.timegm((2026, 1, 31, 23, 58, 30)), calendar.timegm((2026, 3, 14, 11, 0, 0))]
_key_ids = itertools.count(1)


@dataclass(frozen=True)
class Admit:
    audio: bool
    prompt: int
    max_tokens: int
    choices: int
    seconds: float
    after_ms: int


@dataclass(frozen=True)
class Finish:
    which: int  # index into the admissions still held (modulo their count)
    prompt: int
    completion: int
    seconds: float
    rejected: bool
    after_ms: int


limits_st = st.builds(
    KeyLimits,
    rpm=st.none() | st.integers(1, 6), tpm=st.none() | st.integers(20, 400),
    max_parallel=st.none() | st.integers(1, 4), daily_tokens=st.none() | st.integers(50, 1500),
    monthly_tokens=st.none() | st.integers(100, 3000), daily_audio_seconds=st.none() | st.integers(5, 120),
)
# Steps from a millisecond to 40 minutes: bursts within a window and windows that pass.
after_st = st.integers(1, 2_400_000) | st.integers(1, 2_000)
admit_st = st.builds(Admit, st.booleans(), st.integers(0, 80), st.integers(0, 90), st.integers(1, 3),
                     st.floats(0, 60, allow_nan=False).map(lambda s: round(s, 3)), after_st)
finish_st = st.builds(Finish, st.integers(0, 50), st.integers(0, 150), st.integers(0, 200),
                      st.floats(0, 90, allow_nan=False).map(lambda s: round(s, 3)), st.booleans(), after_st)


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    """One registry for every example (Hypothesis reuses a test's fixtures); each uses a new key."""
    engine = open_engine(pg_url)
    yield engine
    engine.dispose()


def _info(key_limits: KeyLimits, key_id: int, step: Admit, n: int) -> RequestInfo:
    key = make_key(key_limits, key_id)
    if step.audio:
        return RequestInfo(f"r{n}", key, "whisper", "transcriptions", 0, 0, audio_seconds=step.seconds)
    return RequestInfo(f"r{n}", key, "chat", "chat", step.prompt, step.max_tokens, choices=step.choices)


async def _admit(accounting: Accounting, info: RequestInfo, now: float) -> Admission | QuotaExceeded:
    try:
        return await accounting.admit(info, now)
    except QuotaExceeded as refused:
        return refused


def _outcome(result: Admission | QuotaExceeded) -> tuple[object, ...]:
    if isinstance(result, QuotaExceeded):
        return ("refused", result.limit, str(result), result.retry_after_s, result.headers)
    return ("admitted", result.reserved_tokens, result.reserved_audio, result.headers)


def _counters(state: KeyState) -> dict[str, object]:
    """STATE's counters; seconds of audio to the millisecond, as Redis keeps them (the embedded
    sum of 3-decimal floats may differ in the 14th digit)."""
    def plain(value: object) -> object:
        if isinstance(value, Totals):
            return {name: plain(getattr(value, name)) for name in Totals.__slots__}
        return round(value, 3) if isinstance(value, float) else value
    return {name: plain(getattr(state, name)) for name in KeyState.__slots__}


async def _run(engine: Engine, redis_url: str, key_limits: KeyLimits, start: int,
               steps: list[Admit | Finish]) -> None:
    embedded = LimitsAccounting(Ledger(engine))
    shared = SharedAccounting(Ledger(engine), RespClient(redis_url), lease_s=10.0**9)
    key_id = next(_key_ids)  # a key Redis has never seen: seeded from an empty ledger
    now, held = float(start), []
    try:
        for n, step in enumerate(steps):
            now = round(now + step.after_ms / 1000, 3)
            if isinstance(step, Admit):
                info = _info(key_limits, key_id, step, n)
                mine, theirs = await _admit(embedded, info, now), await _admit(shared, info, now)
                assert _outcome(mine) == _outcome(theirs), f"step {n} at +{now - start:.3f} s"
                if isinstance(mine, Admission) and isinstance(theirs, Admission):
                    held.append((mine, theirs))
            elif held:
                mine, theirs = held.pop(step.which % len(held))
                usage = Usage(step.prompt, step.completion, audio_seconds=step.seconds,
                              rejected="absurd" if step.rejected else "")
                embedded.finish(mine, 200, usage, None, now)
                shared.finish(theirs, 200, usage, None, now)
        key = make_key(key_limits, key_id)
        ours, redis_side = _counters(await embedded.key_state(key, now)), _counters(await shared.key_state(key, now))
        assert ours == redis_side, f"embedded {ours}\nshared   {redis_side}"
    finally:
        await shared.close()
        await embedded.close()


@given(key_limits=limits_st, start=st.sampled_from(STARTS),
       steps=st.lists(admit_st | finish_st, min_size=1, max_size=40))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_shared_limits_answer_exactly_as_the_embedded_ones(
    engine: Engine, redis_url: str, key_limits: KeyLimits, start: int, steps: list[Admit | Finish],
) -> None:
    asyncio.run(_run(engine, redis_url, key_limits, start, steps))
