"""Typed application state shared by the router's modules: the app keys and what they hold."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy import Engine

from launcher.core.settings import Settings
from router.accounting.seam import Accounting
from router.upstream.proxy import Upstream
from router.errors import Observer
from router.upstream.names import Names
from router.request_log import RequestLog
from router.upstream.snapshot import RegistryView


@dataclass
class RouterState:
    """Everything a request handler needs, found with one lookup; `upstream` exists once started."""

    settings: Settings
    view: RegistryView
    accounting: Accounting
    upstream: Upstream | None = None
    log: RequestLog | None = None
    names: Names = field(default_factory=Names)  # public model names, from the catalog
    # Called once per finished request (access log, metrics); the middleware holds this list.
    observers: list[Observer] = field(default_factory=list)
    # Set when the router is told to stop: /health answers 503 and connections are not kept alive.
    stopping: bool = False


STATE = web.AppKey("llm_launch_state", RouterState)
DB_ENGINE = web.AppKey("llm_launch_db_engine", Engine)  # the registry's SQLAlchemy engine


async def close_when_stopping(request: web.Request, response: web.StreamResponse) -> None:
    """On response prepare: once the router is stopping, no connection is kept alive."""
    if request.app[STATE].stopping:
        response.force_close()
        response.headers["Connection"] = "close"  # aiohttp set its headers before this hook
