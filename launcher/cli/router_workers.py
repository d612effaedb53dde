"""`llm-launch router --workers N`: N router processes on one port, kept up by this one.

The parent opens no database and builds no app: each worker is a fresh interpreter that opens
its own registry connections and event loop (router/workers.py). Limits stay exact across
workers only when they live outside the processes, hence the checks in `check_workers`.
"""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection

import click
from sqlalchemy.engine import make_url

from launcher.cli.context import CliContext
from launcher.cli.errors import cli_errors
from launcher.cli.router_serve import serve, setup_logging
from launcher.core.settings import Settings
from router.workers import WorkerError, WorkerPool, reserve_port

STOP_MARGIN_S = 30.0  # past stop_delay_s + grace_period_s: the ledger's last flush, the app's cleanup


def check_workers(settings: Settings, db_url: str) -> None:
    """Refuse worker counts whose limits or ledger would not hold across processes."""
    rs = settings.router
    if rs.workers < 1:
        raise click.ClickException(f"--workers must be at least 1, got {rs.workers}")
    if rs.workers == 1 or not rs.accounting:
        return
    # Embedded limits live in one process's memory: N workers would each admit a key's whole limit.
    if not rs.redis_url:
        raise click.ClickException(
            f"--workers {rs.workers} needs shared mode (a PostgreSQL registry and [router] redis_url) or "
            "--no-accounting: in the embedded mode each worker would enforce every limit on its own "
            "(admin guide, 'Several workers on one host')")
    # The ledger of N processes on one SQLite file would queue on its single writer lock.
    if make_url(db_url).get_backend_name() != "postgresql":
        raise click.ClickException(
            f"--workers {rs.workers} with accounting needs a PostgreSQL registry (shared mode), not SQLite; "
            "or use --no-accounting (admin guide, 'Several workers on one host')")


def run_workers(settings: Settings, db_url: str) -> None:
    """Serve with router.workers processes until SIGTERM or SIGINT; exits with their status."""
    rs = settings.router
    check_workers(settings, db_url)
    setup_logging(rs.workers)
    port, reserved = rs.port, None
    if port == 0:  # one free port for all workers, held here so restarts find it free
        with cli_errors(OSError, message=lambda exc: f"cannot listen on {rs.host}:0: {exc.strerror or exc}"):
            reserved = reserve_port(rs.host)
        port = reserved.getsockname()[1]
    pool = WorkerPool(serve_worker, (settings, db_url, port), rs.workers,
                      stop_timeout_s=rs.stop_delay_s + rs.grace_period_s + STOP_MARGIN_S)

    def announce(bound: int) -> None:
        click.echo(f"router listening on http://{rs.host}:{bound}/v1 ({rs.workers} workers)", err=True)

    try:
        with cli_errors(WorkerError):
            status = pool.run(announce)
    finally:
        if reserved is not None:
            reserved.close()
    sys.exit(status)


def serve_worker(index: int, ready: Connection, settings: Settings, db_url: str, port: int) -> None:
    """One worker process (spawned): its own registry engine, app and event loop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM for every worker
    setup_logging(settings.router.workers)
    ctx = CliContext(db_option=db_url, _settings=settings)
    try:
        # Only worker 0 runs the in-router supervisor: the leader lock would leave any other one idle.
        serve(settings, ctx.engine, ready.send, supervise=settings.router.supervise and index == 0,
              port=port, reuse_port=True)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
