"""Choosing a backend: the least outstanding requests, ties broken in rotation."""

from __future__ import annotations

from typing import Collection, Protocol, Sequence, TypeVar


class Candidate(Protocol):
    @property
    def outstanding(self) -> int: ...

    @property
    def routable(self) -> bool: ...


C = TypeVar("C", bound=Candidate)


def choose(candidates: Sequence[C], turn: int, exclude: Collection[C] = ()) -> C | None:
    """The routable candidate with the fewest requests in flight; among equals the first from TURN."""
    count = len(candidates)
    best: C | None = None
    best_load = 0
    for offset in range(count):
        candidate = candidates[(turn + offset) % count]
        if not candidate.routable or candidate in exclude:
            continue
        if best is None or candidate.outstanding < best_load:
            best, best_load = candidate, candidate.outstanding
    return best
