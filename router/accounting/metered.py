"""Quotas plus the usage ledger behind the proxy's Accounting seam.

The embedded mode: the limits are exact because one router process owns them, in memory, on one
event loop (no locks needed). Budgets consumed today and this month survive a restart: they are
reloaded from the ledger at start. Several router processes would each count on their own and
together let a key overshoot, so the process that owns the limits holds an exclusive lock on the
registry (see router/accounting/ownership.py) and a second one refuses to start with accounting
on; shared mode (router/accounting/shared.py) keeps the counters in Redis instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Self

from sqlalchemy import Engine

from launcher.core.keys import KeyRecord
from launcher.core.settings import KeyLimits, Settings
from launcher.engines.table import KIND_ENDPOINTS
from router.accounting import limits as quota
from router.accounting.seam import Admission, QuotaExceeded, RequestInfo, Usage
from router.accounting.ledger import Ledger
from router.accounting.ownership import OwnershipLock, PostgresOwnershipLock

# Endpoints billed in audio seconds, not tokens.
AUDIO_ENDPOINTS = frozenset(KIND_ENDPOINTS["transcription"])


@dataclass(frozen=True)
class WindowView:
    """One limit as /v1/me shows it."""

    limit: int | None
    used: float
    remaining: float | None
    resets_in_s: float


class LimitsAccounting:
    """Admits against per-key limits and records exact usage; one instance per router process."""

    def __init__(self, ledger: Ledger, lock: OwnershipLock | PostgresOwnershipLock | None = None) -> None:
        self.ledger = ledger
        self._lock = lock
        self._states: dict[int, quota.KeyState] = {}
        self._loaded: dict[int, tuple[list[float], list[float]]] = {}
        self._loaded_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> Self:
        """Build from the router settings, on the registry ENGINE."""
        r = settings.router
        ledger = Ledger.from_settings(r, engine)
        return cls(ledger, OwnershipLock.for_engine(engine))

    async def admit(self, info: RequestInfo, now: float) -> Admission:
        """Reserve capacity for INFO or raise QuotaExceeded (the request then costs nothing)."""
        return self.admit_now(info, now)

    def admit_now(self, info: RequestInfo, now: float) -> Admission:
        """`admit` without the coroutine: one process's limits need no I/O."""
        st = self.state(info.key.id, now)
        limits = info.key.limits
        quota.roll(st, now)
        reserve, audio = reservations(info)
        refused = quota.refusal(st, limits, reserve, audio, now)
        if refused is not None:
            headers = quota.rate_headers(st, limits, now)
            raise QuotaExceeded(refused.message, quota.retry_after(refused.wait_s), headers, limit=refused.limit)
        quota.charge(st, reserve, audio)
        return Admission(info, reserve, now, quota.rate_headers(st, limits, now), reserved_audio=audio)

    def finish(
        self, admission: Admission, status: int, usage: Usage, backend: str | None, now: float
    ) -> None:
        """Settle the reservation with USAGE and hand the request to the ledger."""
        info = admission.info
        key = info.key
        st = self.state(key.id, now)
        if usage.rejected:  # the backend's numbers cannot be trusted: the reservation is the charge
            usage = reserved_usage(admission)
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        quota.settle(st, admission.started_at, admission.reserved_tokens, prompt + completion, now,
                     admission.reserved_audio)
        quota.add_usage(st.today, prompt, completion, usage.reasoning_tokens, usage.audio_seconds)
        quota.add_usage(st.month, prompt, completion, usage.reasoning_tokens, usage.audio_seconds)
        self.ledger.record(info.request_id, key.id, key.name, key.account, info.model, status,
                           usage, backend, admission.started_at, now)

    def state(self, key_id: int, now: float) -> quota.KeyState:
        """The key's state, created on first use with the budgets reloaded from the ledger."""
        st = self._states.get(key_id)
        if st is None:
            st = self._states[key_id] = quota.KeyState(now)
            loaded = self._loaded.pop(key_id, None)
            if loaded is not None:
                self._restore(st, loaded)
        return st

    def _restore(self, st: quota.KeyState, loaded: tuple[list[float], list[float]]) -> None:
        # Totals loaded at start count only if their day and month are still the current ones.
        if int(self._loaded_at // quota.DAY) == st.day:
            _restore(st.today, loaded[0])
        if st.month_start <= self._loaded_at < st.month_end:
            _restore(st.month, loaded[1])

    def headers(self, key: KeyRecord, now: float) -> dict[str, str]:
        """The key's x-ratelimit-* headers right now, for responses not admitted (403, 404)."""
        st = self.state(key.id, now)
        quota.roll(st, now)
        return quota.rate_headers(st, key.limits, now)

    async def key_state(self, key: KeyRecord, now: float) -> quota.KeyState:
        """KEY's counters now, for /v1/me."""
        st = self.state(key.id, now)
        quota.roll(st, now)
        return st

    async def start(self) -> None:
        """Take limits ownership, reload today's and this month's usage, start the ledger."""
        if self._lock is not None:
            self._lock.acquire()
        try:
            self._loaded_at = time.time()
            self._loaded = await self.ledger.load_totals(self._loaded_at)
            await self.ledger.start()
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    async def close(self) -> None:
        """Flush the ledger, then give up limits ownership."""
        try:
            await self.ledger.close()
        finally:
            if self._lock is not None:
                self._lock.release()


def reserved_usage(admission: Admission) -> Usage:
    """The reservation as usage: the prompt estimate first, the rest as completion."""
    reserved = admission.reserved_tokens
    prompt = min(admission.info.prompt_estimate, reserved)
    return Usage(prompt_tokens=prompt, completion_tokens=reserved - prompt, audio_seconds=admission.reserved_audio,
                 estimated=True)


def reservations(info: RequestInfo) -> tuple[int, float]:
    """(tokens, audio seconds) INFO reserves: the prompt and every choice's output, or the upload's length."""
    limits = info.key.limits
    if info.endpoint in AUDIO_ENDPOINTS:
        return 0, quota.audio_reservation(limits, info.audio_seconds)
    return quota.reservation(limits, info.prompt_estimate + info.max_tokens * max(info.choices, 1)), 0.0


def windows(st: quota.KeyState, lim: KeyLimits, now: float) -> dict[str, WindowView]:
    """Every window of a key in ST (rolled to NOW): limit, used (reservations included), remaining, reset."""
    day_end, month_end = (st.day + 1) * quota.DAY, st.month_end
    req_reset = st.req_start + quota.MINUTE - now if st.req_count else 0.0
    tok_used = st.tok_used + st.tok_reserved
    return {
        "requests_per_minute": _view(lim.rpm, st.req_count, req_reset),
        "tokens_per_minute": _view(lim.tpm, tok_used, st.tok_start + quota.MINUTE - now if tok_used else 0.0),
        "requests_in_flight": _view(lim.max_parallel, st.in_flight, 0.0),
        "daily_tokens": _view(lim.daily_tokens, st.today.tokens + st.day_reserved, day_end - now),
        "monthly_tokens": _view(lim.monthly_tokens, st.month.tokens + st.month_reserved, month_end - now),
        "daily_audio_seconds": _view(lim.daily_audio_seconds, st.today.audio + st.audio_reserved, day_end - now),
    }


def usage(st: quota.KeyState) -> dict[str, dict[str, float]]:
    """A key's exact usage today and this month (UTC), as the ledger will have it."""
    return {"today": _totals(st.today), "this_month": _totals(st.month)}


def _view(limit: int | None, used: float, resets_in_s: float) -> WindowView:
    remaining = None if limit is None else max(limit - used, 0)
    return WindowView(limit, used, remaining, round(max(resets_in_s, 0.0), 3))


def _totals(t: quota.Totals) -> dict[str, float]:
    return {"requests": t.requests, "prompt_tokens": t.prompt, "completion_tokens": t.completion,
            "reasoning_tokens": t.reasoning, "total_tokens": t.tokens,
            "audio_seconds": round(t.audio, 3)}


def _restore(totals: quota.Totals, values: list[float]) -> None:
    requests, prompt, completion, reasoning, audio = values
    quota.add_usage(totals, int(prompt), int(completion), int(reasoning), audio)
    totals.requests = int(requests)
