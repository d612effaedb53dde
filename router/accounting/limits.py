"""Per-key limit arithmetic: fixed windows, reservations, settlement and rate-limit headers.

Pure: every function takes `now` (seconds since the epoch, UTC) and mutates only the per-key
state it is given; nothing here reads a clock or does I/O. One router process owns these
counters in memory (see router/accounting/metered.py for why and how that is enforced).

Windows: the minute windows (requests, tokens) start at the first request after the previous
window passed and last 60 s; budgets follow the UTC calendar day and month.
"""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from typing import NamedTuple

from launcher.core.settings import KeyLimits

MINUTE = 60.0
DAY = 86400.0


class Refusal(NamedTuple):
    """Why a request must wait: which limit (its KeyLimits field), the message, for how long."""

    limit: str
    message: str
    wait_s: float


class Totals:
    """Exact usage of one key in one calendar window (no reservations)."""

    __slots__ = ("requests", "tokens", "prompt", "completion", "reasoning", "audio")

    def __init__(self) -> None:
        self.requests = 0
        self.tokens = 0  # prompt + completion: what token limits count
        self.prompt = 0
        self.completion = 0
        self.reasoning = 0
        self.audio = 0.0


class KeyState:
    """Everything the limits know about one key; allocated once per key, mutated in place."""

    __slots__ = (
        "req_start", "req_count", "tok_start", "tok_used", "tok_reserved", "in_flight",
        "day", "day_reserved", "month_start", "month_end", "month_reserved", "today", "month",
        "audio_reserved",
    )

    def __init__(self, now: float) -> None:
        self.req_start = self.tok_start = now
        self.req_count = self.tok_used = self.tok_reserved = self.in_flight = 0
        self.day = int(now // DAY)
        self.month_start, self.month_end = month_bounds(now)
        self.day_reserved = self.month_reserved = 0
        self.audio_reserved = 0.0  # seconds of today's audio requests in flight
        self.today = Totals()
        self.month = Totals()


def month_bounds(now: float) -> tuple[float, float]:
    """Start and end (epoch seconds) of the UTC calendar month containing NOW."""
    return _month_of_day(int(now // DAY))


@functools.lru_cache(maxsize=8)
def _month_of_day(day: int) -> tuple[float, float]:
    # cached: the limiters ask up to three times per request, and days change rarely
    t = datetime.fromtimestamp(day * DAY, UTC)
    start = datetime(t.year, t.month, 1, tzinfo=UTC)
    end = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)
    return start.timestamp(), end.timestamp()


def roll(st: KeyState, now: float) -> None:
    """Start new windows for those that have passed; reservations of older windows lapse."""
    if now - st.req_start >= MINUTE:
        st.req_start, st.req_count = now, 0
    if now - st.tok_start >= MINUTE:
        st.tok_start, st.tok_used, st.tok_reserved = now, 0, 0
    day = int(now // DAY)
    if day != st.day:
        st.day, st.day_reserved, st.audio_reserved, st.today = day, 0, 0.0, Totals()
        if now >= st.month_end:
            st.month_start, st.month_end = month_bounds(now)
            st.month_reserved, st.month = 0, Totals()


def reservation(limits: KeyLimits, wanted: int) -> int:
    """Tokens to reserve: WANTED, capped by the key's tightest token limit so it can ever pass.

    At least 1, so that a limit of 0 (a key suspended by its admin) refuses every request.
    """
    for cap in (limits.tpm, limits.daily_tokens, limits.monthly_tokens):
        if cap is not None and wanted > cap:
            wanted = cap
    return wanted if wanted > 0 else 1


def audio_reservation(limits: KeyLimits, seconds: float) -> float:
    """Audio seconds to reserve: SECONDS in whole seconds (as whisper bills), capped like tokens, at least 1."""
    wanted = float(max(math.ceil(seconds), 1))
    cap = limits.daily_audio_seconds
    return min(wanted, float(cap)) if cap is not None and cap > 0 else wanted


def refusal(st: KeyState, limits: KeyLimits, reserve: int, audio: float, now: float) -> Refusal | None:
    """Why a request reserving RESERVE tokens and AUDIO seconds must wait, and for how long; None admits it."""
    if limits.daily_tokens is not None:
        used = st.today.tokens + st.day_reserved
        if used + reserve > limits.daily_tokens:
            return _over("daily_tokens", "daily token budget", limits.daily_tokens, used, reserve,
                         _day_end(st) - now)
    if limits.monthly_tokens is not None:
        used = st.month.tokens + st.month_reserved
        if used + reserve > limits.monthly_tokens:
            return _over("monthly_tokens", "monthly token budget", limits.monthly_tokens, used, reserve,
                         st.month_end - now)
    if audio and limits.daily_audio_seconds is not None:
        heard = st.today.audio + st.audio_reserved
        if heard + audio > limits.daily_audio_seconds:
            wait = _day_end(st) - now
            return Refusal("daily_audio_seconds",
                           f"Daily audio budget reached: {heard:.0f} of {limits.daily_audio_seconds} seconds used "
                           f"(including requests in flight), this request may use up to {audio:.0f}; "
                           f"it resets in {fmt_duration(wait)} (midnight UTC).", wait)
    if limits.tpm is not None:
        used = st.tok_used + st.tok_reserved
        if used + reserve > limits.tpm:
            return _over("tpm", "tokens per minute", limits.tpm, used, reserve, st.tok_start + MINUTE - now)
    return _request_refusal(st, limits, now)


def _request_refusal(st: KeyState, limits: KeyLimits, now: float) -> Refusal | None:
    if limits.rpm is not None and st.req_count >= limits.rpm:
        wait = st.req_start + MINUTE - now
        return Refusal("rpm", f"Rate limit reached for requests per minute: {limits.rpm} used; "
                              f"it resets in {fmt_duration(wait)}.", wait)
    if limits.max_parallel is not None and st.in_flight >= limits.max_parallel:
        return Refusal("max_parallel", f"Too many requests in flight: the limit is {limits.max_parallel} at once; "
                                       "retry when one of them has finished.", 1.0)
    return None


def _over(name: str, what: str, limit: int, used: int, reserve: int, wait: float) -> Refusal:
    text = (f"Rate limit reached for {what}: limit {limit}, used {used} (including requests in "
            f"flight), this request may use up to {reserve}; it resets in {fmt_duration(wait)}.")
    if reserve > 1 and used < limit:
        text += " A smaller max_tokens may fit now."
    return Refusal(name, text, wait)


def _day_end(st: KeyState) -> float:
    return (st.day + 1) * DAY


def charge(st: KeyState, reserve: int, audio: float = 0.0) -> None:
    """Count an admitted request and hold its token (and audio) reservation in every window."""
    st.req_count += 1
    st.in_flight += 1
    st.tok_reserved += reserve
    st.day_reserved += reserve
    st.month_reserved += reserve
    st.audio_reserved += audio


def settle(st: KeyState, admitted_at: float, reserved: int, tokens: int, now: float,
           audio: float = 0.0) -> None:
    """Replace a reservation made at ADMITTED_AT (RESERVED tokens, AUDIO seconds) by the TOKENS really used.

    A reservation whose window has passed has already lapsed; the real count then goes to the
    current day and month (the ledger dates usage by when it finished) but not to the current
    minute, whose traffic it was not.
    """
    roll(st, now)
    st.in_flight -= 1
    if admitted_at >= st.tok_start:
        st.tok_reserved -= reserved
        st.tok_used += tokens
    if int(admitted_at // DAY) == st.day:
        st.day_reserved -= reserved
        st.audio_reserved -= audio
    if admitted_at >= st.month_start:
        st.month_reserved -= reserved


def add_usage(totals: Totals, prompt: int, completion: int, reasoning: int, audio: float) -> None:
    """Add one finished request's exact usage to TOTALS."""
    totals.requests += 1
    totals.tokens += prompt + completion
    totals.prompt += prompt
    totals.completion += completion
    totals.reasoning += reasoning
    totals.audio += audio


def token_window(st: KeyState, limits: KeyLimits, now: float) -> tuple[int, int, float] | None:
    """The binding token window as (limit, remaining, seconds to reset), or None if unlimited."""
    best: tuple[int, int, float] | None = None
    if limits.tpm is not None:
        used = st.tok_used + st.tok_reserved
        best = (limits.tpm, limits.tpm - used, st.tok_start + MINUTE - now if used else 0.0)
    if limits.daily_tokens is not None:
        left = limits.daily_tokens - st.today.tokens - st.day_reserved
        if best is None or left < best[1]:
            best = (limits.daily_tokens, left, _day_end(st) - now)
    if limits.monthly_tokens is not None:
        left = limits.monthly_tokens - st.month.tokens - st.month_reserved
        if best is None or left < best[1]:
            best = (limits.monthly_tokens, left, st.month_end - now)
    return best


def rate_headers(st: KeyState, limits: KeyLimits, now: float) -> dict[str, str]:
    """The x-ratelimit-* headers: requests per minute, and the key's binding token window."""
    headers: dict[str, str] = {}
    if limits.rpm is not None:
        reset = st.req_start + MINUTE - now if st.req_count else 0.0
        headers["x-ratelimit-limit-requests"] = str(limits.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(limits.rpm - st.req_count, 0))
        headers["x-ratelimit-reset-requests"] = fmt_duration(reset)
    window = token_window(st, limits, now)
    if window is not None:
        headers["x-ratelimit-limit-tokens"] = str(window[0])
        headers["x-ratelimit-remaining-tokens"] = str(max(window[1], 0))
        headers["x-ratelimit-reset-tokens"] = fmt_duration(window[2])
    return headers


def fmt_duration(seconds: float) -> str:
    """A wait in OpenAI's header style: '20ms', '6s', '1m0s', '3h2m0s' (rounded up)."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    total = math.ceil(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def retry_after(seconds: float) -> int:
    """Retry-After in whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
