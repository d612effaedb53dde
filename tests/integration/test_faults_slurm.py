"""Slurm faults under load: a serving job cancelled, or its node set down, while clients keep asking.

Real jobs from the job templates run the fake backend, register with the real router and are
replaced by the real supervisor. Each test prints `FAULT <name>: sent=… ok=… failed=… lost=…`
(run with -s): failed requests got a well-formed error (503 while no replica was ready, or an
error event on a stream that was under way); none may be lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.core.schema import Deployment

from tests.conftest import Registry, RouterHandle
from tests.integration.fault_tools import Tally, one_request
from tests.integration.slurm_fixtures import SlurmCluster, slurm_cluster  # noqa: F401
from tests.integration.test_supervisor import FAKE_SERVER, Harness, private_cluster, real_harness  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.slurm
BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


class Clients:
    """Threads sending requests (every third one streamed) until stopped."""

    def __init__(self, url: str, key: str, tally: Tally, count: int = 4) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(url, key, tally, i), daemon=True)
                         for i in range(count)]
        for thread in self._threads:
            thread.start()

    def _loop(self, url: str, key: str, tally: Tally, n: int) -> None:
        while not self._stop.is_set():
            n += 1
            one_request(url, key, tally, body=BODY, stream=n % 3 == 0, timeout=30)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def _ready(harness: Harness, count: int) -> list[Deployment]:
    """COUNT ready replicas, or [] while there are fewer."""
    ready = [r for r in harness.rows("fake") if r.state == "ready"]
    return ready[:count] if len(ready) >= count else []


def _cleanup(harness: Harness) -> None:
    for row in harness.rows("fake"):
        harness.slurm.cancel(str(row.job_id))


def test_job_cancelled_during_load(
    slurm_cluster: SlurmCluster, registry: Registry, make_router: Callable[..., RouterHandle],  # noqa: F811
    tmp_path: Path,
) -> None:
    router = make_router()
    harness = real_harness(slurm_cluster.client(), registry.engine, router.url, tmp_path, FAKE_SERVER)
    key = registry.add_key("under-load")
    harness.want("fake", 2)
    halt = harness.loop(interval_s=1.0)
    tally = Tally("Slurm job cancelled during load (2 replicas)")
    try:
        first = wait_for(lambda: _ready(harness, 2), 60, "two ready replicas")[0]
        clients = Clients(router.url, key, tally)
        wait_for(lambda: tally.ok >= 50, 30, "traffic on both replicas")
        harness.slurm.cancel(str(first.job_id))
        wait_for(lambda: harness.rows("fake")[0].state == "gone", 30, "the supervisor to mark it gone")
        wait_for(lambda: _ready(harness, 2), 60, "the replacement")
        _serves_again(tally)
        clients.stop()
    finally:
        halt()
        _cleanup(harness)
    tally.report()
    assert tally.lost == 0
    assert tally.failed <= 8  # at most the requests under way on the cancelled job


def test_node_set_down_during_load(
    private_cluster: SlurmCluster, registry: Registry, make_router: Callable[..., RouterHandle],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The only node goes down: every replica dies; clients get 503s until replacements serve."""
    router = make_router()
    harness = real_harness(private_cluster.client(), registry.engine, router.url, tmp_path, FAKE_SERVER)
    node = private_cluster.node
    key = registry.add_key("node-down")
    harness.want("fake", 2)
    halt = harness.loop(interval_s=1.0)
    tally = Tally("Slurm node set down during load (its 2 replicas)")
    try:
        wait_for(lambda: _ready(harness, 2), 60, "two ready replicas")
        clients = Clients(router.url, key, tally)
        wait_for(lambda: tally.ok >= 50, 30, "traffic")
        harness.slurm.set_node_state(node, "DOWN", "fault test")
        try:
            wait_for(lambda: [r.state for r in harness.rows("fake")[:2]] == ["gone"] * 2, 30, "both gone")
        finally:
            harness.slurm.set_node_state(node, "RESUME")
        wait_for(lambda: _ready(harness, 1), 90, "a replacement on the resumed node")
        _serves_again(tally)
        clients.stop()
    finally:
        halt()
        _cleanup(harness)
    tally.report()
    assert tally.lost == 0
    assert tally.statuses.get("503", 0) + tally.statuses.get("stream-error-event", 0) + tally.statuses.get(
        "502", 0) + tally.statuses.get("504", 0) == tally.failed


def _serves_again(tally: Tally) -> None:
    served_before = tally.ok
    wait_for(lambda: tally.ok >= served_before + 50, 30, "traffic after the replacement")
