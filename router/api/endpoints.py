"""The /v1 handlers: check the key, read the request as far as routing needs, hand it on."""

from __future__ import annotations

import time
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from launcher.core.db import utcnow
from launcher.core.keys import KeyRecord
from router.accounting.seam import QuotaExceeded, RequestInfo
from router.api.auth import authenticate, authorization, check_model
from router.api.availability import AVAILABILITY, announcement, when_not_ready
from router.api.audio_length import audio_seconds
from router.api.body import form_field, form_part, inspect, parse_json, with_include_usage
from router.api.defaults import apply_route, choices, reservation
from router.api.kinds import check_kind
from router.errors import CTX, RouterError
from router.api.model_list import list_entries
from router.api.model_status import model_status, unavailable
from router.api.paths import AUDIO_ENDPOINTS, GENERATING, JSON_ENDPOINTS, STREAM_USAGE
from router.upstream.names import Route
from router.upstream.proxy import Call, Outcome
from router.upstream.snapshot import Pool
from router.state import STATE, RouterState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STORED_RESPONSE_PATHS = (("GET", "/v1/responses/{response_id}"), ("DELETE", "/v1/responses/{response_id}"),
                         ("POST", "/v1/responses/{response_id}/cancel"),
                         ("GET", "/v1/responses/{response_id}/input_items"))


def authorized(request: web.Request) -> KeyRecord:
    """The caller's key record (also for other routes like /v1/me), or a 401."""
    state = request.app[STATE]
    record = authenticate(authorization(request.headers), state.view.snapshot.keys, utcnow)
    request[CTX].key_id = record.id
    return record


def json_handler(endpoint: str) -> Handler:
    """The handler for a JSON endpoint such as chat completions."""
    return _keyed_handler(endpoint, _json_request)


def audio_handler(endpoint: str) -> Handler:
    """The handler for a multipart audio endpoint; the body goes upstream byte for byte."""
    return _keyed_handler(endpoint, _audio_request)


def _keyed_handler(endpoint: str, serve: Callable[[web.Request, RouterState, KeyRecord, str],
                                                 Awaitable[web.StreamResponse]]) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        key = authorized(request)
        try:
            return await serve(request, state, key, endpoint)
        except RouterError as err:
            add_rate_headers(state, key, err)
            raise

    return handle


async def _json_request(request: web.Request, state: RouterState, key: KeyRecord, endpoint: str) -> web.StreamResponse:
    body = await read_body(request, state.settings.router.max_json_body_bytes)
    doc = parse_json(body)
    fields = inspect(doc)
    route = state.names.routes.get(fields.model)
    sent = fields  # max_tokens, n and best_of as the backend will see them
    if route is not None:  # a catalog name: its defaults, its limit, the server's own name
        body, doc = apply_route(body, doc, route, endpoint)
        sent = inspect(doc)
    max_tokens = _reserve(state, endpoint, sent.max_tokens, route)
    strip = fields.stream and endpoint in STREAM_USAGE and not fields.client_wants_usage
    if strip:
        body = with_include_usage(body, doc)
    content_type = request.headers.get("Content-Type", "application/json")
    estimate = len(body) // 4  # about four bytes of JSON per prompt token
    call = Call(request.path, body, content_type, stream=fields.stream, strip_usage=strip,
                prompt_estimate=estimate, headers={"x-request-id": request[CTX].request_id})
    info = RequestInfo(request[CTX].request_id, key, fields.model, endpoint, estimate,
                       max_tokens, fields.stream, choices(sent, endpoint))
    return await dispatch(request, state, info, call)


def add_rate_headers(state: RouterState, key: KeyRecord, err: RouterError) -> None:
    """Give an error answered to a known key its x-ratelimit-* headers (the error's own win)."""
    err.headers = {**state.accounting.headers(key, time.time()), **err.headers}


def _reserve(state: RouterState, endpoint: str, asked: int, route: Route | None) -> int:
    """Output tokens per choice to reserve: what the request asks, else the name's default (any name)."""
    if endpoint not in GENERATING:  # embeddings, rerank and count_tokens produce no output tokens
        return asked
    limit = route.max_tokens if route is not None else None
    return reservation(asked, limit, state.settings.router.default_reserve_tokens)


async def _audio_request(request: web.Request, state: RouterState, key: KeyRecord, endpoint: str) -> web.StreamResponse:
    body = await read_body(request, state.settings.router.max_body_bytes)
    content_type = request.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise RouterError(400, "Audio requests must be multipart/form-data", code="invalid_request")
    model = form_field(body, content_type, "model")
    if not model:
        raise RouterError(400, "You must provide a model parameter", param="model", code="missing_model")
    call = Call(request.path, body, content_type, headers={"x-request-id": request[CTX].request_id})
    info = RequestInfo(request[CTX].request_id, key, model, endpoint, 0, 0,
                       audio_seconds=_upload_seconds(body, content_type))
    return await dispatch(request, state, info, call)


def _upload_seconds(body: bytes, content_type: str) -> float:
    """Seconds of audio in the `file` part, for the audio reservation (the whole body without one)."""
    span = form_part(body, content_type, "file") or (0, len(body))
    return audio_seconds(body, *span)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or a 413 when it is larger than LIMIT bytes."""
    length = request.content_length
    if length is None or length <= limit:
        body = await request.read()
        if len(body) <= limit:
            return body
    raise RouterError(413, f"Request body too large: the limit is {limit} bytes", code="request_too_large")


async def dispatch(request: web.Request, state: RouterState, info: RequestInfo, call: Call) -> web.StreamResponse:
    """Model checks, admission, forwarding; `finish` runs exactly once for an admitted request."""
    ctx = request[CTX]
    ctx.model, ctx.endpoint = info.model, info.endpoint
    check_model(info.key, info.model)
    check_kind(state, info.model, info.endpoint)
    try:
        pool = ready_pool(state, info.model)
    except RouterError as err:  # maintenance, or a model started on demand
        pool = await when_not_ready(request.app, info.model, err, lambda: ready_pool(state, info.model))
    if (availability := request.app.get(AVAILABILITY)) is not None:
        call.hard_end, call.soft_end = availability.deadlines(info.model, info.max_tokens, time.time())
    try:
        admission = await state.accounting.admit(info, time.time())
    except QuotaExceeded as exc:
        ctx.refusal = exc
        headers = {**exc.headers, "Retry-After": str(exc.retry_after_s)}
        raise RouterError(429, str(exc), code="rate_limit_exceeded", headers=headers) from None
    call.headers.update(admission.headers)
    outcome = Outcome()
    assert state.upstream is not None, "the router is not started"
    try:
        return await state.upstream.forward(request, pool, call, outcome)
    except RouterError as err:
        outcome.status = err.status
        err.headers = {**call.headers, **err.headers}
        raise
    finally:
        ctx.outcome, ctx.usage, ctx.backend = outcome.status, outcome.usage, outcome.backend
        if outcome.first_at is not None:
            ctx.ttft_s = outcome.first_at - ctx.started
        state.accounting.finish(admission, outcome.status, outcome.usage, outcome.backend, time.time())


def ready_pool(state: RouterState, model: str) -> Pool:
    """The pool serving public name MODEL with a replica ready; else 404 (unknown) or 503 (not ready)."""
    names, pools = state.names, state.view.snapshot.pools
    route = names.routes.get(model)
    if route is None and names.hidden(model):
        known = ", ".join(names.entries[model].public_names)
        raise RouterError(404, f"The model {model!r} does not exist; its public names are: {known}",
                          param="model", code="model_not_found")
    pool_name = route.pool if route is not None else model
    pool = pools.get(pool_name)
    targets = state.view.snapshot.targets
    if pool is not None:
        for backend in pool.backends:
            if backend.routable:
                return pool
    elif route is None and not targets.get(pool_name):  # a model the supervisor keeps is not unknown
        raise RouterError(404, f"The model {model!r} does not exist", param="model", code="model_not_found")
    status = model_status(pool.backends if pool is not None else ())
    # A replacement is coming only while the supervisor has not given up on the model.
    wanted = 0 if pool_name in state.view.snapshot.stopped else targets.get(pool_name, 0)
    raise unavailable(model, status, time.time(), state.settings.router.retry_after_s, wanted)


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: the models this key may use, in OpenAI's list shape, with their status."""
    key = authorized(request)
    state = request.app[STATE]
    data = list_entries(state.names, state.view.snapshot, key)
    if (window := announcement(request.app, utcnow())) is not None:
        for entry in data:
            entry["maintenance"] = window
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: the entry of the list; the same 404 for an unknown and a forbidden name."""
    key = authorized(request)
    state = request.app[STATE]
    name = request.match_info["model"]
    found = next((e for e in list_entries(state.names, state.view.snapshot, key) if e["id"] == name), None)
    if found is None:  # the list holds only what the key may use: no hint that a forbidden name exists
        raise RouterError(404, f"The model {name!r} does not exist", param="model", code="model_not_found")
    if (window := announcement(request.app, utcnow())) is not None:
        found["maintenance"] = window
    return web.Response(body=orjson.dumps(found), content_type="application/json")


async def stored_response(request: web.Request) -> web.Response:
    """GET/DELETE /v1/responses/{id} and its cancel and input_items: nothing is stored to find.

    vLLM keeps stored responses in one server's memory, unbounded and gone at its time limit, so
    the service does not offer `store`; a clear refusal beats a 404 that reads like a typo.
    """
    authorized(request)
    raise RouterError(404, f"No stored response {request.match_info['response_id']!r}: this service does not "
                      "store responses; send the conversation with each request (see the user guide, "
                      "Responses API)", param="response_id", code="responses_not_stored")


async def health(request: web.Request) -> web.Response:
    """GET /health (no key): the router is up; how many models could be served right now.

    A router told to stop answers 503 "stopping" while it still serves, so a load balancer's
    health check takes it out of rotation before it stops accepting connections.
    """
    state = request.app[STATE]
    ready = sum(1 for pool in state.view.snapshot.pools.values() if any(b.routable for b in pool.backends))
    status = "stopping" if state.stopping else "ok"
    return web.Response(body=orjson.dumps({"status": status, "models_ready": ready}), content_type="application/json",
                        status=503 if state.stopping else 200)


def add_routes(app: web.Application) -> None:
    """Mount the OpenAI-compatible endpoints and /health."""
    for path, endpoint in JSON_ENDPOINTS.items():
        app.router.add_post(path, json_handler(endpoint))
    for path, endpoint in AUDIO_ENDPOINTS.items():
        app.router.add_post(path, audio_handler(endpoint))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)  # names may hold "/" (org/model)
    app.router.add_get("/health", health)
    for method, path in STORED_RESPONSE_PATHS:
        app.router.add_route(method, path, stored_response)
