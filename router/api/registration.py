"""`POST /internal/register` and `/internal/deregister`: model servers announce themselves.

A job submitted by `llm-launch up` proves itself with its per-job token (only the hash is
stored); a server a user started by hand uses an admin-issued token from `llm-launch tokens
create` (router.api.user_servers: the router first checks that the server answers). Nothing is
written unless the token matches and the URL is a backend's, not the router's. Deregistration
names the deployment that registration answered, never a URL.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from typing import Any, Awaitable, Callable, Sequence

from aiohttp import web
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from launcher.core.backend_urls import BackendUrlError, Listener, RouterAddressError, check_backend_url
from launcher.core.backend_urls import router_listeners
from launcher.core.db import session_factory, utcnow
from launcher.core.deployments import mark_deregistered, mark_registered
from launcher.core.keys import hash_key
from launcher.core.schema import Deployment
from launcher.core.tokens import find_grant
from router.api.claims import Claim, Refused, parse_claim
from router.api.user_servers import check_server, check_user_claim, register_user_server
from router.state import DB_ENGINE, STATE

__all__ = ["Claim", "Refused", "add_routes", "deregister", "register", "token_hash"]
# States in which a job's own token may (re)register it; a gone or draining job's token is spent.
_REGISTRABLE = ("pending", "starting", "ready")
Action = Callable[[Engine, Claim], Awaitable[dict[str, Any]]]


def add_routes(app: web.Application) -> None:
    """Mount the registration endpoints; they write through the registry engine the app holds."""
    app.router.add_post("/internal/register", _register)
    app.router.add_post("/internal/deregister", _deregister)


def token_hash(token: str) -> str:
    """The stored form of a registration token (SHA-256, as for API keys)."""
    return hash_key(token)


def _matches(token: str, stored: str | None) -> bool:
    return stored is not None and hmac.compare_digest(token_hash(token), stored)


async def _register(request: web.Request) -> web.Response:
    router = _listeners(request)
    timeout_s = request.app[STATE].settings.router.health_timeout_s

    async def action(engine: Engine, claim: Claim) -> dict[str, Any]:
        # A user's server is checked from the router's side before anything is written.
        if await asyncio.to_thread(_in_session, engine, functools.partial(_precheck, router=router), claim):
            await check_server(claim, timeout_s)
        return await asyncio.to_thread(_in_session, engine, functools.partial(register, router=router), claim)
    return await _handle(request, action)


def _listeners(request: web.Request) -> list[Listener]:
    """The router's own addresses: as configured, and where this request reached it."""
    listeners = []
    if STATE in request.app:
        settings = request.app[STATE].settings
        listeners = router_listeners(settings.router.host, settings.router.port, settings.cluster.router_url)
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:  # the bound port, also when 0 was asked for
        listeners.append(Listener(str(sockname[0]), int(sockname[1])))
    return listeners


async def _deregister(request: web.Request) -> web.Response:
    async def action(engine: Engine, claim: Claim) -> dict[str, Any]:
        return await asyncio.to_thread(_in_session, engine, deregister, claim)
    return await _handle(request, action)


async def _handle(request: web.Request, action: Action) -> web.Response:
    try:
        claim = parse_claim(await request.read())
        engine = request.app[DB_ENGINE]
        result = await action(engine, claim)
    except OperationalError as exc:  # a full disk, a read-only or locked file: say so, it is not the caller's fault
        reason = str(exc.orig or exc).splitlines()[0]
        return _error(503, f"the registry cannot be written right now: {reason}", "registry_unavailable")
    except Refused as exc:
        return _error(exc.status, str(exc), exc.code)
    if STATE in request.app:  # route to (or stop routing to) it now, not at the next refresh
        await request.app[STATE].view.refresh()
    return web.json_response(result)


def _in_session(engine: Engine, action: Callable[[Session, Claim], Any], claim: Claim) -> Any:
    with session_factory(engine)() as session:
        return action(session, claim)


def register(session: Session, claim: Claim, router: Sequence[Listener] = ()) -> dict[str, Any]:
    """Mark the claimed deployment ready at its URL, or record a user's server (admin-issued token).

    The URL must be a plain http(s) base URL that is not one of ROUTER's own addresses.
    """
    _check_url(claim, router)
    grant = find_grant(session, token_hash(claim.token)) if claim.deployment_id is None else None
    # The hash lookup leaks nothing: an attacker cannot steer SHA-256 prefixes.
    if grant is not None:
        return register_user_server(session, claim, grant)
    if claim.deployment_id is None and claim.job_id is None:
        raise Refused(401, "invalid registration token", "invalid_token")
    row = _claimed_row(session, claim)
    if row.state not in _REGISTRABLE or (row.state == "ready" and row.url != claim.base_url):
        raise Refused(403, f"deployment {row.id} is {row.state}; its token was already used", "token_used")
    mark_registered(session, row, claim.base_url, claim.node, utcnow())
    return {"deployment_id": row.id, "state": row.state}


def _precheck(session: Session, claim: Claim, router: Sequence[Listener]) -> bool:
    """Refuse what would be refused anyway, before the check of a user's server; True for those."""
    _check_url(claim, router)
    grant = find_grant(session, token_hash(claim.token)) if claim.deployment_id is None else None
    if grant is not None:
        check_user_claim(session, claim, grant)
    return grant is not None


def _check_url(claim: Claim, router: Sequence[Listener]) -> None:
    try:
        check_backend_url(claim.url, router)
    except RouterAddressError as exc:
        raise Refused(400, str(exc), "router_address") from None
    except BackendUrlError as exc:
        raise Refused(400, str(exc), "invalid_url") from None


def deregister(session: Session, claim: Claim) -> dict[str, Any]:
    """Stop routing to the claimed deployment: a job drains until Slurm ends it, a manual one is gone."""
    if claim.deployment_id is None and claim.job_id is None:
        raise Refused(400, "deregistration names the deployment: send the deployment_id that registration "
                           "answered", "invalid_request")
    row = _claimed_row(session, claim)
    if row.state == "gone":
        return {"deployment_id": row.id, "state": row.state}
    mark_deregistered(session, row, claim.reason or "deregistered by the server", utcnow())
    return {"deployment_id": row.id, "state": row.state}


def _claimed_row(session: Session, claim: Claim) -> Deployment:
    if claim.deployment_id is not None:
        rows = [row] if (row := session.get(Deployment, claim.deployment_id)) else []
    else:
        # Job ids restart when a cluster's state is wiped: the token tells which row is meant.
        query = select(Deployment).where(Deployment.job_id == claim.job_id).order_by(Deployment.id.desc())
        rows = list(session.scalars(query))
    for row in rows:
        if _matches(claim.token, row.registration_token_hash):
            return row
    raise Refused(401, "invalid registration token", "invalid_token")


def _error(status: int, message: str, code: str) -> web.Response:
    kind = ("authentication_error" if status == 401 else "permission_error" if status == 403
            else "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)
