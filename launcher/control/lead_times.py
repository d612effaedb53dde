"""The handover policy of one reconcile pass: lead times learned from the registry, windows, limits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from launcher.core.catalog import Catalog, time_limit_seconds
from launcher.control.handover import Handover, lead_time_s, startup_times
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


def time_limits(catalog: Catalog, cluster: ClusterSettings) -> dict[str, float]:
    """The --time (seconds) each catalog model's jobs get."""
    limits = {}
    for name, entry in catalog.entries.items():
        try:
            limits[name] = float(time_limit_seconds(entry.time or cluster.default_time))
        except ValueError:
            continue  # rendering reports the bad value when a job is submitted
    return limits


def handover_policy(catalog: Catalog, cluster: ClusterSettings, startups: Mapping[str, Sequence[float]],
                    windows: tuple[Window, ...] = ()) -> Handover:
    """Per model: lead = slow recent start-up + margin (>= floor), at most 3/4 of the job's time limit.

    The cap keeps a job whose limit is shorter than the lead from being replaced as soon as it
    is ready, over and over: each job serves at least a quarter of its limit.
    """
    limits = time_limits(catalog, cluster)
    floor, margin, pct = cluster.successor_lead_floor_s, cluster.successor_lead_margin_s, cluster.successor_lead_percentile
    leads = {}
    for model in catalog.entries:
        lead = lead_time_s(startups.get(model, ()), floor, margin, pct)
        leads[model] = min(lead, limits[model] * 0.75) if model in limits else lead
    return Handover(leads, floor, cluster.successor_late_s, windows, limits)


def windows_at(windows: Sequence[Window], now: datetime) -> tuple[Window, ...]:
    """Windows not over yet at NOW."""
    return tuple(w for w in windows if w.end > now)
