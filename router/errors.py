"""The OpenAI error envelope and the one middleware that turns every failure into it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Awaitable, Callable, Iterator

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from router.accounting.seam import LimiterUnavailable
from router.hops import looped
from router.request_log import RequestContext

LOG = logging.getLogger("router")
CTX = web.RequestKey("llm_launch_ctx", RequestContext)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Told about every finished request: method, path, final status, context (log lines, metrics).
Observer = Callable[[str, str, int, RequestContext], None]

# The type OpenAI's own API uses for each status the router produces.
TYPES = {
    400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
    404: "invalid_request_error", 405: "invalid_request_error", 408: "invalid_request_error",
    413: "invalid_request_error", 431: "invalid_request_error", 429: "rate_limit_error",
    500: "server_error", 502: "server_error", 503: "server_error", 504: "server_error", 508: "server_error",
}
# Anthropic's error type for each status, on its paths (see ANTHROPIC_PREFIX).
ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error",
}
ANTHROPIC_PREFIX = "/v1/messages"
MAX_REQUEST_ID = 128
CLIENT_GONE = 499  # nginx's status for "client closed the connection", used in logs and ledger
LOOP_MESSAGE = ("This request already passed through this router: a backend is registered at the router's own "
                "address, or routers forward to each other in a loop")


class BodyTimeout(Exception):
    """The client fell silent in the middle of a request body (set on the body by the connection)."""


class RouterError(Exception):
    """An error the router itself answers with; becomes the envelope in the middleware."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers if headers is not None else {}


def envelope(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """The body `{"error": {"message", "type", "param", "code"}}` for STATUS."""
    error = {"message": message, "type": TYPES.get(status, "server_error"), "param": param, "code": code}
    return orjson.dumps({"error": error})


def anthropic_envelope(status: int, message: str) -> bytes:
    """Anthropic's error body, `{"type": "error", "error": {"type", "message"}}`, for STATUS."""
    kind = ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def error_response(err: RouterError, path: str = "") -> web.Response:
    """A JSON response with ERR's status, extra headers and the envelope of PATH's API."""
    if path.startswith(ANTHROPIC_PREFIX):
        body = anthropic_envelope(err.status, err.message)
    else:
        body = envelope(err.status, err.message, err.code, err.param)
    headers = {"Content-Type": "application/json", **err.headers}
    return web.Response(status=err.status, body=body, headers=headers)


def request_id(request: web.Request, made: Iterator[str]) -> str:
    """The client's x-request-id when it sent a sane one, else the next id from MADE."""
    given = request.headers.get("x-request-id")
    if given and len(given) <= MAX_REQUEST_ID and given.isprintable():
        return given
    return next(made)


def request_ids() -> Iterator[str]:
    """Unique ids without a syscall each: a random per-process prefix and a counter."""
    prefix = os.urandom(6).hex()
    return (f"{prefix}{n:08x}" for n in itertools.count())


def make_middleware(observers: list[Observer], hop_id: str) -> Middleware:
    """The middleware: request id, loop check, error translation to the envelope, then OBSERVERS.

    OBSERVERS (log, metrics) is read per request, so modules mounted after the middleware was made
    can join it. A request carrying HOP_ID in its hop marker came back through this router: 508.
    """

    made = request_ids()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        ctx = RequestContext(request_id(request, made), time.perf_counter())
        request[CTX] = ctx
        status = CLIENT_GONE
        try:
            response = await _handle(request, handler, hop_id)
            status = response.status
            if not response.prepared:
                response.headers["x-request-id"] = ctx.request_id
            return response
        finally:
            for observe in observers:
                observe(request.method, request.path, status, ctx)

    return middleware


async def _handle(request: web.Request, handler: Handler, hop_id: str) -> web.StreamResponse:
    try:
        if looped(request.headers, hop_id):
            raise RouterError(508, LOOP_MESSAGE, code="loop_detected")
        return await handler(request)
    except RouterError as err:
        return error_response(err, request.path)
    except LimiterUnavailable as exc:  # the shared limiter fails closed, wherever it was asked
        unavailable = RouterError(503, str(exc), code="limiter_unavailable",
                                  headers={"Retry-After": str(exc.retry_after_s)})
        return error_response(unavailable, request.path)
    except web.HTTPException as exc:
        return _from_http_exception(exc, request.path)
    except web.RequestPayloadError:  # e.g. a body that is not the gzip its header claims
        message = "The request body could not be read: its Content-Encoding does not match it, or it was cut short"
        return _body_lost(request, RouterError(400, message, code="invalid_body"))
    except BodyTimeout as exc:
        return _body_lost(request, RouterError(408, str(exc), code="request_timeout"))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        LOG.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(RouterError(500, "internal router error", code="internal_error"), request.path)


def _body_lost(request: web.Request, err: RouterError) -> web.Response:
    """ERR, and the connection closes after it: the parser cannot find the next request's start.

    The body is marked finished so that aiohttp does not read it again after the answer (which
    would raise the same error there and log it as unhandled).
    """
    request.content.feed_eof()
    response = error_response(err, request.path)
    response.force_close()
    return response


def _from_http_exception(exc: web.HTTPException, path: str) -> web.StreamResponse:
    """aiohttp's own 404/405/413 in the envelope; redirects and successes stay as they are."""
    if exc.status < 400:
        return exc
    messages = {
        404: "Unknown path: see the API reference for the /v1 endpoints",
        405: "Method not allowed on this path",
        413: "Request body too large",
    }
    message = messages.get(exc.status, exc.reason)
    err = RouterError(exc.status, message, code=_code(exc.status))
    if exc.status == 405 and "Allow" in exc.headers:
        err.headers["Allow"] = exc.headers["Allow"]
    return error_response(err, path)


def _code(status: int) -> str | None:
    return {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}.get(status)
