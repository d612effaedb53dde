"""One router process serving: logging, the app with its optional supervisor, the socket."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from sqlalchemy import Engine

from launcher.cli.errors import cli_errors
from launcher.control.supervisor_task import supervisor_context
from launcher.core.catalog import CatalogError
from launcher.core.settings import Settings, SettingsError
from router.accounting.ownership import LimitsOwnershipError
from router.app import create_app
from router.serve import run


def setup_logging(workers: int) -> None:
    """Log lines on stderr; with several workers each names its process, to tell them apart."""
    who = "%(name)s[%(process)d]" if workers > 1 else "%(name)s"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s {who} %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter is not the router's news


def serve(settings: Settings, engine: Engine, ready: Callable[[int], None], *, supervise: bool,
          port: int, reuse_port: bool = False) -> None:
    """Build the app on ENGINE and serve it on router.host:PORT until SIGTERM or SIGINT."""
    rs = settings.router
    # The router itself knows nothing of Slurm: the supervisor joins it here, as one more cleanup context.
    contexts = [supervisor_context(settings, engine)] if supervise else []
    with cli_errors(CatalogError, SettingsError):
        app = create_app(settings, engine, contexts=contexts)
    # OSError: the port is taken or the address is not ours.
    with cli_errors(LimitsOwnershipError), \
            cli_errors(OSError, message=lambda exc: f"cannot listen on {rs.host}:{port}: {exc.strerror or exc}"):
        run(app, rs.host, port, rs.grace_period_s, ready=ready, reuse_port=reuse_port)
