"""Deployment rows: the backends the router may route to.

The one module that writes deployment rows: `up` records a submitted job, the supervisor applies
its plan, servers (de)register, `down` and `backends remove` take rows out of routing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from launcher.core.backend_urls import BackendUrlError, Listener, check_backend_url
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
    owner: str | None = None  # who runs a server registered from a user's own job


def to_record(row: Deployment) -> DeploymentRecord:
    """Freeze an ORM row into a DeploymentRecord."""
    return DeploymentRecord(
        id=row.id, model=row.model, kind=row.kind, engine=row.engine, state=row.state,
        reason=row.reason, job_id=row.job_id, node=row.node, url=row.url, secret=row.secret,
        expected_start=row.expected_start, end_time=row.end_time, submitted_at=row.submitted_at,
        ready_at=row.ready_at, predecessor_id=row.predecessor_id, updated_at=row.updated_at, owner=row.owner,
    )


def new_secret() -> str:
    """A per-job secret (backend API key or registration token)."""
    return secrets.token_urlsafe(32)


def add_backend(
    session: Session, model: str, url: str, *, kind: str = "chat", secret: str | None = None,
    engine: str = EXTERNAL, node: str | None = None, registration_token_hash: str | None = None,
    router: Iterable[Listener] = (), job_id: str | None = None, owner: str | None = None,
) -> DeploymentRecord:
    """Register a server that already runs at URL (not one of ROUTER's addresses); it is ready
    once the router's probe agrees."""
    if kind not in KINDS:
        raise DeploymentError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        checked = check_backend_url(url, router)
    except BackendUrlError as exc:
        raise DeploymentError(str(exc)) from None
    now = utcnow()
    row = Deployment(
        model=model, kind=kind, engine=engine, state="ready", url=checked.text,
        secret=secret, node=node, registration_token_hash=registration_token_hash, job_id=job_id, owner=owner,
        ready_at=now, created_at=now, updated_at=now,
    )
    session.add(row)
    session.commit()
    return to_record(row)


def find_registered(session: Session, token_hash: str, model: str, url: str,
                    job_id: str | None = None) -> Deployment | None:
    """The live row a server registered with TOKEN_HASH as MODEL: the one of job JOB_ID (wherever it
    listens), or without a job the one at URL; None when there is none."""
    query = select(Deployment).where(
        Deployment.registration_token_hash == token_hash, Deployment.model == model,
        Deployment.engine == EXTERNAL, Deployment.state != "gone",
    ).order_by(Deployment.id.desc())
    if job_id is None:
        query = query.where(Deployment.url == url, Deployment.job_id.is_(None))
    else:
        query = query.where(Deployment.job_id == job_id)
    return session.scalars(query).first()


def url_holder(session: Session, url: str) -> Deployment | None:
    """The row whose server listens at URL, if any (two cannot listen at one address); a draining
    job's server still does."""
    query = select(Deployment).where(Deployment.url == url, Deployment.state.in_(("starting", "ready", "draining")))
    return session.scalars(query.order_by(Deployment.id)).first()


def mark_reregistered(session: Session, row: Deployment, *, url: str, kind: str, secret: str | None,
                      node: str | None, now: datetime) -> DeploymentRecord:
    """A registered server announced itself again (e.g. restarted): same row, its new URL and secret."""
    row.url, row.kind, row.secret, row.node, row.state, row.reason = url, kind, secret, node or row.node, "ready", None
    row.updated_at = now
    session.commit()
    return to_record(row)


def record_submitted(
    session: Session, *, model: str, kind: str, engine: str, job_id: str | None, secret: str,
    registration_token_hash: str, predecessor_id: int | None, now: datetime,
) -> DeploymentRecord:
    """Record a job as pending; job_id None records the intent to submit one (set_job_id follows)."""
    row = Deployment(
        model=model, kind=kind, engine=engine, state="pending", job_id=job_id, secret=secret,
        registration_token_hash=registration_token_hash, submitted_at=now, predecessor_id=predecessor_id,
        created_at=now, updated_at=now,
    )
    session.add(row)
    session.commit()
    return to_record(row)


def set_job_id(session: Session, deployment_id: int, job_id: str, now: datetime) -> bool:
    """Give a pending intent its job; idempotent, and False when the row went meanwhile."""
    query = (update(Deployment).where(Deployment.id == deployment_id, Deployment.state == "pending",
                                      (Deployment.job_id.is_(None)) | (Deployment.job_id == job_id))
             .values(job_id=job_id, updated_at=now))
    done = bool(session.connection().execute(query).rowcount == 1)
    session.commit()
    return done


def forget_intent(session: Session, deployment_id: int) -> None:
    """Delete an intent whose sbatch failed: no job exists, so there is nothing to keep."""
    row = session.get(Deployment, deployment_id)
    if row is not None and row.job_id is None:
        session.delete(row)
    session.commit()


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


def mark_draining(session: Session, deployment_ids: Sequence[int], reason: str, now: datetime) -> list[Deployment]:
    """Take deployments out of routing while their jobs finish; one commit for all, none if one is unknown."""
    rows = []
    for deployment_id in deployment_ids:
        row = session.get(Deployment, deployment_id)
        if row is None:
            raise DeploymentError(f"no deployment with id {deployment_id}")
        row.state, row.reason, row.updated_at = "draining", reason, now
        rows.append(row)
    session.commit()  # the router stops routing to them at its next registry refresh
    return rows


def mark_registered(session: Session, row: Deployment, url: str, node: str | None, now: datetime) -> None:
    """The job's server answers at URL: ready for routing."""
    row.url, row.node, row.state, row.reason = url, node or row.node, "ready", None
    row.ready_at, row.updated_at = row.ready_at or now, now
    session.commit()


def mark_deregistered(session: Session, row: Deployment, reason: str, now: datetime) -> None:
    """The server stopped taking requests: a job drains until Slurm ends it, a manual one is gone."""
    # The supervisor marks a launcher job gone with Slurm's final state; a user's server is gone
    # at once (its job ends with it; nothing of ours drains). Keep why the supervisor started the
    # drain (e.g. "handed over to #7") over the job's echo.
    if not (row.state == "draining" and row.reason):
        row.reason = reason
    row.state = "draining" if row.job_id and row.engine != EXTERNAL else "gone"
    row.gone_at = now if row.state == "gone" else row.gone_at
    row.updated_at = now
    session.commit()


def compare_and_set(session: Session, deployment_id: int, expect_state: str, changes: Mapping[str, object],
                    now: datetime) -> bool:
    """Change a row only if its state is still EXPECT_STATE; True when it was. The caller commits."""
    table = Deployment.__table__
    assert isinstance(table, Table)
    # Core, not ORM, UPDATEs: a burst of 1,000 changes costs ~110 ms of CPU instead of ~270.
    query = (update(table)
             .where(table.c.id == deployment_id, table.c.state == expect_state)
             .values(**changes, updated_at=now))
    return bool(session.connection().execute(query).rowcount)


def list_deployments(session: Session, *, include_gone: bool = False) -> list[DeploymentRecord]:
    """Deployments, oldest first; gone ones only when asked."""
    query = select(Deployment).order_by(Deployment.id)
    if not include_gone:
        query = query.where(Deployment.state != "gone")
    return [to_record(r) for r in session.scalars(query)]
