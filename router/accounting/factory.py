"""Which accounting a router runs: none, its own limits (embedded mode) or Redis's (shared mode)."""

from __future__ import annotations

from sqlalchemy import Engine

from launcher.core.settings import Settings
from router.accounting.metered import LimitsAccounting
from router.accounting.seam import Accounting, NoAccounting
from router.accounting.shared import SharedAccounting


def make_accounting(settings: Settings, engine: Engine) -> Accounting:
    """Limits and ledger when `router.accounting` is on: in Redis with `router.redis_url`, else here."""
    if not settings.router.accounting:
        return NoAccounting()
    if settings.router.redis_url:
        return SharedAccounting.from_settings(settings, engine)
    return LimitsAccounting.from_settings(settings, engine)
