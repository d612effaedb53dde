"""Choosing a backend: the least outstanding requests; in large pools, the better of two samples.

Small pools are scanned whole (ties broken in rotation). A scan costs a few hundred
nanoseconds per replica on every request, so a pool larger than SCAN_LIMIT first tries the
power of two choices: two replicas sampled by the turn counter, the less loaded one wins. That
keeps loads within a small factor of the best and the cost flat in the pool's size. Either way
the wall-time rules of router.walltime hold: a sample is taken only when it may take the
request and runs past the request's worst case; otherwise the exact scan decides.
"""

from __future__ import annotations

from typing import Collection, Sequence, TypeVar

from router.upstream.walltime import Timed, choose_in_time

SCAN_LIMIT = 8
# Fibonacci hashing: consecutive turns land far apart in the pool.
_GOLDEN = 0x9E3779B1
T = TypeVar("T", bound=Timed)


def choose_backend(candidates: Sequence[T], turn: int, exclude: Collection[T], hard_end: float,
                   soft_end: float) -> T | None:
    """The replica for one request: walltime.choose_in_time's answer, sampled in large pools."""
    if len(candidates) > SCAN_LIMIT:
        sampled = two_choices(candidates, turn, exclude, max(hard_end, soft_end))
        if sampled is not None:
            return sampled
    return choose_in_time(candidates, turn, exclude, hard_end, soft_end)


def two_choices(candidates: Sequence[T], turn: int, exclude: Collection[T], until: float) -> T | None:
    """The less loaded of two distinct replicas picked by TURN that qualify; None if neither does.

    Qualifies: routable, not in EXCLUDE, its job running until UNTIL (the request's worst case,
    never before the drain threshold): a replica the full scan would also prefer.
    """
    count = len(candidates)
    spread = (turn * _GOLDEN) & 0xFFFFFFFF
    first_at = spread % count
    first = candidates[first_at]
    second = candidates[(first_at + 1 + (spread >> 16) % (count - 1)) % count]
    ok_first = first.routable and first.end_at >= until and first not in exclude
    ok_second = second.routable and second.end_at >= until and second not in exclude
    if ok_first and ok_second:
        return second if second.outstanding < first.outstanding else first
    return first if ok_first else second if ok_second else None
