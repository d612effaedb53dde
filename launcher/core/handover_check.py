"""The handover arithmetic every part shares: the successor lead, the last safe moment, and
whether a model's time limit can hold a handover at all (pure; `up`, `supervise` and the router
warn with `handover_problems`)."""

from __future__ import annotations

from collections.abc import Mapping

from launcher.core.catalog import CatalogEntry, time_limit_seconds
from launcher.core.settings import ClusterSettings

# sbatch(1), --signal: "Due to the resolution of event handling by Slurm, the signal may be sent
# up to 60 seconds earlier than specified."
SIGNAL_RESOLUTION_S = 60.0
# Steps between the supervisor's decision to drain and the server's stop: a reconcile pass, the
# signal, the job's settle pause (render.DRAIN_SETTLE_S) and the router's next registry read.
DRAIN_SLACK_S = 10.0
# Each job serves at least this share of its limit before its successor is submitted, so a job
# that became ready late is not replaced at once, over and over.
MIN_SERVE_SHARE = 0.25


def last_safe_s(cluster: ClusterSettings) -> float:
    """Time left at which a ready job drains whatever its successor does.

    The router admits no request to a job with less than drain_threshold_s left, and what it
    admitted before fits the time left; the drain needs DRAIN_SLACK_S on top.
    """
    return cluster.drain_threshold_s + DRAIN_SLACK_S


def successor_lead_s(cluster: ClusterSettings, start_s: float) -> float:
    """Seconds before a job's end at which its successor is submitted, for a START_S start-up.

    The successor should serve before Slurm's warning (signal_lead_s, up to SIGNAL_RESOLUTION_S
    early) and before the last safe moment, after its start-up (queue wait included) and a margin.
    """
    warned = max(cluster.signal_lead_s + SIGNAL_RESOLUTION_S, last_safe_s(cluster))
    return max(cluster.successor_lead_floor_s, warned + start_s + cluster.successor_lead_margin_s)


def time_limits(entries: Mapping[str, CatalogEntry], cluster: ClusterSettings) -> dict[str, float]:
    """The --time (seconds) each catalog model's jobs get."""
    limits = {}
    for name, entry in entries.items():
        try:
            limits[name] = float(time_limit_seconds(entry.time or cluster.default_time))
        except ValueError:
            continue  # rendering reports the bad value when a job is submitted
    return limits


def too_short(limit_s: float, lead_s: float) -> bool:
    """Whether a job of LIMIT_S cannot submit its successor a whole lead before its end."""
    return lead_s > limit_s * (1 - MIN_SERVE_SHARE)


def handover_problems(limits: Mapping[str, float], cluster: ClusterSettings,
                      starts: Mapping[str, float] | None = None) -> list[str]:
    """One line per model whose time limit is too short to hold a handover with these settings."""
    lines = []
    for model, limit in sorted(limits.items()):
        start = (starts or {}).get(model, 0.0)
        lead = successor_lead_s(cluster, start)
        if too_short(limit, lead):
            lines.append(
                f"{model}: time limit {limit:g} s is too short for a handover without a gap: a successor needs a "
                f"lead of {lead:g} s (signal_lead_s {cluster.signal_lead_s:g} + Slurm's signal resolution "
                f"{SIGNAL_RESOLUTION_S:g} + start-up {start:g} + successor_lead_margin_s "
                f"{cluster.successor_lead_margin_s:g}) and each job serves {MIN_SERVE_SHARE:.0%} of its limit "
                f"first; give it a time limit over {lead / (1 - MIN_SERVE_SHARE):.0f} s")
    return lines
