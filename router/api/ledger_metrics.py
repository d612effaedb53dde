"""Prometheus metrics of the usage ledger and the database: rows waiting (in memory, in spill
files), written, spilled and dropped, and database errors by source.

Registered on router.api.metrics' registry by router.app; read at scrape time from the ledger's
and the registry view's counters, so requests pay nothing. Without accounting (no ledger) only
the registry's errors are reported.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.accounting.ledger import Ledger
from router.state import RouterState


class LedgerCollector(Collector):
    """The ledger's row counts and the database errors, at scrape time."""

    def __init__(self, state: RouterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        errors = CounterMetricFamily("llm_router_database_errors", "Database operations that failed "
                                     "(the ledger's writes, the registry's refreshes)", labels=["source"])
        errors.add_metric(["registry"], self.state.view.errors)
        ledger = getattr(self.state.accounting, "ledger", None)
        if isinstance(ledger, Ledger):
            errors.add_metric(["ledger"], ledger.db_errors)
            yield from _ledger_metrics(ledger)
        yield errors


def _ledger_metrics(ledger: Ledger) -> Iterator[Metric]:
    yield GaugeMetricFamily("llm_router_ledger_pending_rows", "Usage rows waiting in memory to be written",
                            value=ledger.pending)
    yield GaugeMetricFamily("llm_router_ledger_spill_file_rows", "Usage rows waiting in spill files",
                            value=ledger.spilled)
    yield CounterMetricFamily("llm_router_ledger_written_rows", "Usage rows written to the database",
                              value=ledger.written_rows)
    yield CounterMetricFamily("llm_router_ledger_spilled_rows", "Usage rows moved to a spill file "
                              "while the database was unavailable", value=ledger.spilled_rows_total)
    yield CounterMetricFamily("llm_router_ledger_dropped_rows", "Usage rows the database refused "
                              "(logged and dropped)", value=ledger.dropped_rows)
