"""Admin surfaces: the admin credential check and `GET /internal/status` for `llm-launch status`."""

from __future__ import annotations

import hmac

import orjson
from aiohttp import web

from router.errors import RouterError
from router.state import STATE


def require_admin(request: web.Request) -> None:
    """Pass only a request bearing the configured admin token; none configured refuses everyone."""
    expected = request.app[STATE].settings.router.admin_token
    if not expected:
        raise RouterError(403, "admin endpoints are off: set router.admin_token in the settings file")
    given = request.headers.get("Authorization", "")
    token = given[7:] if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise RouterError(401, "this endpoint needs the admin token", code="invalid_api_key")


async def internal_status(request: web.Request) -> web.Response:
    """Health, in-flight count and routability of every backend the router knows."""
    require_admin(request)
    backends = request.app[STATE].view.snapshot.backends.values()
    rows = [
        {
            "id": b.record.id, "model": b.model, "state": b.record.state,
            "health": b.health.status, "health_reason": b.health.reason,
            "in_flight": b.outstanding, "routable": b.routable,
        }
        for b in backends
    ]
    return web.Response(body=orjson.dumps({"deployments": rows}), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Mount the admin routes."""
    app.router.add_get("/internal/status", internal_status)
