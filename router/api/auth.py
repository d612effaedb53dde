"""API key check: one SHA-256 and one dict lookup, whatever the number of keys."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Callable, Mapping

from launcher.core.keys import KeyRecord
from router.errors import RouterError

BEARER = "bearer "
API_KEY_HEADER = "x-api-key"  # how the anthropic SDK and Claude Code send the key


def authorization(headers: Mapping[str, str]) -> str | None:
    """The Authorization header, else an `x-api-key` presented as one."""
    header = headers.get("Authorization")
    if header is None and (api_key := headers.get(API_KEY_HEADER)):
        return BEARER + api_key
    return header


def presented_key(header: str | None) -> str:
    """The key in an `Authorization: Bearer KEY` header, or a 401."""
    if not header:
        raise RouterError(
            401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'",
            code="missing_api_key",
        )
    if header[:7].lower() != BEARER or not header[7:].strip():
        raise RouterError(401, "Malformed Authorization header: expected 'Bearer KEY'", code="invalid_api_key")
    return header[7:].strip()


def authenticate(header: str | None, keys: Mapping[str, KeyRecord], now: Callable[[], datetime]) -> KeyRecord:
    """The usable key record for HEADER; a missing, unknown, revoked or expired key is a 401."""
    digest = hashlib.sha256(presented_key(header).encode("utf-8", "surrogatepass")).hexdigest()
    record = keys.get(digest)
    # The lookup is by hash, so timing says nothing about the key; compare_digest is belt and braces.
    if record is None or not hmac.compare_digest(record.key_hash, digest):
        raise RouterError(401, "Incorrect API key provided", code="invalid_api_key")
    if record.revoked_at is not None:
        raise RouterError(401, "This API key has been revoked", code="invalid_api_key")
    if record.expires_at is not None and now() >= record.expires_at:
        raise RouterError(401, "This API key has expired", code="invalid_api_key")
    return record


def check_model(record: KeyRecord, model: str) -> None:
    """A 403 when RECORD may not use MODEL."""
    if record.models is not None and model not in record.models:
        raise RouterError(
            403, f"This API key may not use the model {model!r}", param="model", code="model_not_allowed"
        )
