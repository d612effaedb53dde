"""Deployment rows: the backends the router may route to."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from launcher.core.db import utcnow
from launcher.core.schema import Deployment
from launcher.engines.table import EXTERNAL, KINDS
STATES = ("pending", "starting", "ready", "draining", "gone")


class DeploymentError(Exception):
    """A deployment operation that cannot be done; the message is for the admin."""


@dataclass(frozen=True)
class DeploymentRecord:
    """A deployment as the router and CLI see it."""

    id: int
    model: str
    kind: str
    engine: str
    state: str
    reason: str | None
    job_id: str | None
    node: str | None
    url: str | None
    secret: str | None
    expected_start: datetime | None
    end_time: datetime | None
    submitted_at: datetime | None
    ready_at: datetime | None
    predecessor_id: int | None
    updated_at: datetime


def to_record(row: Deployment) -> DeploymentRecord:
    """Freeze an ORM row into a DeploymentRecord."""
    return DeploymentRecord(
        id=row.id, model=row.model, kind=row.kind, engine=row.engine, state=row.state,
        reason=row.reason, job_id=row.job_id, node=row.node, url=row.url, secret=row.secret,
        expected_start=row.expected_start, end_time=row.end_time, submitted_at=row.submitted_at,
        ready_at=row.ready_at, predecessor_id=row.predecessor_id, updated_at=row.updated_at,
    )


def new_secret() -> str:
    """A per-job secret (backend API key or registration token)."""
    return secrets.token_urlsafe(32)


def add_backend(
    session: Session, model: str, url: str, *, kind: str = "chat", secret: str | None = None,
    engine: str = EXTERNAL, node: str | None = None,
) -> DeploymentRecord:
    """Register a server that already runs; it is ready once the router's probe agrees."""
    if kind not in KINDS:
        raise DeploymentError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not url.startswith(("http://", "https://")):
        raise DeploymentError(f"backend URL must start with http:// or https://, got {url!r}")
    now = utcnow()
    row = Deployment(
        model=model, kind=kind, engine=engine, state="ready", url=url.rstrip("/"),
        secret=secret, node=node, ready_at=now, created_at=now, updated_at=now,
    )
    session.add(row)
    session.commit()
    return to_record(row)


def get_deployment(session: Session, deployment_id: int) -> Deployment:
    """The row with DEPLOYMENT_ID."""
    row = session.get(Deployment, deployment_id)
    if row is None:
        raise DeploymentError(f"no deployment with id {deployment_id} (see `llm-launch backends list`)")
    return row


def mark_gone(session: Session, row: Deployment, reason: str) -> None:
    """Take a deployment out of routing for good, saying why."""
    now = utcnow()
    row.state, row.reason, row.gone_at, row.updated_at = "gone", reason, now, now
    session.commit()


def list_deployments(session: Session, *, include_gone: bool = False) -> list[DeploymentRecord]:
    """Deployments, oldest first; gone ones only when asked."""
    query = select(Deployment).order_by(Deployment.id)
    if not include_gone:
        query = query.where(Deployment.state != "gone")
    return [to_record(r) for r in session.scalars(query)]
