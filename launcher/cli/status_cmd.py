"""`llm-launch status`: every deployment with Slurm's view, time left, and the router's view."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

import click

from launcher.cli.context import CliContext, echo_json, echo_table
from launcher.core.catalog import Catalog, CatalogError, load_catalog, resolve_catalog_path
from launcher.core.db import utcnow
from launcher.core.deployments import DeploymentRecord, list_deployments
from launcher.core.settings import Settings
from launcher.core.targets import Target, load_targets
from launcher.control.lead_times import start_ups
from launcher.control.leadership import leadership_for

HEADERS = ["id", "model", "job", "owner", "state", "node", "url", "time left", "health", "in flight", "links"]
# The router's answer: {"deployments": [{"id": 3, "health": "healthy", "in_flight": 2}, ...]}
STATUS_PATH = "/internal/status"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", is_flag=True, help="Refresh every --every seconds until Ctrl-C.")
@click.option("--every", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--all", "show_all", is_flag=True, help="Include deployments that are gone.")
@click.option("--router", "router_url", envvar="LLM_LAUNCH_ROUTER_URL",
              help="Router base URL for health and load [default: settings router.host:port].")
@click.pass_obj
def status(obj: CliContext, as_json: bool, watch: bool, every: float, show_all: bool,
           router_url: str | None) -> None:
    """Each deployment: model, job, state (Slurm's reason while pending), node, URL, time left, health."""
    while True:
        report = _gather(obj, show_all, router_url or default_router_url(obj.settings))
        if watch and not as_json:
            click.clear()
        (echo_json if as_json else _echo_report)(report)
        if not watch:
            return
        try:
            time.sleep(every)
        except KeyboardInterrupt:
            return


def _gather(obj: CliContext, show_all: bool, router_url: str) -> dict[str, Any]:
    with obj.session() as session:
        rows = list_deployments(session, include_gone=show_all)
        targets = load_targets(session)
        cluster = obj.settings.cluster
        starts = start_ups(session, cluster, _catalog_or_none(cluster.catalog))
        within = {m: s + cluster.successor_lead_margin_s for m, s in starts.items()}
    live = fetch_router_status(router_url, obj.settings.router.admin_token)
    report = build_report(rows, targets, live, utcnow(), cluster.successor_late_s, within)
    return {**report, "supervisor": leadership_for(obj.engine).leader()}


def _catalog_or_none(path: str) -> Catalog | None:
    """The catalog, for each model's start deadline; a broken one must not take `status` down."""
    try:
        return load_catalog(resolve_catalog_path(None, path))
    except (CatalogError, OSError):
        return None


def default_router_url(settings: Settings) -> str:
    """Where this machine reaches the router: its bind address (a wildcard means localhost)."""
    host = settings.router.host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    return f"http://{host}:{settings.router.port}"


def fetch_router_status(router_url: str, admin_token: str, timeout_s: float = 1.0) -> dict[int, dict[str, Any]] | None:
    """Health and in-flight counts by deployment id; None when the router does not answer."""
    request = urllib.request.Request(router_url.rstrip("/") + STATUS_PATH,
                                     headers={"Authorization": f"Bearer {admin_token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (http only)
            data = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    items = data.get("deployments") if isinstance(data, dict) else None
    if isinstance(items, dict):
        items = [{"id": key, **value} for key, value in items.items() if isinstance(value, dict)]
    if not isinstance(items, list):
        return None
    return {int(i["id"]): i for i in items if isinstance(i, dict) and str(i.get("id", "")).isdigit()}


def build_report(rows: Sequence[DeploymentRecord], targets: Mapping[str, Target],
                 live: Mapping[int, Mapping[str, Any]] | None, now: datetime, late_s: float = 300.0,
                 ready_within: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The status as plain data (what --json prints); pure.

    A successor is `successor_late` once it is not ready READY_WITHIN[model] seconds after its
    submission (what its lead predicted); for a model without that, once its predecessor has
    less than LATE_S left.
    """
    successors = {r.predecessor_id: r.id for r in rows if r.predecessor_id is not None}
    state_of = {r.id: r.state for r in rows}
    by_id = {r.id: r for r in rows}
    deployments = []
    for row in rows:
        seen = (live or {}).get(row.id, {})
        left = (row.end_time - now).total_seconds() if row.end_time and row.state != "gone" else None
        deployments.append({
            "id": row.id, "model": row.model, "job_id": row.job_id, "owner": row.owner, "state": row.state,
            "reason": row.reason, "expected_start": row.expected_start, "node": row.node, "url": row.url,
            "end_time": row.end_time, "time_left_s": None if left is None else max(0, int(left)),
            "health": seen.get("health"), "in_flight": seen.get("in_flight"),
            "predecessor_id": row.predecessor_id, "successor_id": successors.get(row.id),
            **_successor(by_id.get(successors.get(row.id, -1)), left, late_s, ready_within or {}, now),
        })
    models = []
    for target in targets.values():
        states = [r.state for r in rows if r.model == target.model]
        models.append({**asdict(target), "ready_replicas": states.count("ready"),
                       "starting_replicas": states.count("pending") + states.count("starting")})
    return {"router_reachable": live is not None, "deployments": deployments, "models": models}


def _successor(row: DeploymentRecord | None, left: float | None, late_s: float,
               ready_within: Mapping[str, float], now: datetime) -> dict[str, Any]:
    state = row.state if row else None
    waiting = row is not None and row.state in ("pending", "starting")
    within = ready_within.get(row.model) if row else None
    if waiting and row and within is not None and row.submitted_at is not None:
        late = (now - row.submitted_at).total_seconds() > within
    else:
        late = waiting and left is not None and left < late_s
    return {"successor_state": state, "successor_late": late}


def _echo_report(report: Mapping[str, Any]) -> None:
    table = [[d["id"], d["model"], d["job_id"] or "-", d["owner"] or "-", state_text(d), d["node"] or "-", d["url"] or "-",
              duration_text(d["time_left_s"]), _or_dash(d["health"]), _or_dash(d["in_flight"]), links_text(d)]
             for d in report["deployments"]]
    if table:
        echo_table(HEADERS, table)
    else:
        click.echo("no deployments")
    for model in report["models"]:
        line = (f"{model['model']}: {model['ready_replicas']} ready, {model['starting_replicas']} starting, "
                f"{model['desired_replicas']} wanted")
        if model["stopped_reason"]:
            line += f"; STOPPED: {model['stopped_reason']}"
        elif model["next_attempt_at"]:
            line += f"; {model['quick_failures']} quick failure(s), next try at {model['next_attempt_at']:%H:%M:%S} UTC"
        click.echo(line)
    if not report["router_reachable"]:
        click.echo("router status not reachable: health and in-flight unknown (-)")
    if report.get("supervisor"):
        click.echo(f"supervisor: {report['supervisor']} leads")
    else:
        click.echo("supervisor: none running: nothing starts, replaces or scales deployments "
                   "(run `llm-launch supervise`, or a router with supervise = true)")


def state_text(d: Mapping[str, Any]) -> str:
    """State with its why: Slurm's reason and expected start while pending, the final state when gone."""
    text = str(d["state"])
    detail = [str(d["reason"])] if d["reason"] else []
    if d["state"] == "pending" and d["expected_start"]:
        detail.append(f"start ~{d['expected_start']:%H:%M:%S} UTC")
    if d["state"] == "pending" and d.get("predecessor_id"):
        start = f"expected start {d['expected_start']:%H:%M:%S} UTC" if d["expected_start"] else "no expected start yet"
        return f"pending: replacement queued in Slurm (reason {d['reason'] or '-'}, {start})"
    return f"{text} ({', '.join(detail)})" if detail else text


def duration_text(seconds: int | None) -> str:
    """1d02h, 3h05m, 4m10s, 12s; '-' when unknown."""
    if seconds is None:
        return "-"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def links_text(d: Mapping[str, Any]) -> str:
    """Successor / predecessor links: 'after #3', 'next #7'."""
    parts = [f"after #{d['predecessor_id']}"] if d["predecessor_id"] else []
    if d["successor_id"]:
        waiting = d.get("successor_state") not in (None, "ready")
        late = " LATE" if d.get("successor_late") else ""
        parts.append(f"next #{d['successor_id']}" + (f" {d['successor_state']}{late}" if waiting else ""))
    return ", ".join(parts) or "-"


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)
