"""Planned maintenance windows: parsed from settings or Slurm reservations, and the rules on them (pure).

Times are naive UTC, like the registry.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo


@dataclass(frozen=True)
class Window:
    """One maintenance window [start, end), naive UTC."""

    start: datetime
    end: datetime
    name: str = "maintenance"


def parse_window(text: str) -> Window:
    """A window from "START/END" (ISO 8601; no offset means UTC); ValueError says what is wrong."""
    start_text, sep, end_text = text.partition("/")
    if not sep:
        raise ValueError(f"maintenance window {text!r}: expected START/END, e.g. 2025-06-03T08:00Z/2025-06-03T18:00Z")
    start, end = _utc(start_text.strip(), text), _utc(end_text.strip(), text)
    if end <= start:
        raise ValueError(f"maintenance window {text!r}: its end is not after its start")
    return Window(start, end)


def _utc(value: str, whole: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"maintenance window {whole!r}: {value!r} is not an ISO 8601 time") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def parse_windows(texts: Iterable[str]) -> tuple[Window, ...]:
    """All windows of the settings, in order of start."""
    return tuple(sorted((parse_window(t) for t in texts), key=lambda w: w.start))


def parse_reservations(text: str, tz: tzinfo) -> tuple[Window, ...]:
    """MAINT reservations from `scontrol show reservation -o` (local times in TZ) as windows."""
    windows = []
    for line in text.splitlines():
        fields = dict(word.split("=", 1) for word in shlex.split(line) if "=" in word)
        if "MAINT" not in fields.get("Flags", "").split(","):
            continue
        try:
            start, end = (datetime.fromisoformat(fields[k]).replace(tzinfo=tz) for k in ("StartTime", "EndTime"))
        except (KeyError, ValueError):
            continue  # an unlimited or unreadable reservation: nothing to plan around
        windows.append(Window(_naive(start), _naive(end), fields.get("ReservationName", "maintenance")))
    return tuple(sorted(windows, key=lambda w: w.start))


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def active(windows: Sequence[Window], now: datetime) -> Window | None:
    """The window NOW falls in (the one ending last when several overlap), or None."""
    current = [w for w in windows if w.start <= now < w.end]
    return max(current, key=lambda w: w.end) if current else None


def allowed_seconds(windows: Sequence[Window], now: datetime, limit_s: float) -> float:
    """How long a job starting NOW may run (up to LIMIT_S) without running into a window."""
    if active(windows, now):
        return 0.0
    ahead = [(w.start - now).total_seconds() for w in windows if now < w.start]
    return min([limit_s, *ahead])


def slurm_minutes(seconds: float) -> int:
    """Whole minutes (Slurm's unit for --time) for a job that must end within SECONDS from now.

    Rounded down, less one spare minute: the job starts a little after it is submitted.
    """
    return max(0, math.floor(seconds / 60) - 1)


def retry_after_s(window: Window, now: datetime) -> int:
    """Seconds until WINDOW ends (at least 1), for a Retry-After header."""
    return max(1, math.ceil((window.end - now).total_seconds()))


def describe(window: Window) -> str:
    """'maintenance until 2025-06-03T18:00:00Z' (for messages and /v1/models)."""
    return f"{window.name} until {iso(window.end)}"


def iso(moment: datetime) -> str:
    """A naive UTC time as ISO 8601 with Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def horizon(windows: Sequence[Window], now: datetime, days: float = 30.0) -> tuple[Window, ...]:
    """Windows not over yet and starting within DAYS: what /v1/models announces."""
    until = now + timedelta(days=days)
    return tuple(w for w in windows if w.end > now and w.start < until)
