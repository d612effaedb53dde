"""Click parameter types shared by several commands."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

import click

from launcher.core.db import utcnow


class Unlimited:
    """Marker for a limit given as 'none': remove the limit."""

    def __repr__(self) -> str:
        return "none"


UNLIMITED = Unlimited()
# The registry stores limits as 64-bit integers (PostgreSQL's BIGINT).
LIMIT_MAX = 2**63 - 1


class LimitType(click.ParamType[Any]):
    """A non-negative whole number, or 'none' for no limit."""

    name = "N|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, Unlimited)):
            return value
        text = str(value).strip().lower()
        if text in ("none", "unlimited"):
            return UNLIMITED
        if not text.isdigit():
            self.fail(f"{value!r} is not a whole number >= 0 (or 'none' for no limit)", param, ctx)
        if int(text) > LIMIT_MAX:
            self.fail(f"{value} is too large (at most {LIMIT_MAX}; 'none' for no limit)", param, ctx)
        return int(text)


class DateType(click.ParamType[Any]):
    """A date or datetime in ISO form (UTC); a bare date means the end of that day; 'never' clears."""

    name = "DATE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (datetime, Unlimited)):
            return value
        if str(value).strip().lower() in ("never", "none"):
            return UNLIMITED
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a date like 2026-12-31 or 2026-12-31T18:00", param, ctx)
        if len(str(value)) <= 10:
            parsed = datetime.combine(parsed.date(), time.max)
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        return parsed


def future(value: datetime | Unlimited | None) -> datetime | Unlimited | None:
    """Reject an expiry in the past with a CLI error."""
    if isinstance(value, datetime) and value <= utcnow():
        raise click.BadParameter(f"{value:%Y-%m-%d %H:%M:%S} is in the past", param_hint="--expires")
    return value
