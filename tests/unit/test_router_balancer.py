"""Balancing: fewest requests in flight wins, equals take turns, dead ones are skipped."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from router.upstream.balancer import choose_backend


@dataclass(eq=False)
class R:
    name: str
    end_at: float = float("inf")
    outstanding: int = 0
    routable: bool = True


def choose(pool: list[R], turn: int, exclude: list[R] | None = None) -> R | None:
    """The balancer as the proxy calls it for a request without time constraints."""
    return choose_backend(pool, turn, exclude or (), 0.0, 0.0)


def test_fewest_outstanding_wins() -> None:
    pool = [R("a", outstanding=3), R("b", outstanding=1), R("c", outstanding=2)]
    assert choose(pool, 0).name == "b"  # type: ignore[union-attr]


def test_ties_rotate_with_the_turn() -> None:
    pool = [R("a"), R("b"), R("c")]
    assert [choose(pool, turn).name for turn in range(4)] == ["a", "b", "c", "a"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("routable", "exclude", "expected"), [
    ((False, True), (), "b"),
    ((True, True), ("a",), "b"),
    ((False, False), (), None),
    ((True, False), ("a",), None),
])
def test_unroutable_and_excluded_are_skipped(routable: tuple[bool, bool], exclude: tuple[str, ...],
                                             expected: str | None) -> None:
    pool = [R("a", routable=routable[0]), R("b", routable=routable[1])]
    chosen = choose(pool, 0, [b for b in pool if b.name in exclude])
    assert (chosen.name if chosen else None) == expected


def test_empty_pool() -> None:
    assert choose([], 5) is None


def test_large_pool_spreads_equal_load_over_every_replica() -> None:
    pool = [R(str(i)) for i in range(100)]
    chosen = {choose_backend(pool, turn, (), 0.0, 0.0).name for turn in range(2000)}  # type: ignore[union-attr]
    assert len(chosen) == 100


def test_large_pool_avoids_busy_replicas() -> None:
    pool = [R(str(i), outstanding=50 if i < 50 else 0) for i in range(100)]
    picks = [int(choose_backend(pool, turn, (), 0.0, 0.0).name) for turn in range(1000)]  # type: ignore[union-attr]
    assert sum(1 for p in picks if p < 50) < 300  # the better of two: a busy one only when both are


def test_large_pool_keeps_the_wall_time_rules() -> None:
    # 40 draining (end before the threshold at 60), 50 too short for this request (soft end 600),
    # 9 unroutable, 1 excluded, and only replica 99 runs long enough: every request goes there.
    pool = ([R(f"drain{i}", end_at=50) for i in range(40)] + [R(f"short{i}", end_at=300) for i in range(50)]
            + [R(f"down{i}", routable=False) for i in range(9)] + [R("tried"), R("long", end_at=5000)])
    tried = (pool[-2],)
    assert {choose_backend(pool, turn, tried, 60.0, 600.0).name for turn in range(500)} == {"long"}  # type: ignore[union-attr]
    # Without the long one, the short replica that runs longest, never a draining one.
    pool[-1].routable = False
    pool[41].end_at = 400
    assert {choose_backend(pool, turn, tried, 60.0, 600.0).name for turn in range(200)} == {"short1"}  # type: ignore[union-attr]
    pool[40:90] = []
    assert choose_backend(pool, 7, tried, 60.0, 600.0) is None
