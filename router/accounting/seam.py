"""The seam between the proxy and quotas/usage: what the proxy tells, what it is told back.

The proxy calls `admit` before it picks a backend (a refusal costs nothing and reaches no
backend), and `finish` exactly once per admitted request with the backend's exact usage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from launcher.core.keys import KeyRecord


@dataclass(frozen=True)
class RequestInfo:
    """What admission needs to know about a request, known before any backend is called."""

    request_id: str
    key: KeyRecord
    model: str  # the public name the client asked for
    endpoint: str  # "chat", "completions", "embeddings", "transcriptions", "translations"
    prompt_estimate: int  # tokens, estimated from the body size
    max_tokens: int  # output tokens per choice: asked, else the name's default reservation; 0 when n/a
    stream: bool = False
    choices: int = 1  # sequences the backend generates (`n`, and `best_of` on completions)
    audio_seconds: float = 0.0  # audio requests: the upload's length, read or bounded from its bytes


@dataclass(frozen=True)
class Usage:
    """Exact counts from the backend; `estimated` when a stream ended before its usage chunk.

    `rejected` says why the backend's usage could not be trusted (router.upstream.usage_check);
    such a request is charged as its reservation.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    audio_seconds: float = 0.0
    estimated: bool = False
    rejected: str = ""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Admission:
    """An admitted request: what it reserved, and the rate-limit headers for its response."""

    info: RequestInfo
    reserved_tokens: int = 0
    started_at: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    reserved_audio: float = 0.0  # seconds
    ticket: str = ""  # the shared limiter's reservation (lease) id; "" when admitted in this process


class QuotaExceeded(Exception):
    """A limit refuses the request: 429 with Retry-After and the rate-limit headers.

    `limit` names the limit that refused, as metrics label it: the KeyLimits field ("rpm", "tpm",
    "daily_tokens", "monthly_tokens", "daily_audio_seconds", "max_parallel") or "other".
    """

    def __init__(self, message: str, retry_after_s: int, headers: dict[str, str], *, limit: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = headers
        self.limit = limit


class LimiterUnavailable(Exception):
    """The shared limiter cannot be reached and the router fails closed: 503 with Retry-After."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Accounting(Protocol):
    """Quotas and the usage ledger, as the proxy sees them."""

    async def admit(self, info: RequestInfo, now: float) -> Admission:
        """Reserve capacity for INFO or raise QuotaExceeded (LimiterUnavailable: it cannot tell)."""
        ...

    def finish(
        self, admission: Admission, status: int, usage: Usage, backend: str | None, now: float
    ) -> None:
        """Settle the reservation with the real usage and append to the ledger (non-blocking)."""
        ...

    def headers(self, key: KeyRecord, now: float) -> dict[str, str]:
        """KEY's x-ratelimit-* headers now, for errors answered before admission (400, 403, 404)."""
        ...

    async def start(self) -> None:
        """Load persisted budgets and start background writers."""
        ...

    async def close(self) -> None:
        """Flush everything pending; called on graceful shutdown."""
        ...


class NoAccounting:
    """Accounting switched off: admit everything, record nothing (for benchmarks and dev)."""

    async def admit(self, info: RequestInfo, now: float) -> Admission:
        return Admission(info=info, started_at=now)

    def finish(
        self, admission: Admission, status: int, usage: Usage, backend: str | None, now: float
    ) -> None:
        return None

    def headers(self, key: KeyRecord, now: float) -> dict[str, str]:
        return {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None
