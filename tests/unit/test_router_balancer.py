"""Balancing: fewest requests in flight wins, equals take turns, dead ones are skipped."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from router.balancer import choose


@dataclass(eq=False)
class B:
    name: str
    outstanding: int = 0
    routable: bool = True


def test_fewest_outstanding_wins() -> None:
    pool = [B("a", 3), B("b", 1), B("c", 2)]
    assert choose(pool, 0).name == "b"  # type: ignore[union-attr]


def test_ties_rotate_with_the_turn() -> None:
    pool = [B("a"), B("b"), B("c")]
    assert [choose(pool, turn).name for turn in range(4)] == ["a", "b", "c", "a"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("routable", "exclude", "expected"), [
    ((False, True), (), "b"),
    ((True, True), ("a",), "b"),
    ((False, False), (), None),
    ((True, False), ("a",), None),
])
def test_unroutable_and_excluded_are_skipped(routable: tuple[bool, bool], exclude: tuple[str, ...],
                                             expected: str | None) -> None:
    pool = [B("a", routable=routable[0]), B("b", routable=routable[1])]
    chosen = choose(pool, 0, [b for b in pool if b.name in exclude])
    assert (chosen.name if chosen else None) == expected


def test_empty_pool() -> None:
    assert choose([], 5) is None
