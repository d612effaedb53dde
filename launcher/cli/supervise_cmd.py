"""`llm-launch supervise`: the reconcile loop, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from types import FrameType

import click

from launcher.core.catalog import CatalogError, load_catalog, resolve_catalog_path
from launcher.cli.context import CliContext
from launcher.cli.errors import cli_errors
from launcher.slurm.client import SlurmError
from launcher.slurm.connect import open_slurm
from launcher.control.leadership import leadership_for
from launcher.control.supervisor import Supervisor


@click.command()
@click.option("--interval", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between passes [settings: cluster.reconcile_interval_s].")
@click.option("--once", is_flag=True, help="Run one pass, print what it did, and exit.")
@click.option("--catalog", "catalog_path", envvar="LLM_LAUNCH_CATALOG",
              help="Model catalog (TOML) [settings: cluster.catalog].")
@click.pass_obj
def supervise(obj: CliContext, interval: float | None, once: bool, catalog_path: str | None) -> None:
    """Keep deployments in line with Slurm and each model at its desired replica count."""
    # Our own changes at INFO; libraries (alembic's migration chatter) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("llm_launch").setLevel(logging.INFO)
    with cli_errors(CatalogError, SlurmError):
        catalog = load_catalog(resolve_catalog_path(catalog_path, obj.settings.cluster.catalog))
        slurm = open_slurm()
    leadership = leadership_for(obj.engine)
    supervisor = Supervisor(obj.engine, slurm, catalog, obj.settings, leadership=leadership)
    if once:
        if not supervisor.lead():
            raise click.ClickException(f"another supervisor ({leadership.leader() or 'unknown'}) acts on this "
                                       "registry; --once runs only when none does")
        summary = supervisor.run_once()
        click.echo(f"{summary.deployments} deployment(s), {summary.changed} changed, "
                   f"{summary.submitted} submitted, {summary.cancelled} cancelled; "
                   f"{summary.slurm_commands} Slurm command(s), {summary.wall_s * 1000:.0f} ms")
        if summary.error:
            raise click.ClickException(summary.error)
        return
    # Everything loaded so far lives as long as the process: freezing it keeps the collector's full
    # passes from walking it, which otherwise doubles a pass's CPU now and then (33 -> 65 ms).
    gc.freeze()
    stop = threading.Event()
    _stop_on_signals(stop)
    period = interval or obj.settings.cluster.reconcile_interval_s
    logging.getLogger("llm_launch.supervisor").info("supervising every %g s", period)
    supervisor.run_forever(period, stop)


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT end the loop after the pass in progress (no half-applied plan)."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
