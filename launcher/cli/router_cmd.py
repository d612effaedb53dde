"""`llm-launch router`: the OpenAI-compatible router, in the foreground."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import click

from launcher.cli.context import CliContext
from launcher.cli.router_serve import serve, setup_logging
from launcher.cli.router_workers import run_workers
from launcher.core.settings import Settings, SettingsError
from launcher.core.settings_overrides import with_overrides


@click.command()
@click.option("--host", help="Address to listen on (settings: router.host).")
@click.option("--port", type=int, help="Port to listen on (settings: router.port).")
@click.option("--workers", type=int,
              help="Router processes on the port (settings: router.workers, default 1); above 1 needs "
                   "shared mode or --no-accounting.")
@click.option("--no-accounting", is_flag=True, help="No quotas and no usage ledger (benchmarks, development).")
@click.option(
    "--catalog", metavar="PATH|production|demo",
    help="Model catalog for public names, defaults and limits (default: env LLM_LAUNCH_CATALOG, "
         "else settings cluster.catalog; none: a model's name is its public name).",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="NAME=VALUE",
    help="Override any [router] setting, e.g. --set stall_timeout_s=600 (repeatable).",
)
@click.pass_obj
def router(ctx: CliContext, host: str | None, port: int | None, workers: int | None, no_accounting: bool,
           catalog: str | None, overrides: tuple[str, ...]) -> None:
    """Run the router until SIGTERM or Ctrl-C; requests in flight get router.grace_period_s to finish."""
    settings = with_router_overrides(ctx.settings, overrides, host=host, port=port, workers=workers,
                                     accounting=False if no_accounting else None)
    chosen = catalog or os.environ.get("LLM_LAUNCH_CATALOG")
    if chosen:
        settings = dataclasses.replace(settings, cluster=dataclasses.replace(settings.cluster, catalog=chosen))
    rs = settings.router
    if rs.workers != 1:
        run_workers(settings, ctx.db_url)
        return
    setup_logging(1)
    serve(settings, ctx.engine, lambda bound: click.echo(f"router listening on http://{rs.host}:{bound}/v1", err=True),
          supervise=rs.supervise, port=rs.port)


def with_router_overrides(settings: Settings, overrides: tuple[str, ...], **given: Any) -> Settings:
    """SETTINGS with --set NAME=VALUE pairs (router section) and the explicit options applied."""
    pairs = [*overrides, *(f"router.{k}={_toml(v)}" for k, v in given.items() if v is not None)]
    try:
        return with_overrides(settings, pairs, default_section="router")
    except SettingsError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)
