"""Servers that users start in their own jobs and register with an admin-issued token.

Before a row is written the router checks, from its own side, that the server answers its model
list with the secret it registers; a URL that another live server holds is refused (two servers
cannot listen at one address: the second one's check reached the first). A job registers one
row: registering again (a restart, a retry) answers the same deployment.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from sqlalchemy.orm import Session

from launcher.core.db import utcnow
from launcher.core.deployments import add_backend, find_registered, mark_reregistered, url_holder
from launcher.core.schema import Deployment, RegistrationToken
from launcher.engines.table import KINDS
from router.api.claims import Claim, Refused
from router.upstream.health import probe_verdict

MODELS = "/v1/models"


def check_user_claim(session: Session, claim: Claim, grant: RegistrationToken) -> Deployment | None:
    """Refuse what the grant does not allow or a URL another server holds; the row to reuse, if any."""
    if grant.expires_at is not None and grant.expires_at <= utcnow():
        raise Refused(403, "registration token expired", "token_expired")
    if not claim.model:
        raise Refused(400, "model is required when registering with an admin-issued token", "invalid_request")
    if grant.model is not None and grant.model != claim.model:
        raise Refused(403, f"this token may only register model {grant.model!r}", "model_not_allowed")
    if claim.kind not in KINDS:
        raise Refused(400, f"kind must be one of {', '.join(KINDS)}", "invalid_request")
    # The same server announcing itself again (a retry, a restart) keeps its row and id.
    row = find_registered(session, grant.token_hash, claim.model, claim.base_url, claim.job_id)
    holder = url_holder(session, claim.base_url)
    if holder is not None and (row is None or holder.id != row.id):
        who = f"job {holder.job_id}" if holder.job_id else "a server"
        raise Refused(409, f"{claim.base_url} is already registered by {who} (deployment {holder.id}); start "
                           "the server on a free port", "url_in_use")
    return row


def register_user_server(session: Session, claim: Claim, grant: RegistrationToken) -> dict[str, Any]:
    """Write (or refresh) the row of a user's server; the checks are check_user_claim's."""
    row = check_user_claim(session, claim, grant)
    if row is not None:
        record = mark_reregistered(session, row, url=claim.base_url, kind=claim.kind, secret=claim.secret,
                                   node=claim.node, now=utcnow())
    else:
        record = add_backend(session, claim.model or "", claim.base_url, kind=claim.kind, secret=claim.secret,
                             node=claim.node, registration_token_hash=grant.token_hash, job_id=claim.job_id,
                             owner=claim.owner or "unknown")
    return {"deployment_id": record.id, "state": record.state}


async def check_server(claim: Claim, timeout_s: float) -> None:
    """Refuse a server that does not list its model, with its secret, at the URL it registers."""
    url = claim.base_url + MODELS
    headers = {"Authorization": f"Bearer {claim.secret}"} if claim.secret else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                status, body = resp.status, await resp.read()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        why = " ".join(f"{type(exc).__name__} {exc}".split())  # one line, whatever the error says
        raise Refused(400, f"the router cannot reach {url}: {why}", "server_unreachable") from None
    if status in (401, 403):
        raise Refused(400, f"{url} answered {status} to the secret registered with it: start the server "
                           "with that secret (or register with --no-secret if it has none)", "server_rejects_secret")
    verdict = probe_verdict(MODELS, status, body, claim.model or "")
    if verdict:
        raise Refused(400, f"the server at {claim.base_url} is not ready: {verdict}", "server_not_ready")
