"""Running the router on a socket: in the foreground with signals, or started by tests."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Callable

from aiohttp import web

from launcher.core.settings import RouterSettings, SettingsError
from router.connections import GuardedHandler, Limits
from router.state import STATE

LOG = logging.getLogger("router")
BACKLOG = 1024


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are GuardedHandler protocols (deadlines, cap, envelopes)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, rs: RouterSettings,
                 reuse_port: bool = False) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._host, self._port = host, port
        self._reuse_port = reuse_port  # several worker processes on one port: the kernel spreads connections
        self._limits = Limits(rs.header_timeout_s, rs.body_timeout_s, rs.max_connections, rs.retry_after_s)
        self._keepalive_s = rs.keepalive_timeout_s

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def limits(self) -> Limits:
        return self._limits

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def protocol() -> GuardedHandler:
            return GuardedHandler(server, loop=loop, limits=self._limits, keepalive_timeout=self._keepalive_s,
                                  access_log=None)

        self._server = await loop.create_server(protocol, self._host, self._port, backlog=BACKLOG,
                                                reuse_address=True, reuse_port=self._reuse_port)


async def start(app: web.Application, host: str, port: int, grace_s: float,
                reuse_port: bool = False) -> tuple[web.AppRunner, int]:
    """Serve APP on HOST:PORT (0 picks a free port); returns the runner and the bound port."""
    rs = app[STATE].settings.router
    check_connection_settings(rs)
    # handler_cancellation: a client that goes away cancels its handler, which closes the upstream.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=grace_s)
    await runner.setup()
    site = GuardedSite(runner, host, port, rs, reuse_port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()  # e.g. the port is taken: close what start-up opened
        raise
    return runner, int(runner.addresses[0][1])


def check_connection_settings(rs: RouterSettings) -> None:
    """The connection deadlines and caps must be positive: none of them can be switched off."""
    for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s", "max_connections",
                 "max_response_bytes"):
        if not getattr(rs, name) > 0:
            raise SettingsError(f"[router] {name} must be greater than 0, got {getattr(rs, name)}")


async def serve_forever(app: web.Application, host: str, port: int, grace_s: float,
                        ready: Callable[[int], None] | None = None, reuse_port: bool = False) -> None:
    """Serve until SIGTERM or SIGINT, then let in-flight requests finish for up to GRACE_S seconds.

    For a process of its own (the CLI): it tunes the process's garbage collector (see tune_gc).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner, bound = await start(app, host, port, grace_s, reuse_port)
    tune_gc()  # after start-up: the first snapshot (every key) and the ledger's totals are loaded
    if ready is not None:
        ready(bound)
    try:
        await stop.wait()
        await announce_stop(app)
        LOG.info("stopping: waiting up to %g s for requests in flight", grace_s)
    finally:
        await runner.cleanup()


async def announce_stop(app: web.Application) -> None:
    """Before closing the listener: /health says 503 for `stop_delay_s` while requests are still served.

    A load balancer checking /health stops sending new requests meanwhile; responses carry
    `Connection: close`, so clients with kept-alive connections open new ones elsewhere.
    """
    state = app[STATE]
    state.stopping = True
    delay = state.settings.router.stop_delay_s
    if delay > 0:
        LOG.info("stopping: /health answers 503 for %g s before the router stops accepting", delay)
        await asyncio.sleep(delay)


def tune_gc() -> None:
    """Take the cyclic collector off the request path of a long-running router process.

    The start-up heap (SQLAlchemy, Click, alembic, the app) lives as long as the process:
    frozen, full collections no longer walk it (they cost ~35 ms each, about twice a second
    under load). Requests make few cycles, so young collections can wait for 10,000 new
    objects instead of 700 (~25 µs less CPU per request).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def run(app: web.Application, host: str, port: int, grace_s: float,
        ready: Callable[[int], None] | None = None, reuse_port: bool = False) -> None:
    """Run the router in the foreground, on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_forever(app, host, port, grace_s, ready, reuse_port))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve_forever(app, host, port, grace_s, ready, reuse_port))
