"""Prometheus gauges about job ends: each replica's time left, and successors late to start.

Registered on router.api.metrics' registry by router.app; read from the snapshot at scrape
time, so requests pay nothing.
"""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.state import RouterState
from router.upstream.walltime import NO_END, end_epoch

WAITING = ("pending", "starting")


class HandoverCollector(Collector):
    """`llm_router_backend_seconds_left` and `llm_router_successor_late` (with Slurm's reason)."""

    def __init__(self, state: RouterState, late_s: float) -> None:
        self.state = state
        self.late_s = late_s

    def collect(self) -> Iterator[Metric]:
        """Gauges of the current snapshot."""
        now = time.time()
        left = GaugeMetricFamily("llm_router_backend_seconds_left", "Seconds until the backend's Slurm job ends",
                                 labels=["backend", "model"])
        late = GaugeMetricFamily("llm_router_successor_late", "1 per successor not ready while its predecessor "
                                 "has less than successor_late_s left or has ended", labels=["model", "deployment", "state", "reason"])
        records = {b.record.id: b.record for b in self.state.view.snapshot.backends.values()}
        for backend in self.state.view.snapshot.backends.values():
            if backend.end_at != NO_END and backend.record.state in ("ready", "draining"):
                left.add_metric([str(backend.record.id), backend.model], max(0.0, backend.end_at - now))
        for record in records.values():
            if record.predecessor_id is None or record.state not in WAITING:
                continue
            old = records.get(record.predecessor_id)
            # a predecessor no longer listed has ended: its successor is as late as can be
            ending = old is None or (old.end_time is not None and end_epoch(old.end_time) - now < self.late_s)
            if ending:
                late.add_metric([record.model, str(record.id), record.state, record.reason or ""], 1)
        yield left
        yield late
