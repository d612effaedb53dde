"""`POST /internal/register` and `/internal/deregister`: model servers announce themselves.

A job submitted by `llm-launch up` proves itself with its per-job token (only the hash is
stored); a server a user started by hand uses an admin-issued token from `llm-launch tokens
create`, and gets a deployment row (the same one when it registers again at the same URL).
Nothing is written unless the token matches and the URL is a backend's, not the router's.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
from dataclasses import dataclass
from typing import Any, Sequence

from aiohttp import web
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from launcher.core.backend_urls import BackendUrlError, Listener, RouterAddressError, check_backend_url
from launcher.core.backend_urls import router_listeners
from launcher.core.db import session_factory, utcnow
from launcher.core.deployments import add_backend, find_registered, mark_deregistered, mark_registered
from launcher.core.deployments import mark_reregistered
from launcher.core.keys import hash_key
from launcher.core.schema import Deployment, RegistrationToken
from launcher.core.tokens import find_grant
from launcher.engines.table import KINDS
from router.state import DB_ENGINE, STATE

ENGINE_KEY = web.AppKey("registration_engine", Engine)
# States in which a job's own token may (re)register it; a gone or draining job's token is spent.
_REGISTRABLE = ("pending", "starting", "ready")


class Refused(Exception):
    """A registration that is refused: HTTP status and a message for the caller."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class Claim:
    """What a server sends: who it is, where it listens, and its proof."""

    token: str
    url: str = ""
    deployment_id: int | None = None
    job_id: str | None = None
    node: str | None = None
    model: str | None = None
    kind: str = "chat"
    secret: str | None = None
    reason: str | None = None


def add_routes(app: web.Application, engine: Engine | None = None) -> None:
    """Mount the registration endpoints; the engine defaults to the registry engine the app holds."""
    if engine is not None:
        app[ENGINE_KEY] = engine
    app.router.add_post("/internal/register", _register)
    app.router.add_post("/internal/deregister", _deregister)


def token_hash(token: str) -> str:
    """The stored form of a registration token (SHA-256, as for API keys)."""
    return hash_key(token)


def _matches(token: str, stored: str | None) -> bool:
    return stored is not None and hmac.compare_digest(token_hash(token), stored)


async def _register(request: web.Request) -> web.Response:
    return await _handle(request, functools.partial(register, router=_listeners(request)))


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
    return await _handle(request, deregister)


async def _handle(request: web.Request, action: Any) -> web.Response:
    try:
        claim = _parse(await request.read())
        engine = _engine(request.app)
        result = await asyncio.to_thread(_in_session, engine, action, claim)
    except OperationalError as exc:  # a full disk, a read-only or locked file: say so, it is not the caller's fault
        reason = str(exc.orig or exc).splitlines()[0]
        return _error(503, f"the registry cannot be written right now: {reason}", "registry_unavailable")
    except Refused as exc:
        return _error(exc.status, str(exc), exc.code)
    if STATE in request.app:  # route to (or stop routing to) it now, not at the next refresh
        await request.app[STATE].view.refresh()
    return web.json_response(result)


def _in_session(engine: Engine, action: Any, claim: Claim) -> dict[str, Any]:
    with session_factory(engine)() as session:
        result: dict[str, Any] = action(session, claim)
        return result


def _engine(app: web.Application) -> Engine:
    if ENGINE_KEY in app:
        return app[ENGINE_KEY]
    if DB_ENGINE in app:  # the router's own registry engine (create_app stores it)
        return app[DB_ENGINE]
    raise Refused(503, "registration is not configured on this router", "unavailable")


def _parse(body: bytes) -> Claim:
    try:
        data = json.loads(body)
    except ValueError:
        raise Refused(400, "body must be JSON", "invalid_json") from None
    if not isinstance(data, dict) or not isinstance(data.get("token"), str) or not data["token"]:
        raise Refused(401, "a registration token is required", "invalid_token")
    fields = {k: data[k] for k in Claim.__dataclass_fields__ if data.get(k) is not None}
    if "deployment_id" in fields:
        fields["deployment_id"] = _whole(fields["deployment_id"])
    if "job_id" in fields:
        fields["job_id"] = str(fields["job_id"])
    if not all(isinstance(v, str) for k, v in fields.items() if k != "deployment_id"):
        raise Refused(400, "registration fields must be strings", "invalid_request")
    return Claim(**fields)


def _whole(value: object) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    # Bounded to SQLite's 64-bit INTEGER: a larger id names no row, and would crash the lookup.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    raise Refused(400, "deployment_id must be a whole number", "invalid_request")


def register(session: Session, claim: Claim, router: Sequence[Listener] = ()) -> dict[str, Any]:
    """Mark the claimed deployment ready at its URL, or create one for an admin-issued token.

    The URL must be a plain http(s) base URL that is not one of ROUTER's own addresses.
    """
    try:
        check_backend_url(claim.url, router)
    except RouterAddressError as exc:
        raise Refused(400, str(exc), "router_address") from None
    except BackendUrlError as exc:
        raise Refused(400, str(exc), "invalid_url") from None
    if claim.deployment_id is None and claim.job_id is None:
        return _register_own(session, claim)
    row = _claimed_row(session, claim)
    if row.state not in _REGISTRABLE or (row.state == "ready" and row.url != _url(claim)):
        raise Refused(403, f"deployment {row.id} is {row.state}; its token was already used", "token_used")
    mark_registered(session, row, _url(claim), claim.node, utcnow())
    return {"deployment_id": row.id, "state": row.state}


def deregister(session: Session, claim: Claim) -> dict[str, Any]:
    """Stop routing to the claimed deployment: a job drains until Slurm ends it, a manual one is gone."""
    row = _claimed_row(session, claim) if claim.deployment_id or claim.job_id else _own_row(session, claim)
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


def _own_row(session: Session, claim: Claim) -> Deployment:
    if not claim.url:
        raise Refused(400, "deregistration needs deployment_id, job_id or url", "invalid_request")
    query = select(Deployment).where(Deployment.url == _url(claim), Deployment.state != "gone")
    for row in session.scalars(query):
        if _matches(claim.token, row.registration_token_hash):
            return row
    raise Refused(401, "invalid registration token", "invalid_token")


def _register_own(session: Session, claim: Claim) -> dict[str, Any]:
    grant = find_grant(session, token_hash(claim.token))
    # The hash lookup leaks nothing: an attacker cannot steer SHA-256 prefixes.
    if grant is None:
        raise Refused(401, "invalid registration token", "invalid_token")
    _check_grant(grant, claim)
    # The same server announcing itself again (a retry, a restart) keeps its row and id.
    row = find_registered(session, grant.token_hash, claim.model or "", _url(claim))
    if row is not None:
        record = mark_reregistered(session, row, kind=claim.kind, secret=claim.secret, node=claim.node, now=utcnow())
        return {"deployment_id": record.id, "state": record.state}
    # The checks above are the ones add_backend makes, with the router's own messages.
    record = add_backend(session, claim.model or "", _url(claim), kind=claim.kind, secret=claim.secret,
                         node=claim.node, registration_token_hash=grant.token_hash)
    return {"deployment_id": record.id, "state": record.state}


def _check_grant(grant: RegistrationToken, claim: Claim) -> None:
    if grant.expires_at is not None and grant.expires_at <= utcnow():
        raise Refused(403, "registration token expired", "token_expired")
    if not claim.model:
        raise Refused(400, "model is required when registering with an admin-issued token", "invalid_request")
    if grant.model is not None and grant.model != claim.model:
        raise Refused(403, f"this token may only register model {grant.model!r}", "model_not_allowed")
    if claim.kind not in KINDS:
        raise Refused(400, f"kind must be one of {', '.join(KINDS)}", "invalid_request")


def _url(claim: Claim) -> str:
    return claim.url.rstrip("/")


def _error(status: int, message: str, code: str) -> web.Response:
    kind = ("authentication_error" if status == 401 else "permission_error" if status == 403
            else "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status)
