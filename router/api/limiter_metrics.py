"""Prometheus metrics of shared mode's limiter: admissions by where they were decided, Redis
errors, leases that expired before their request ended, the live routers and whether Redis answers.

Read at scrape time from the limiter's counters; nothing is reported in the embedded mode.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.accounting.shared import SharedAccounting
from router.state import RouterState


class LimiterCollector(Collector):
    """The shared limiter's counters, at scrape time."""

    def __init__(self, state: RouterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        limiter = self.state.accounting
        if not isinstance(limiter, SharedAccounting):
            return
        stats = limiter.stats
        decided = CounterMetricFamily("llm_router_limiter_decisions", "Admission decisions by where they were "
                                      "made: shared (Redis), local (a router's share while Redis was "
                                      "unreachable, redis_fail_open) or unavailable (503)", labels=["mode"])
        for mode, count in stats.decided.items():
            decided.add_metric([mode], count)
        yield decided
        yield CounterMetricFamily("llm_router_limiter_redis_errors", "Redis operations of the limiter that failed",
                                  value=stats.redis_errors)
        yield CounterMetricFamily("llm_router_limiter_leases_expired", "Requests whose reservation lease had "
                                  "expired before they ended (charged the whole reservation)",
                                  value=stats.leases_expired)
        yield GaugeMetricFamily("llm_router_limiter_routers", "Live routers sharing the limits, as last seen",
                                value=stats.routers)
        yield GaugeMetricFamily("llm_router_limiter_up", "1 while Redis answers, 0 while it does not",
                                value=1 if stats.up else 0)
