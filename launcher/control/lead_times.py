"""The handover policy of one reconcile pass: lead times learned from the registry, windows, limits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from launcher.core.catalog import Catalog
from launcher.control.handover import Handover, start_up_s, startup_times
from launcher.core.handover_check import last_safe_s, successor_lead_s, time_limits
from launcher.core.maintenance import Window
from launcher.core.schema import Deployment
from launcher.core.settings import ClusterSettings

# Rows read per pass for the history: enough for the last N jobs of a few dozen models.
_HISTORY_ROWS = 2000
# Until a model has this many start-ups on record, its lead counts on its start deadline: a first
# job that started at once on an empty node says little about a successor that must start beside
# a busy replica (seen: 22 s, then 263 s for the same vLLM job).
LEARNED_AFTER = 3


def recent_startups(session: Session, per_model: int) -> dict[str, list[float]]:
    """Submit-to-ready seconds of each model's last PER_MODEL jobs that became ready."""
    query = (select(Deployment.model, Deployment.submitted_at, Deployment.ready_at)
             .where(Deployment.submitted_at.is_not(None), Deployment.ready_at.is_not(None),
                    Deployment.job_id.is_not(None))
             .order_by(Deployment.id.desc()).limit(_HISTORY_ROWS))
    return startup_times(((m, s, r) for m, s, r in session.execute(query) if s and r), per_model)


def handover_policy(catalog: Catalog, cluster: ClusterSettings, startups: Mapping[str, Sequence[float]],
                    windows: tuple[Window, ...] = ()) -> Handover:
    """Per model: the lead from its learned start-up (handover_check.successor_lead_s), and the last safe moment.

    The lead is not capped by the time limit: Handover.due_at lets each job serve a share of its
    limit first, and `handover_problems` says when a limit is too short for the lead.
    """
    limits = time_limits(catalog.entries, cluster)
    deadlines = start_deadlines(catalog, cluster)
    leads, within = {}, {}
    for model in catalog.entries:
        start = expected_start_s(startups.get(model, ()), cluster.successor_lead_percentile, deadlines[model])
        leads[model] = successor_lead_s(cluster, start)
        within[model] = start + cluster.successor_lead_margin_s
    return Handover(leads, successor_lead_s(cluster, 0.0), cluster.successor_late_s, windows, limits,
                    ready_within_s=within, last_safe_s=last_safe_s(cluster))


def expected_start_s(startups: Sequence[float], percentile: float, deadline_s: float) -> float:
    """The start-up a lead counts on: the learned percentile, at least DEADLINE_S until LEARNED_AFTER were seen."""
    learned = start_up_s(startups, percentile)
    return learned if len(startups) >= LEARNED_AFTER else max(learned, deadline_s)


def start_deadlines(catalog: Catalog | None, cluster: ClusterSettings) -> dict[str, float]:
    """Each catalog model's start deadline (its own, else the cluster's)."""
    entries = catalog.entries if catalog else {}
    return {name: float(e.start_deadline or cluster.start_deadline_s) for name, e in entries.items()}


def start_ups(session: Session, cluster: ClusterSettings, catalog: Catalog | None = None) -> dict[str, float]:
    """Each model's expected start-up, as the handover lead counts it (see expected_start_s)."""
    recent = recent_startups(session, cluster.successor_lead_history)
    deadlines = start_deadlines(catalog, cluster)
    return {model: expected_start_s(recent.get(model, ()), cluster.successor_lead_percentile,
                                    deadlines.get(model, float(cluster.start_deadline_s)))
            for model in set(recent) | set(deadlines)}


def windows_at(windows: Sequence[Window], now: datetime) -> tuple[Window, ...]:
    """Windows not over yet at NOW."""
    return tuple(w for w in windows if w.end > now)
