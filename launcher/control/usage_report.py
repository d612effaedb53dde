"""Usage reports from the ledger's per-day rows: sums grouped by key, model, day or account."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from launcher.core.schema import UsageDaily

GROUPINGS = ("key", "model", "day", "account")
COUNTERS = ("requests", "errors", "estimated_requests", "prompt_tokens", "completion_tokens",
            "reasoning_tokens", "audio_seconds")
# The grouping columns each report shows first, in order.
GROUP_FIELDS = {
    "key": ("key_id", "key_name", "account"),
    "model": ("model",),
    "day": ("day",),
    "account": ("account",),
}


def month_start(today: date) -> date:
    """The first day of TODAY's month: the report's default start."""
    return today.replace(day=1)


def usage_rows(session: Session, since: date, until: date, by: str) -> list[dict[str, Any]]:
    """One row per group for the UTC days SINCE..UNTIL (inclusive), with summed counters."""
    if by not in GROUPINGS:
        raise ValueError(f"cannot group usage by {by!r}; use one of {', '.join(GROUPINGS)}")
    sums = [func.coalesce(func.sum(getattr(UsageDaily, c)), 0).label(c) for c in COUNTERS]
    query = (select(*_group_columns(by), *sums)
             .where(UsageDaily.day >= since.isoformat(), UsageDaily.day <= until.isoformat()))
    group = UsageDaily.key_id if by == "key" else getattr(UsageDaily, GROUP_FIELDS[by][0])
    query = query.group_by(group).order_by(group)
    return [_row(dict(r._mapping)) for r in session.execute(query)]


def _group_columns(by: str) -> list[Any]:
    if by == "key":
        # A key's name and account can change; the report shows the latest seen.
        return [UsageDaily.key_id, func.max(UsageDaily.key_name).label("key_name"),
                func.max(UsageDaily.account).label("account")]
    return [getattr(UsageDaily, GROUP_FIELDS[by][0])]


def _row(values: dict[str, Any]) -> dict[str, Any]:
    for name in COUNTERS[:-1]:
        values[name] = int(values[name])
    values["audio_seconds"] = round(float(values["audio_seconds"]), 3)
    values["total_tokens"] = values["prompt_tokens"] + values["completion_tokens"]
    return values


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of every counter over ROWS."""
    total: dict[str, Any] = {c: sum(r[c] for r in rows) for c in (*COUNTERS, "total_tokens")}
    total["audio_seconds"] = round(total["audio_seconds"], 3)
    return total


def columns(by: str) -> list[str]:
    """The report's columns for grouping BY, grouping fields first."""
    return [*GROUP_FIELDS[by], "requests", "errors", "estimated_requests", "prompt_tokens",
            "completion_tokens", "reasoning_tokens", "total_tokens", "audio_seconds"]
