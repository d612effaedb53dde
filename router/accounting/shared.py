"""Shared mode's limits: the counters and reservations of every key in Redis, for any number of routers.

Each admission and each settlement is one Redis script (router/accounting/shared_scripts.py),
so a burst spread over several routers is admitted exactly as one router would admit it.
Reservations are leases this router renews every LEASE_S / 3 seconds: when a router dies, its
reservations are settled by the next script that sees them expired, LEASE_S after its last
renewal at the latest. Today's and this month's budgets live in Redis; a key that Redis does
not know (first use, or Redis restarted empty) is seeded once from the ledger, atomically, so
no router's seed adds to another's.

Redis unreachable: with `redis_fail_open` off (the default) requests get 503
`limiter_unavailable`; with it on each router admits against its own share of every limit (the
limit divided by the routers that were alive), in this process, until Redis answers again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from typing import Any, Self

from redis.exceptions import RedisError, ResponseError
from sqlalchemy import Engine

from launcher.core.keys import KeyRecord
from launcher.core.settings import KeyLimits, Settings
from router.accounting import limits as quota
from router.accounting.ledger import Ledger
from router.accounting.metered import LimitsAccounting, reservations, reserved_usage
from router.accounting.seam import Admission, LimiterUnavailable, QuotaExceeded, RequestInfo, Usage
from router.accounting.resp import RespClient, reply_of
from router.accounting.shared_scripts import ADMIT, FIELDS, READ, SEED, SETTLE

log = logging.getLogger(__name__)

LEASE_S = 15.0  # a dead router's reservations count at most this long after its last renewal
ROUTERS = "llm-launch:routers"  # live routers: member = router id, score = lease expiry
DECIDED = ("shared", "local", "unavailable")  # where admissions were decided (unavailable: a 503)
LIMITS = tuple(f.name for f in dataclasses.fields(KeyLimits))  # in the order ADMIT reads them


@dataclasses.dataclass
class LimiterStats:
    """What /metrics shows of the shared limiter."""

    decided: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(DECIDED, 0))
    redis_errors: int = 0
    leases_expired: int = 0  # settlements that found their lease already settled as expired
    routers: int = 1
    up: bool = True


class SharedAccounting:
    """Admits against per-key limits kept in Redis and records exact usage in the shared ledger."""

    def __init__(self, ledger: Ledger, client: RespClient, *, fail_open: bool = False,
                 retry_after_s: int = 10, lease_s: float = LEASE_S) -> None:
        self.ledger = ledger
        self.stats = LimiterStats()
        self._redis = client
        self._fail_open = fail_open
        self._retry_after_s = retry_after_s
        self._lease_s = lease_s
        self._id = ledger.instance
        self._tickets = itertools.count(1)
        self._held: dict[int, set[str]] = {}  # key id -> this router's leases in flight
        self._headers: dict[int, dict[str, str]] = {}  # key id -> its last rate-limit headers
        self._local = LimitsAccounting(ledger)  # fail-open: this router's shares, in memory
        self._seeding = asyncio.Lock()
        self._settling: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, engine: Engine) -> Self:
        """Build from the router settings, on the registry ENGINE and `router.redis_url`."""
        r = settings.router
        ledger = Ledger.from_settings(r, engine)
        return cls(ledger, RespClient(r.redis_url), fail_open=r.redis_fail_open, retry_after_s=r.retry_after_s)

    async def admit(self, info: RequestInfo, now: float) -> Admission:
        """Reserve capacity for INFO in Redis or raise QuotaExceeded; Redis down: see the module."""
        now = round(now, 3)  # exact through Lua's 14-digit numbers, so the reservation settles its window
        key, limits = info.key, info.key.limits
        reserve, audio = reservations(info)
        ticket = f"{self._id}:{next(self._tickets)}"
        args = [*_clock(now), *(_limit(getattr(limits, name)) for name in LIMITS),
                reserve, f"{audio:.3f}", ticket, f"{now + self._lease_s:.3f}"]
        try:
            reply = await self._redis.script(ADMIT, _keys(key.id), args)
            if reply[0] == b"seed":
                await self._seed(key.id, now)
                reply = await self._redis.script(ADMIT, _keys(key.id), args)
        except RedisError as exc:
            return self._unavailable(info, now, exc)
        self._redis_back()
        self.stats.decided["shared"] += 1
        st = _state(reply[1:], now)
        headers = self._headers[key.id] = quota.rate_headers(st, limits, now)
        outcome = reply[0].decode()
        if outcome != "ok":
            refused = quota.refusal(st, limits, reserve, audio, now) or quota.Refusal(
                outcome, f"Rate limit reached ({outcome}).", 1.0)
            raise QuotaExceeded(refused.message, quota.retry_after(refused.wait_s), headers, limit=outcome)
        self._held.setdefault(key.id, set()).add(ticket)
        return Admission(info, reserve, now, headers, reserved_audio=audio, ticket=ticket)

    def finish(self, admission: Admission, status: int, usage: Usage, backend: str | None, now: float) -> None:
        """Record USAGE in the ledger and settle the lease in Redis (in the background)."""
        if not admission.ticket:  # admitted on this router's own shares while Redis was away
            self._local.finish(admission, status, usage, backend, now)
            return
        if usage.rejected:
            usage = reserved_usage(admission)
        info = admission.info
        self.ledger.record(info.request_id, info.key.id, info.key.name, info.key.account, info.model, status,
                           usage, backend, admission.started_at, now)
        now = round(now, 3)
        # Written at once, its reply read by a callback: no task per request. Not connected, or
        # the script unknown to a restarted Redis: settled in a task that reconnects and loads it.
        sent = self._redis.send("EVALSHA", SETTLE.sha, 3, *_keys(info.key.id), *_settle_args(admission, usage, now))
        if sent is None:
            self._settle_in_task(admission, usage, now)
        else:
            sent.add_done_callback(lambda done: self._settled(done, admission, usage, now))

    def _settled(self, done: asyncio.Future[Any], admission: Admission, usage: Usage, now: float) -> None:
        try:
            self._lease_ended(admission, reply_of(done))
        except ResponseError:  # NOSCRIPT: Redis restarted since the script was loaded
            self._settle_in_task(admission, usage, now)
        except RedisError as exc:  # its lease expires and is settled as a full reservation
            self._redis_down(exc)
            self._lease_ended(admission, 1)

    def _settle_in_task(self, admission: Admission, usage: Usage, now: float) -> None:
        task = asyncio.get_running_loop().create_task(self._settle_lease(admission, usage, now))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def headers(self, key: KeyRecord, now: float) -> dict[str, str]:
        """KEY's rate-limit headers as this router last saw them (errors answered before admission)."""
        return self._headers.get(key.id, {})

    async def key_state(self, key: KeyRecord, now: float) -> quota.KeyState:
        """KEY's counters in Redis now (expired leases settled), for /v1/me."""
        now = round(now, 3)
        try:
            reply = await self._redis.script(READ, _keys(key.id), _clock(now))
            if reply[0] == b"seed":
                await self._seed(key.id, now)
                reply = await self._redis.script(READ, _keys(key.id), _clock(now))
        except RedisError as exc:
            self._redis_down(exc)
            raise LimiterUnavailable("The rate limiter cannot be reached; retry shortly.", self._retry_after_s) from None
        self._redis_back()
        return _state(reply, now)

    async def start(self) -> None:
        """Start the ledger and the lease renewal (Redis may still be down: requests then say so)."""
        await self.ledger.start()
        self._renewer = asyncio.create_task(self._renew_forever(), name="limiter-leases")

    async def close(self) -> None:
        """Stop renewing, settle what is finishing, flush the ledger, close the connection."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=5.0)
        try:
            await self._redis.call("ZREM", ROUTERS, self._id)
        except RedisError:
            pass
        await self.ledger.close()
        await self._redis.close()

    async def _seed(self, key_id: int, now: float) -> None:
        """Give every key Redis does not know its budgets from the ledger; SEED keeps the first."""
        async with self._seeding:
            totals = await self.ledger.load_totals(now)
            empty = [0.0] * 5
            seeds = []
            for seeded in {key_id, *totals}:
                today, month = totals.get(seeded, (empty, empty))
                args = [*_clock(now), *(_number(v) for v in today), *(_number(v) for v in month)]
                seeds.append(self._redis.script(SEED, _keys(seeded), args))
            await asyncio.gather(*seeds)  # pipelined on the one connection

    async def _settle_lease(self, admission: Admission, usage: Usage, now: float) -> None:
        settled = 1
        try:
            settled = await self._redis.script(SETTLE, _keys(admission.info.key.id),
                                               _settle_args(admission, usage, now))
        except RedisError as exc:  # its lease expires and is settled as a full reservation
            self._redis_down(exc)
        self._lease_ended(admission, settled)

    def _lease_ended(self, admission: Admission, settled: int) -> None:
        """Stop renewing ADMISSION's lease; SETTLED 0: it had expired and was charged in full."""
        key_id = admission.info.key.id
        if not settled:
            self.stats.leases_expired += 1
            log.warning("a reservation of key %d expired before its request ended: it was charged in full", key_id)
        held = self._held.get(key_id)
        if held is not None:
            held.discard(admission.ticket)
            if not held:
                del self._held[key_id]

    async def _renew_forever(self) -> None:
        while True:
            try:
                await self._renew(time.time())
            except RedisError as exc:
                self._redis_down(exc)
            await asyncio.sleep(self._lease_s / 3)

    async def _renew(self, now: float) -> None:
        """Push this router's leases (and its own liveness) LEASE_S ahead; count the live routers."""
        expiry = f"{now + self._lease_s:.3f}"
        calls = [self._redis.call("ZADD", _keys(key_id)[1], "XX", *(x for t in tickets for x in (expiry, t)))
                 for key_id, tickets in list(self._held.items()) if tickets]
        calls += [self._redis.call("ZADD", ROUTERS, expiry, self._id),
                  self._redis.call("ZREMRANGEBYSCORE", ROUTERS, "-inf", f"{now:.3f}"),
                  self._redis.call("ZCARD", ROUTERS)]
        replies = await asyncio.gather(*calls)  # pipelined on the one connection
        self.stats.routers = max(int(replies[-1]), 1)
        self._redis_back()

    def _unavailable(self, info: RequestInfo, now: float, exc: RedisError) -> Admission:
        self._redis_down(exc)
        if not self._fail_open:
            self.stats.decided["unavailable"] += 1
            raise LimiterUnavailable("The rate limiter cannot be reached, so no request is admitted; retry shortly.",
                                     self._retry_after_s)
        share = dataclasses.replace(info.key, limits=shares(info.key.limits, self.stats.routers))
        self.stats.decided["local"] += 1
        admission = self._local.admit_now(dataclasses.replace(info, key=share), now)
        return dataclasses.replace(admission, info=info)

    def _redis_down(self, exc: RedisError) -> None:
        self.stats.redis_errors += 1
        if self.stats.up:
            self.stats.up = False
            mode = "local shares of each limit" if self._fail_open else "503 limiter_unavailable"
            log.error("Redis cannot be reached (%s): requests get %s until it answers", exc, mode)

    def _redis_back(self) -> None:
        if not self.stats.up:
            self.stats.up = True
            log.warning("Redis answers again: limits are shared again")


def shares(limits: KeyLimits, routers: int) -> KeyLimits:
    """Each of ROUTERS routers' share of LIMITS: together never more than the limit."""
    return KeyLimits(**{name: None if (v := getattr(limits, name)) is None else v // routers for name in LIMITS})


def _keys(key_id: int) -> list[str]:
    return [f"llm-launch:k:{key_id}", f"llm-launch:l:{key_id}", f"llm-launch:r:{key_id}"]


def _clock(now: float) -> list[str]:
    start, end = quota.month_bounds(now)
    return [f"{now:.3f}", f"{start:.0f}", f"{end:.0f}"]


def _settle_args(admission: Admission, usage: Usage, now: float) -> list[Any]:
    return [*_clock(now), admission.ticket, usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens,
            f"{usage.audio_seconds:.3f}"]


def _limit(value: int | None) -> str:
    return "" if value is None else str(value)


def _number(value: float) -> str:
    return f"{value:.3f}" if isinstance(value, float) and not value.is_integer() else str(int(value))


def _state(values: list[Any], now: float) -> quota.KeyState:
    """A KeyState from the script's FIELDS, so limits.py's headers and messages read it unchanged."""
    v = dict(zip(FIELDS, (float(x) for x in values)))
    st = quota.KeyState(now)
    st.req_start, st.req_count, st.tok_start = v["rs"], int(v["rc"]), v["ts"]
    st.tok_used, st.tok_reserved, st.in_flight = int(v["tu"]), int(v["tr"]), int(v["inf"])
    st.day, st.day_reserved, st.audio_reserved = int(v["day"]), int(v["dr"]), v["ar"]
    st.month_start, st.month_end, st.month_reserved = v["ms"], v["me"], int(v["mr"])
    for totals, prefix in ((st.today, "d"), (st.month, "m")):
        totals.requests, totals.tokens = int(v[prefix + "q"]), int(v[prefix + "t"])
        totals.prompt, totals.completion = int(v[prefix + "p"]), int(v[prefix + "c"])
        totals.reasoning, totals.audio = int(v[prefix + "x"]), v[prefix + "a"]
    return st
