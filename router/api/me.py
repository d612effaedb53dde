"""GET /v1/me: a key's own limits, what is left in each window, and its usage — free of charge."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from launcher.core.keys import KeyRecord
from router.api.endpoints import authorized
from router.accounting import limits as quota
from router.accounting.metered import LimitsAccounting, usage, windows
from router.accounting.shared import SharedAccounting
from router.state import STATE


async def me(request: web.Request) -> web.Response:
    """The caller's key: limits, remaining per window, usage today and this month (no admission)."""
    key = authorized(request)
    accounting = request.app[STATE].accounting
    now = time.time()
    body = describe_key(key)
    headers: dict[str, str] = {}
    if isinstance(accounting, (LimitsAccounting, SharedAccounting)):
        st = await accounting.key_state(key, now)  # Redis unreachable: the middleware answers 503
        body["windows"] = {name: dataclasses.asdict(view) for name, view in windows(st, key.limits, now).items()}
        body["usage"] = usage(st)
        headers = quota.rate_headers(st, key.limits, now)
    else:
        body["windows"] = None
        body["usage"] = None  # accounting is switched off on this router
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


def describe_key(key: KeyRecord) -> dict[str, Any]:
    """What a key may know about itself: never its hash."""
    return {
        "object": "api_key", "id": key.id, "name": key.name, "prefix": key.prefix,
        "account": key.account, "tier": key.tier,
        "models": list(key.models) if key.models is not None else None,
        "expires_at": _iso(key.expires_at), "limits": dataclasses.asdict(key.limits),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def add_routes(app: web.Application) -> None:
    """Mount GET /v1/me."""
    app.router.add_get("/v1/me", me)
