"""`llm-launch backends`: model servers that already run somewhere."""

from __future__ import annotations

import dataclasses

import click

from launcher.cli.context import CliContext, echo_json, echo_table
from launcher.cli.errors import cli_errors
from launcher.cli.status_cmd import default_router_url, fetch_router_status
from launcher.core.backend_urls import router_listeners
from launcher.core.deployments import DeploymentError, add_backend, get_deployment
from launcher.core.deployments import list_deployments, mark_gone
from launcher.engines.table import DEFAULT_SECRET_ENV, KINDS


@click.group()
def backends() -> None:
    """Register, list and remove model servers."""


@backends.command()
@click.argument("model")
@click.argument("url")
@click.option("--kind", type=click.Choice(KINDS), default="chat", show_default=True, help="What the server does; sets how it is health-checked.")
@click.option("--secret", envvar=DEFAULT_SECRET_ENV, help="The server's API key (sent upstream by the router).")
@click.pass_obj
def add(ctx: CliContext, model: str, url: str, kind: str, secret: str | None) -> None:
    """Register a running server of MODEL at URL (e.g. http://node12:8001)."""
    settings = ctx.settings
    # The router's own address would loop every request through the router.
    router = router_listeners(settings.router.host, settings.router.port, settings.cluster.router_url)
    with ctx.session() as session:
        with cli_errors(DeploymentError):
            record = add_backend(session, model, url, kind=kind, secret=secret, router=router)
    click.echo(f"added backend {record.id}: {model} at {record.url}")


@backends.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "include_gone", is_flag=True, help="Include removed and ended ones.")
@click.option("--router", "router_url", envvar="LLM_LAUNCH_ROUTER_URL",
              help="Router base URL for health [default: settings router.host:port].")
@click.pass_obj
def list_(ctx: CliContext, as_json: bool, include_gone: bool, router_url: str | None) -> None:
    """List registered backends with the router's health, as `status` shows it (secrets never)."""
    with ctx.session() as session:
        records = list_deployments(session, include_gone=include_gone)
    live = fetch_router_status(router_url or default_router_url(ctx.settings), ctx.settings.router.admin_token) or {}
    health = {r.id: live.get(r.id, {}).get("health") for r in records}
    rows = [{**dataclasses.asdict(r), "secret": bool(r.secret), "health": health[r.id]} for r in records]
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["id", "model", "kind", "state", "health", "url", "job", "owner", "node"],
        [[r.id, r.model, r.kind, r.state, health[r.id] or "-", r.url, r.job_id, r.owner, r.node] for r in records],
    )


@backends.command()
@click.argument("deployment_id", metavar="ID", type=int)
@click.pass_obj
def remove(ctx: CliContext, deployment_id: int) -> None:
    """Stop routing to backend ID (the server itself keeps running)."""
    with ctx.session() as session:
        with cli_errors(DeploymentError):
            row = get_deployment(session, deployment_id)
        mark_gone(session, row, "removed by admin")
    click.echo(f"removed backend {deployment_id}")
