"""Wall-time-aware replica choice, worst-case durations, decode rates and idle on-demand pools (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pytest

from router.api.availability import Availability, idle_pools
from router.upstream.walltime import NO_END, DecodeRates, choose_in_time, end_epoch, worst_case_s


@dataclass(eq=False)
class Replica:
    name: str
    end_at: float
    outstanding: int = 0
    routable: bool = True


def pick(replicas: list[Replica], hard: float, soft: float, exclude: tuple[Replica, ...] = ()) -> str | None:
    chosen = choose_in_time(replicas, 0, exclude, hard, soft)
    return chosen.name if chosen else None


@pytest.mark.parametrize("ends, loads, hard, soft, expected", [
    ([1000, 1000], [3, 1], 60, 600, "b"),  # both have time: least loaded
    ([100, 1000], [0, 5], 60, 600, "b"),  # a has too little time for this request: b, busy or not
    ([100, 90], [5, 0], 60, 600, "a"),  # neither has enough: the one that runs longest
    ([50, 1000], [0, 0], 60, 60, "b"),  # a is under the drain threshold
    ([50, 40], [0, 0], 60, 60, None),  # all under it: none
    ([NO_END, 100], [2, 0], 60, 600, "a"),  # a server without an end time always fits
])
def test_choose_in_time(ends: list[float], loads: list[int], hard: float, soft: float, expected: str | None) -> None:
    replicas = [Replica(n, e, o) for n, e, o in zip("ab", ends, loads)]
    assert pick(replicas, hard, soft) == expected


def test_unroutable_and_tried_replicas_are_skipped() -> None:
    a, b = Replica("a", 1000, routable=False), Replica("b", 1000)
    assert pick([a, b], 0, 0, exclude=(b,)) is None


@pytest.mark.parametrize("tokens, rate, expected", [
    (1000, 50.0, 20.0), (1_000_000, 50.0, 900.0), (1000, None, 900.0), (0, 50.0, 900.0),
])
def test_worst_case(tokens: int, rate: float | None, expected: float) -> None:
    assert worst_case_s(tokens, rate, 900.0) == expected


def test_decode_rate_moves_towards_new_answers() -> None:
    rates = DecodeRates()
    assert rates.rate("m") is None
    rates.observe("m", 100, 2.0)
    rates.observe("m", 0, 1.0)  # no tokens: says nothing
    assert rates.rate("m") == 50.0
    rates.observe("m", 100, 1.0)
    assert rates.rate("m") == pytest.approx(60.0)


def test_end_epoch_is_utc() -> None:
    assert end_epoch(datetime(1970, 1, 1, 0, 1)) == 60.0 and end_epoch(None) == NO_END


def test_idle_pools_are_wanted_quiet_and_not_busy() -> None:
    availability = Availability(idle_s=100, on_demand={"x": "x", "y": "y", "z": "z", "w": "w"},
                                last_use={"x": 0.0, "y": 950.0, "z": 0.0})
    targets = {"x": 1, "y": 1, "z": 1, "w": 0}
    assert idle_pools(availability, targets, busy={"z"}, now=1000.0, started=0.0) == ["x"]
