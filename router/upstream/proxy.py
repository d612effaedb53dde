"""The one module that forwards requests to backends: failover, timeouts, streaming through.

No total timeout (a long generation runs for an hour); a connect timeout and a stall timeout
(no byte for N seconds) instead. A request is retried on another replica only while nothing has
reached the client. A client that goes away closes the upstream connection, so the GPU stops.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from router.accounting.seam import Usage
from router.upstream.balancer import choose_backend
from router.errors import CLIENT_GONE, RouterError, envelope
from router.hops import HOP, outgoing
from router.upstream.health import after_failure, apply
from router.upstream.snapshot import Backend, Pool
from router.upstream.usage import AUDIO_SECONDS, SseTap, usage_from_audio_header, usage_from_json
from router.upstream.usage_check import RejectionLog

NO_USAGE = Usage()
SSE = "text/event-stream"
CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
BROKEN = (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError)
REJECTED = (401, 403)
# Bodies above this go upstream in pieces under a per-piece stall deadline (smaller ones fit in socket buffers).
PACED_BODY_BYTES = 256 * 1024
PIECE_BYTES = 256 * 1024


class Call:
    """One request to forward, as the endpoint handler prepared it."""

    __slots__ = ("path", "body", "content_type", "stream", "strip_usage", "prompt_estimate", "headers",
                 "hard_end", "soft_end")

    def __init__(
        self, path: str, body: bytes, content_type: str, *, stream: bool = False,
        strip_usage: bool = False, prompt_estimate: int = 0, headers: dict[str, str],
    ) -> None:
        self.path = path
        self.body = body
        self.content_type = content_type
        self.stream = stream
        self.strip_usage = strip_usage
        self.prompt_estimate = prompt_estimate
        self.headers = headers  # added to the client's response: x-request-id, rate limits
        # Epoch seconds: no replica whose job ends before hard_end (the drain threshold), and one
        # that runs past soft_end (this request's worst case) while there is one.
        self.hard_end = 0.0
        self.soft_end = 0.0


class Outcome:
    """How a forwarded request ended, for the ledger and metrics: status, usage, backend, first chunk."""

    __slots__ = ("status", "usage", "backend", "first_at")

    def __init__(self) -> None:
        self.status = CLIENT_GONE
        self.usage = NO_USAGE
        self.backend: str | None = None
        self.first_at: float | None = None  # perf_counter() when a stream's first chunk arrived


class _Retry(Exception):
    """Nothing reached the client yet: try another replica."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Upstream:
    """Calls backends over one shared session."""

    def __init__(
        self, session: aiohttp.ClientSession, *, connect_timeout_s: float, stall_timeout_s: float,
        retry_after_s: int, clock: Callable[[], float], hop_id: str, max_response_bytes: int,
    ) -> None:
        self._session = session
        self._hop_id = hop_id  # sent on every upstream request: a request that comes back is refused
        self._max_response = max_response_bytes
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=stall_timeout_s
        )
        self._stall_s = stall_timeout_s
        self._retry_after = str(retry_after_s)
        self._clock = clock
        self._rejections = RejectionLog()

    async def forward(self, request: web.Request, pool: Pool, call: Call, outcome: Outcome) -> web.StreamResponse:
        """Send CALL to the best ready backend of POOL, failing over while the client saw nothing."""
        tried: list[Backend] = []
        failure: _Retry | None = None
        while True:
            backend = choose_backend(pool.backends, pool.turn, tried, call.hard_end, call.soft_end)
            pool.turn += 1
            if backend is None:
                raise self._unavailable(failure or _Retry(503, _no_backend(pool, call)))
            backend.outstanding += 1
            try:
                return await self._attempt(request, backend, call, outcome)
            except _Retry as retry:
                tried.append(backend)
                failure = retry
            finally:
                backend.outstanding -= 1

    def _unavailable(self, failure: _Retry) -> RouterError:
        code = "backend_unavailable" if failure.status == 503 else "backend_failed"
        message = f"{failure}; try again shortly"
        return RouterError(failure.status, message, code=code, headers={"Retry-After": self._retry_after})

    async def _attempt(self, request: web.Request, backend: Backend, call: Call, outcome: Outcome) -> web.StreamResponse:
        upstream = await self._open(backend, call, outgoing(request.headers, self._hop_id), retry_stale=True)
        if upstream.status in REJECTED:  # the router's own secret was refused: a broken backend, not the client's fault
            upstream.close()
            raise self._eject(backend, 502, f"the server of model {backend.model!r} rejected the service's "
                                            f"credentials ({upstream.status})")
        try:
            if call.stream and upstream.status == 200 and upstream.content_type == SSE:
                first = await self._read(upstream.content.readany(), backend)
                outcome.backend, outcome.first_at = backend.url, time.perf_counter()
                return await self._relay_stream(request, upstream, first, backend, call, outcome)
            body = await self._read(self._read_capped(upstream), backend)
        except BaseException:
            upstream.close()
            raise
        upstream.release()
        outcome.backend = backend.url
        response = _respond(upstream, body, call, outcome)
        self._rejections.note(outcome.usage, backend.url, backend.model)
        return response

    async def _open(self, backend: Backend, call: Call, hop: str, retry_stale: bool) -> aiohttp.ClientResponse:
        headers = {**backend.headers, "Content-Type": call.content_type, "X-Request-Id": call.headers["x-request-id"],
                   HOP: hop}
        try:
            return await self._post(backend.url + call.path, call.body, headers)
        except aiohttp.ServerDisconnectedError:
            if retry_stale:  # a kept-alive connection the backend had closed: once more, same backend
                return await self._open(backend, call, hop, retry_stale=False)
            raise self._eject(backend, 502, "the backend closed the connection")
        except CONNECT_ERRORS as exc:
            raise self._eject(backend, 503, f"could not connect to a backend: {exc}")
        except aiohttp.ClientOSError as exc:
            raise self._eject(backend, 502, f"the backend connection failed: {exc}")
        except aiohttp.ClientResponseError:  # a bad status line or headers: nothing reached the client
            raise self._eject(backend, 502, "the backend answered something that is not HTTP")
        except asyncio.TimeoutError:
            self._eject(backend, 504, "stalled")
            raise self._stalled() from None

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """POST BODY; a large one goes in pieces, each of which the backend must take within the stall timeout.

        aiohttp's read timeout cannot interrupt a body upload that a backend stopped reading.
        """
        if len(body) <= PACED_BODY_BYTES:
            return await self._session.post(url, data=body, headers=headers, timeout=self._timeout)
        async with asyncio.timeout(None) as deadline:
            return await self._session.post(url, data=_pieces(body, deadline, self._stall_s), timeout=self._timeout,
                                            headers={**headers, "Content-Length": str(len(body))})

    async def _read(self, reading: Awaitable[bytes], backend: Backend) -> bytes:
        """Await an upstream read before the client saw anything; failures are retryable."""
        try:
            return await reading
        except BROKEN as exc:
            raise self._eject(backend, 502, f"the backend failed before answering: {exc}")
        except asyncio.TimeoutError:
            self._eject(backend, 504, "stalled")
            raise self._stalled() from None

    async def _read_capped(self, upstream: aiohttp.ClientResponse) -> bytes:
        """The whole answer (it is buffered to read its usage), or a 502 once it passes max_response_bytes."""
        if (upstream.content_length or 0) > self._max_response:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in upstream.content.iter_any():
            size += len(chunk)
            if size > self._max_response:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> RouterError:
        message = f"The backend's answer is larger than the router's limit of {self._max_response} bytes"
        return RouterError(502, message, code="response_too_large")

    def _eject(self, backend: Backend, status: int, reason: str) -> _Retry:
        apply(backend, after_failure(backend.health, reason, self._clock()))
        return _Retry(status, reason)

    def _stalled(self) -> RouterError:
        return RouterError(504, f"The backend sent nothing for {self._stall_s:g} s", code="backend_timeout")

    async def _relay_stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse, first: bytes, backend: Backend,
        call: Call, outcome: Outcome,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers=_stream_headers(call))
        tap = SseTap(call.strip_usage, call.prompt_estimate)
        await response.prepare(request)
        outcome.status = upstream.status
        try:
            await self._pump(response, upstream, first, tap, backend, outcome)
        except (asyncio.CancelledError, ConnectionResetError):
            outcome.status = CLIENT_GONE
            upstream.close()  # the backend sees the connection close and stops generating
            raise
        finally:
            outcome.usage = tap.result()
            self._rejections.note(outcome.usage, backend.url, backend.model)
        upstream.release()
        rest = tap.finish()
        if rest and outcome.status == upstream.status:
            await response.write(rest)
        await response.write_eof()
        return response

    async def _pump(
        self, response: web.StreamResponse, upstream: aiohttp.ClientResponse, chunk: bytes,
        tap: SseTap, backend: Backend, outcome: Outcome,
    ) -> None:
        """Copy the stream as it arrives; a backend failing midway ends it with an error event."""
        try:
            while chunk:
                out = tap.feed(chunk)
                if out:
                    await response.write(out)
                chunk = await upstream.content.readany()
        except BROKEN as exc:
            outcome.status = 502
            await response.write(_error_event(502, f"The backend failed mid-stream: {exc}", "backend_failed"))
            apply(backend, after_failure(backend.health, "failed mid-stream", self._clock()))
        except asyncio.TimeoutError:
            outcome.status = 504
            await response.write(_error_event(504, f"The backend sent nothing for {self._stall_s:g} s", "backend_timeout"))
            apply(backend, after_failure(backend.health, "stalled mid-stream", self._clock()))


def _no_backend(pool: Pool, call: Call) -> str:
    if any(b.routable and b.end_at < call.hard_end for b in pool.backends):
        return (f"The replicas of model {pool.model!r} are about to reach their Slurm time limit and take "
                "no new requests")
    return f"No ready backend for model {pool.model!r}"


async def _pieces(body: bytes, deadline: asyncio.Timeout, stall_s: float) -> AsyncIterator[bytes]:
    """BODY in pieces, moving DEADLINE on as each is taken; no deadline once all is sent."""
    loop = asyncio.get_running_loop()
    for start in range(0, len(body), PIECE_BYTES):
        deadline.reschedule(loop.time() + stall_s)
        yield body[start:start + PIECE_BYTES]
    deadline.reschedule(None)


def _respond(upstream: aiohttp.ClientResponse, body: bytes, call: Call, outcome: Outcome) -> web.Response:
    """The backend's answer as it was: status, content type and body unchanged."""
    outcome.status = upstream.status
    if upstream.status == 200:
        # text/srt/vtt transcriptions have no usage in the body: their audio length is a header.
        usage = usage_from_json(body) or usage_from_audio_header(upstream.headers.get(AUDIO_SECONDS))
        outcome.usage = usage or NO_USAGE
    headers = {**call.headers, "Content-Type": upstream.headers.get("Content-Type", "application/json")}
    return web.Response(body=body, status=upstream.status, headers=headers)


def _stream_headers(call: Call) -> dict[str, str]:
    # X-Accel-Buffering: a reverse proxy in front of the router must not buffer the stream either.
    return {**call.headers, "Content-Type": SSE, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _error_event(status: int, message: str, code: str) -> bytes:
    """An SSE event the openai SDK raises as an APIError."""
    return b"data: " + envelope(status, message, code) + b"\n\n"
