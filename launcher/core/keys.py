"""API keys: generation, hashing and the store behind `llm-launch keys`."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Mapping

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from launcher.core.db import utcnow
from launcher.core.schema import ApiKey
from launcher.core.settings import KeyLimits

KEY_PREFIX = "sk-llm-"
DISPLAY_PREFIX_LEN = len(KEY_PREFIX) + 6


class KeyStoreError(Exception):
    """A key operation that cannot be done; the message is for the admin."""


def generate_key() -> str:
    """A new random key with 256 bits of entropy."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The stored form of a key: SHA-256 hex (keys are random, so no salt or KDF is needed)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """A key as the router and the CLI see it: never the key itself."""

    id: int
    name: str
    prefix: str
    key_hash: str
    models: tuple[str, ...] | None
    account: str | None
    tier: str | None
    limits: KeyLimits
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime

    def usable(self, now: datetime) -> bool:
        """Not revoked and not expired at NOW (naive UTC)."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def allows(self, model: str) -> bool:
        """Whether this key may use MODEL."""
        return self.models is None or model in self.models


LIMIT_FIELDS = tuple(f.name for f in dataclasses.fields(KeyLimits))


def to_record(row: ApiKey) -> KeyRecord:
    """Freeze an ORM row into a KeyRecord."""
    limits = KeyLimits(**{name: getattr(row, name) for name in LIMIT_FIELDS})
    models = tuple(m for m in row.models.split(",") if m) if row.models is not None else None
    return KeyRecord(
        id=row.id, name=row.name, prefix=row.prefix, key_hash=row.key_hash, models=models,
        account=row.account, tier=row.tier, limits=limits, expires_at=row.expires_at,
        revoked_at=row.revoked_at, created_at=row.created_at,
    )


def create_key(
    session: Session, name: str, *, limits: KeyLimits, models: list[str] | None = None,
    account: str | None = None, tier: str | None = None, expires_at: datetime | None = None,
) -> tuple[str, KeyRecord]:
    """Store a new key for NAME; returns the key (shown once) and its record."""
    if session.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
        raise KeyStoreError(f"a key named {name!r} already exists; pick another name or revoke it")
    key, now = generate_key(), utcnow()
    row = ApiKey(
        name=name, prefix=key[:DISPLAY_PREFIX_LEN], key_hash=hash_key(key),
        models=",".join(models) if models is not None else None, account=account, tier=tier,
        expires_at=expires_at, created_at=now, updated_at=now,
        **{f: getattr(limits, f) for f in LIMIT_FIELDS},
    )
    session.add(row)
    session.commit()
    return key, to_record(row)


def find_key(session: Session, ident: str) -> ApiKey:
    """The key with id or name IDENT."""
    clauses = [ApiKey.name == ident]
    if ident.isdigit():
        clauses.append(ApiKey.id == int(ident))
    row = session.scalar(select(ApiKey).where(or_(*clauses)))
    if row is None:
        raise KeyStoreError(f"no key with id or name {ident!r} (see `llm-launch keys list`)")
    return row


def update_key(session: Session, ident: str, changes: Mapping[str, object]) -> KeyRecord:
    """Set the given fields (limits, models, account, tier, expires_at) of a key."""
    row = find_key(session, ident)
    for field, value in changes.items():
        setattr(row, field, value)
    row.updated_at = utcnow()
    session.commit()
    return to_record(row)


def revoke_key(session: Session, ident: str) -> KeyRecord:
    """Revoke a key; the router refuses it from its next registry refresh on."""
    row = find_key(session, ident)
    if row.revoked_at is None:
        row.revoked_at = row.updated_at = utcnow()
        session.commit()
    return to_record(row)


def list_keys(session: Session) -> list[KeyRecord]:
    """All keys, oldest first."""
    return [to_record(r) for r in session.scalars(select(ApiKey).order_by(ApiKey.id))]
