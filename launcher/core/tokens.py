"""Registration token rows: admin-issued tokens that let users register servers they started.

The one module that writes registration_tokens; only SHA-256 hashes are stored.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from launcher.core.db import utcnow
from launcher.core.keys import hash_key
from launcher.core.schema import RegistrationToken

TOKEN_PREFIX = "rt-"


def create_token(session: Session, model: str | None, expires_at: datetime | None) -> tuple[str, RegistrationToken]:
    """Store a new token (for MODEL only, when given); returns the token (shown once) and its row."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = RegistrationToken(token_hash=hash_key(token), model=model, created_at=utcnow(), expires_at=expires_at)
    session.add(row)
    session.commit()
    return token, row


def list_tokens(session: Session) -> list[RegistrationToken]:
    """All tokens, oldest first (their hashes, never the tokens)."""
    return list(session.scalars(select(RegistrationToken).order_by(RegistrationToken.id)))


def find_grant(session: Session, token_hash: str) -> RegistrationToken | None:
    """The token row with TOKEN_HASH, if any."""
    return session.scalars(select(RegistrationToken).where(RegistrationToken.token_hash == token_hash)).first()


def revoke_token(session: Session, token_id: int) -> bool:
    """Delete token TOKEN_ID; False when there is none. Servers registered with it stay."""
    row = session.get(RegistrationToken, token_id)
    if row is None:
        return False
    session.delete(row)
    session.commit()
    return True
