"""Client connections: read deadlines, a cap on open connections, and HTTP errors in the envelope.

aiohttp's protocol has a keep-alive timer but no header or body deadline, answers parser errors
(a header over 8 KB, a malformed request line) in plain text with a traceback in the log, and
takes every connection it is offered. GuardedHandler adds what is missing. It relies on three
private attributes of aiohttp 3.x's RequestHandler, read only: `_waiter` (set while the protocol
waits for the next request), `_current_request` and `_messages`. This module is the one place
that does; tests/integration/test_router_connections.py fails if they change meaning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong

from router.errors import BodyTimeout, envelope, request_ids

LOG = logging.getLogger("router.connections")
REFUSAL_LINGER_S = 2.0  # a refused connection reads (and drops) the request this long, so the 503 is read
LOG_EVERY_S = 10.0
_IDS = request_ids()


@dataclass
class Limits:
    """The deadlines and the cap, and the count of connections open now (shared by all of them)."""

    header_s: float
    body_s: float
    max_connections: int
    retry_after_s: int
    open: int = 0


class Throttled:
    """At most one log line per LOG_EVERY_S for a kind of event, with the count since the last."""

    def __init__(self, text: str, level: int = logging.INFO) -> None:
        self._text, self._level = text, level
        self._count, self._last = 0, 0.0

    def note(self) -> None:
        self._count += 1
        now = time.monotonic()
        if now - self._last >= LOG_EVERY_S:
            LOG.log(self._level, "%s (%d since the last line)", self._text, self._count)
            self._count, self._last = 0, now


REFUSED = Throttled("refused connections over router.max_connections with 503", logging.WARNING)
HEADERS_LATE = Throttled("closed connections whose request headers did not arrive within router.header_timeout_s")
BODY_LATE = Throttled("answered 408 to requests whose body fell silent for router.body_timeout_s")


def raw_response(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 answer with the envelope, for a connection no request handler serves."""
    body = envelope(status, message, code)
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close", f"x-request-id: {next(_IDS)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class GuardedHandler(web.RequestHandler):
    """aiohttp's HTTP protocol, plus header and body deadlines, the connection cap and envelopes."""

    def __init__(self, manager: web.Server, *, limits: Limits, **kwargs: object) -> None:
        super().__init__(manager, **kwargs)  # type: ignore[arg-type]
        self._limits = limits
        self._refused = False
        self._counted = False
        self._body_dead = False  # a silent body was given up: drop what still comes
        self._header_from: float | None = None  # when the awaited request's first byte (or the connection) came
        self._header_bytes = False
        self._last_data = 0.0
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._limits.open >= self._limits.max_connections:
            self._refuse(transport)
            return
        self._limits.open += 1
        self._counted = True
        super().connection_made(transport)
        # A new connection must send its first request's headers within the header timeout too.
        self._header_from = self._last_data = self._loop.time()
        self._arm(self._header_from + self._limits.header_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._counted:
            self._counted = False
            self._limits.open -= 1
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or self._body_dead:
            return
        now = self._last_data = self._loop.time()
        super().data_received(data)
        if self._waiter is not None and not self._waiter.done():  # still waiting: a partial request head
            if self._header_from is None or not self._header_bytes:
                self._header_from = now
                self._arm(now + self._limits.header_s)
            self._header_bytes = True
        else:
            self._header_from, self._header_bytes = None, False
            self._arm(now + self._limits.body_s)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (or a handler crash): the envelope, one log line."""
        status, text, code = _describe(status, exc)
        LOG.info("refused a request from %s: %d %s", request.remote, status, code)
        if request.writer.output_size > 0:  # as aiohttp: an answer already started cannot be replaced
            raise ConnectionError("the answer had started; closing the connection")
        response = web.Response(status=status, body=envelope(status, text, code), content_type="application/json",
                                headers={"x-request-id": next(_IDS)})
        response.force_close()  # the parser lost its place in the stream
        return response

    def _refuse(self, transport: asyncio.BaseTransport) -> None:
        """Past the cap: answer 503 without parsing, stop writing, and close after a short linger."""
        self._refused = True
        REFUSED.note()
        assert isinstance(transport, asyncio.Transport)
        message = "The router has too many open connections; try again shortly"
        transport.write(raw_response(503, message, "too_many_connections",
                                     {"Retry-After": str(self._limits.retry_after_s)}))
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(REFUSAL_LINGER_S, transport.close)

    def _arm(self, at: float) -> None:
        """Check the deadlines at AT (or earlier, if a check is due sooner)."""
        if self._watch is not None:
            if self._watch.when() <= at:
                return
            self._watch.cancel()
        self._watch = self._loop.call_at(at, self._check)

    def _check(self) -> None:
        self._watch = None
        if self.transport is None:
            return
        now = self._loop.time()
        request = self._current_request
        if self._header_from is not None:
            due = self._header_from + self._limits.header_s
            if now >= due:
                self._headers_late()
                return
        elif request is not None and not request.content.is_eof():
            due = self._last_data + self._limits.body_s
            if now >= due:
                self._body_late(request)
                return
        elif request is not None or self._messages:
            due = now + self._limits.body_s  # a request in hand: its body may still come
        else:
            return  # idle between requests: aiohttp's keep-alive timer closes the connection
        self._watch = self._loop.call_at(due, self._check)

    def _headers_late(self) -> None:
        HEADERS_LATE.note()
        if self._header_bytes and self.transport is not None:  # half a request: say why it ends
            message = f"The request headers did not arrive within {self._limits.header_s:g} s"
            self.transport.write(raw_response(408, message, "request_timeout"))
        self.force_close()

    def _body_late(self, request: web.BaseRequest) -> None:
        """The handler reading the body gets BodyTimeout, which the middleware answers with 408."""
        BODY_LATE.note()
        self._body_dead = True
        request.content.set_exception(BodyTimeout(f"The request body fell silent for {self._limits.body_s:g} s"))
        request.content.feed_eof()  # so aiohttp does not wait to read the rest after the answer


def _describe(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    """Status, message and code for what aiohttp reports; never the client's bytes (log and answer stay clean)."""
    if isinstance(exc, LineTooLong) or "Too many headers" in str(exc):
        return 431, "The request line or a header field is too long, or there are too many headers", \
            "request_header_too_large"
    if status == 400:
        return 400, "The request is not valid HTTP", "invalid_http"
    if status == 504:
        return 504, "The request took too long", "timeout"
    return 500, "internal router error", "internal_error"
