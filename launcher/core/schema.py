"""The registry schema: deployments, API keys, registration tokens and the usage ledger."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from launcher.engines.table import EXTERNAL


class Base(DeclarativeBase):
    pass


class Deployment(Base):
    """One model server: a Slurm job the launcher submitted, or a server registered by hand."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(32), default="chat")
    engine: Mapped[str] = mapped_column(String(32), default=EXTERNAL)
    # pending -> starting -> ready -> draining -> gone
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    job_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    node: Mapped[str | None] = mapped_column(String(200), default=None)
    url: Mapped[str | None] = mapped_column(String(500), default=None)
    secret: Mapped[str | None] = mapped_column(String(200), default=None)
    registration_token_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    expected_start: Mapped[datetime | None] = mapped_column(default=None)
    end_time: Mapped[datetime | None] = mapped_column(default=None)
    submitted_at: Mapped[datetime | None] = mapped_column(default=None)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    gone_at: Mapped[datetime | None] = mapped_column(default=None)
    predecessor_id: Mapped[int | None] = mapped_column(Integer, default=None)
    owner: Mapped[str | None] = mapped_column(String(200), default=None)  # a user's own server: who runs it
    created_at: Mapped[datetime] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column()


class ModelTarget(Base):
    """Desired replica count of a catalog model, and the supervisor's failure bookkeeping."""

    __tablename__ = "model_targets"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    desired_replicas: Mapped[int] = mapped_column(Integer, default=0)
    quick_failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    stopped_reason: Mapped[str | None] = mapped_column(Text, default=None)
    updated_at: Mapped[datetime] = mapped_column()


class ApiKey(Base):
    """A personal API key: only its SHA-256 hash and a display prefix are stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    models: Mapped[str | None] = mapped_column(Text, default=None)  # comma list; None = all
    account: Mapped[str | None] = mapped_column(String(200), default=None)
    tier: Mapped[str | None] = mapped_column(String(64), default=None)
    rpm: Mapped[int | None] = mapped_column(BigInteger, default=None)
    tpm: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_parallel: Mapped[int | None] = mapped_column(BigInteger, default=None)
    daily_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    daily_audio_seconds: Mapped[int | None] = mapped_column(BigInteger, default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column()


class RegistrationToken(Base):
    """A token an admin hands to a user so their own job can register its server."""

    __tablename__ = "registration_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column()


class UsageDaily(Base):
    """Usage aggregated per day x key x model; the ledger's durable form."""

    __tablename__ = "usage_daily"
    __table_args__ = (UniqueConstraint("day", "key_id", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    day: Mapped[str] = mapped_column(String(10), index=True)  # YYYY-MM-DD, UTC
    key_id: Mapped[int] = mapped_column(Integer)
    key_name: Mapped[str] = mapped_column(String(200))
    account: Mapped[str | None] = mapped_column(String(200), default=None)
    model: Mapped[str] = mapped_column(String(200))
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    estimated_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class UsageRequest(Base):
    """Optional per-request usage rows (no prompt or answer text), kept for a retention window."""

    __tablename__ = "usage_requests"
    __table_args__ = (Index("ix_usage_requests_ts", "ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[datetime] = mapped_column()
    request_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0)
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    backend: Mapped[str | None] = mapped_column(String(500), default=None)
    estimated: Mapped[int] = mapped_column(Integer, default=0)


class LedgerBatch(Base):
    """The id of a usage batch a router wrote, in the batch's own transaction: a batch retried
    (after a lost commit, from a spill file) finds its id and is not added twice."""

    __tablename__ = "ledger_batches"

    batch_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    written_at: Mapped[datetime] = mapped_column(index=True)
    rows: Mapped[int] = mapped_column(Integer, default=0)
