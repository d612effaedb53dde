"""Wall-time-aware choice of a replica: no request to a job that would hit its Slurm limit first (pure).

Each backend carries its job's end as epoch seconds (`end_at`, infinity when it has none), set
when the snapshot is built, so the request path only compares floats.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

NO_END = float("inf")
# Weight of the newest request in a model's decode rate (an exponential moving average).
RATE_WEIGHT = 0.2


class Timed(Protocol):
    @property
    def outstanding(self) -> int: ...

    @property
    def routable(self) -> bool: ...

    @property
    def end_at(self) -> float: ...


T = TypeVar("T", bound=Timed)


def end_epoch(end_time: datetime | None) -> float:
    """A registry end time (naive UTC) as epoch seconds; no end time is NO_END."""
    if end_time is None:
        return NO_END
    return (end_time if end_time.tzinfo else end_time.replace(tzinfo=UTC)).timestamp()


def worst_case_s(max_tokens: int, tokens_per_s: float | None, max_request_s: float) -> float:
    """How long a request may run: MAX_TOKENS at the measured rate, at most MAX_REQUEST_S (unknown: that)."""
    if max_tokens <= 0 or not tokens_per_s:
        return max_request_s
    return min(max_tokens / tokens_per_s, max_request_s)


def choose_in_time(candidates: Sequence[T], turn: int, exclude: Collection[T], hard_end: float,
                   soft_end: float) -> T | None:
    """The least loaded routable candidate that runs until SOFT_END (ties: first from TURN).

    None runs that long: the one that runs longest, as long as it runs past HARD_END (the drain
    threshold); a replica ending before HARD_END takes no new request at all.
    """
    count = len(candidates)
    best: T | None = None
    longest: T | None = None
    for offset in range(count):
        candidate = candidates[(turn + offset) % count]
        if not candidate.routable or candidate.end_at < hard_end or candidate in exclude:
            continue
        if candidate.end_at >= soft_end:
            if best is None or candidate.outstanding < best.outstanding:
                best = candidate
        elif longest is None or candidate.end_at > longest.end_at:
            longest = candidate
    return best if best is not None else longest


class DecodeRates:
    """Tokens per second of each model, measured from its completed requests."""

    def __init__(self) -> None:
        self._rates: dict[str, float] = {}

    def observe(self, model: str, completion_tokens: int, seconds: float) -> None:
        """Fold one finished request in (a whole answer: tokens over its duration)."""
        if completion_tokens <= 0 or seconds <= 0:
            return
        rate = completion_tokens / seconds
        old = self._rates.get(model)
        self._rates[model] = rate if old is None else old + RATE_WEIGHT * (rate - old)

    def rate(self, model: str) -> float | None:
        """The model's measured tokens per second, None before its first answer."""
        return self._rates.get(model)
