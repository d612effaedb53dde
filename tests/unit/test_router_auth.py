"""Key checks: bearer parsing, unknown/revoked/expired keys, allowed models."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from launcher.core.keys import KeyRecord, hash_key
from launcher.core.settings import KeyLimits
from router.api.auth import authenticate, check_model
from router.errors import RouterError

NOW = datetime(2026, 1, 1, 12, 0)


def record(key: str, **changes: object) -> KeyRecord:
    base: dict[str, object] = dict(id=1, name="k", prefix=key[:13], key_hash=hash_key(key), models=None,
                                   account=None, tier=None, limits=KeyLimits(), expires_at=None,
                                   revoked_at=None, created_at=NOW)
    return KeyRecord(**{**base, **changes})  # type: ignore[arg-type]


def keys(*records: KeyRecord) -> dict[str, KeyRecord]:
    return {r.key_hash: r for r in records}


def test_valid_key_case_insensitive_scheme() -> None:
    good = record("sk-llm-good")
    assert authenticate("Bearer sk-llm-good", keys(good), lambda: NOW) is good
    assert authenticate("bearer  sk-llm-good ", keys(good), lambda: NOW) is good


@pytest.mark.parametrize(("header", "changes", "message"), [
    (None, {}, "didn't provide"),
    ("", {}, "didn't provide"),
    ("Basic sk-llm-good", {}, "Malformed"),
    ("Bearer ", {}, "Malformed"),
    ("Bearer sk-llm-other", {}, "Incorrect"),
    ("Bearer sk-llm-good", {"revoked_at": NOW}, "revoked"),
    ("Bearer sk-llm-good", {"expires_at": NOW}, "expired"),
    ("Bearer sk-llm-good", {"expires_at": NOW - timedelta(days=1)}, "expired"),
])
def test_refused_keys_are_401(header: str | None, changes: dict[str, object], message: str) -> None:
    with pytest.raises(RouterError) as caught:
        authenticate(header, keys(record("sk-llm-good", **changes)), lambda: NOW)
    assert caught.value.status == 401 and message in caught.value.message


def test_future_expiry_is_fine() -> None:
    good = record("sk-llm-good", expires_at=NOW + timedelta(seconds=1))
    assert authenticate("Bearer sk-llm-good", keys(good), lambda: NOW) is good


def test_model_restriction_is_403() -> None:
    narrow = record("sk", models=("a",))
    check_model(narrow, "a")
    with pytest.raises(RouterError) as caught:
        check_model(narrow, "b")
    assert caught.value.status == 403
    check_model(record("sk"), "anything")
