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
    leads, within = {}, {}
    for model in catalog.entries:
        start = start_up_s(startups.get(model, ()), cluster.successor_lead_percentile)
        leads[model] = successor_lead_s(cluster, start)
        within[model] = start + cluster.successor_lead_margin_s
    return Handover(leads, successor_lead_s(cluster, 0.0), cluster.successor_late_s, windows, limits,
                    ready_within_s=within, last_safe_s=last_safe_s(cluster))


def start_ups(session: Session, cluster: ClusterSettings) -> dict[str, float]:
    """Each model's learned start-up (the percentile of its recent submit-to-ready times)."""
    recent = recent_startups(session, cluster.successor_lead_history)
    return {model: start_up_s(times, cluster.successor_lead_percentile) for model, times in recent.items()}


def windows_at(windows: Sequence[Window], now: datetime) -> tuple[Window, ...]:
    """Windows not over yet at NOW."""
    return tuple(w for w in windows if w.end > now)
