"""Health transitions: probes move a backend up or down; failures take it out; no change, no new state."""

from __future__ import annotations

import pytest

from router.upstream.health import DOWN, UNKNOWN, UP, HealthState, after_failure, after_probe


@pytest.mark.parametrize(("start", "ok", "status", "routable"), [
    (UNKNOWN, True, UP, True),
    (UNKNOWN, False, DOWN, False),
    (UP, False, DOWN, False),
    (DOWN, True, UP, True),
])
def test_probe_transitions(start: str, ok: bool, status: str, routable: bool) -> None:
    after = after_probe(HealthState(start), ok, "" if ok else "refused", now=10.0)
    assert (after.status, after.routable, after.since) == (status, routable, 10.0)
    assert after.reason == ("" if ok else "refused")


def test_unknown_is_routable() -> None:
    assert HealthState().routable


@pytest.mark.parametrize("status", [UP, DOWN])
def test_same_result_keeps_the_same_state(status: str) -> None:
    state = HealthState(status, "x", 1.0)
    assert after_probe(state, status == UP, "x", now=2.0) is state


def test_down_for_another_reason_takes_it_and_keeps_since() -> None:
    down = HealthState(DOWN, "/v1/models: connection refused", 1.0)
    after = after_probe(down, False, "/v1/models answered 401", now=5.0)
    assert (after.status, after.reason, after.since) == (DOWN, "/v1/models answered 401", 1.0)


def test_failure_ejects_once() -> None:
    down = after_failure(HealthState(UP), "connect refused", now=3.0)
    assert (down.status, down.reason, down.since) == (DOWN, "connect refused", 3.0)
    assert after_failure(down, "again", now=4.0) is down
