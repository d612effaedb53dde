"""GET /metrics: Prometheus text for the admin (Bearer router.admin_token), one registry per app.

No admin token configured: /metrics answers 403 saying to set one (it is never open).

Label values are names the router knows (catalog and registry model names, endpoint names,
statuses, deployment ids); a model name no one registered is counted as `unknown`, and no key
or request text ever becomes a label. Label children are bound once per value and cached, so
a request costs a few dict lookups and increments. Backend gauges are read at scrape time.
"""

from __future__ import annotations

from time import perf_counter
from typing import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.api.admin import require_admin
from router.api.ledger_metrics import LedgerCollector
from router.api.limiter_metrics import LimiterCollector
from router.api.paths import AUDIO_ENDPOINTS, JSON_ENDPOINTS
from router.request_log import RequestContext
from router.state import STATE, RouterState

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
ENDPOINTS = {**JSON_ENDPOINTS, **AUDIO_ENDPOINTS, "/v1/models": "models", "/v1/me": "me",
             "/health": "health", "/metrics": "metrics"}
UNKNOWN, NONE = "unknown", "none"
MODEL_PATH = "/v1/models/"  # GET /v1/models/{model}: one label, whatever the name


class _PerModel:
    """The label children of one model, bound once."""

    __slots__ = ("latency", "ttft", "prompt", "completion", "reasoning", "audio")

    def __init__(self, m: Metrics, model: str) -> None:
        self.latency = m.latency.labels(model)
        self.ttft = m.ttft.labels(model)
        self.prompt = m.tokens.labels(model, "prompt")
        self.completion = m.tokens.labels(model, "completion")
        self.reasoning = m.tokens.labels(model, "reasoning")
        self.audio = m.audio.labels(model)


class Metrics:
    """The app's metrics and the observer the middleware calls after every request."""

    def __init__(self, state: RouterState) -> None:
        self.state = state
        self.registry = r = CollectorRegistry(auto_describe=False)
        self.requests = Counter("llm_router_requests", "Requests by model, endpoint and status",
                                ["model", "endpoint", "status"], registry=r)
        self.errors = Counter("llm_router_errors", "Responses with an error status", ["status"], registry=r)
        self.latency = Histogram("llm_router_request_duration_seconds", "Time to the last byte of proxied requests",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llm_router_time_to_first_token_seconds", "Time to the first streamed chunk",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.tokens = Counter("llm_router_tokens", "Tokens the backends reported, by type (prompt, completion, "
                              "reasoning)", ["model", "type"], registry=r)
        self.audio = Counter("llm_router_audio_seconds", "Seconds of audio transcribed", ["model"], registry=r)
        self.rejections = Counter("llm_router_quota_rejections", "Requests refused by a quota, by limit",
                                  ["limit"], registry=r)
        r.register(BackendCollector(state))
        r.register(LedgerCollector(state))
        r.register(LimiterCollector(state))
        self._models: dict[str, _PerModel] = {}
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._errors: dict[int, Counter] = {}

    def observe(self, method: str, path: str, status: int, ctx: RequestContext) -> None:
        """Count one finished request (called by the middleware; must stay cheap)."""
        status = ctx.outcome or status
        model = self._label(ctx.model)
        endpoint = ENDPOINTS.get(path) or ("model" if path.startswith(MODEL_PATH) else "other")
        key = (model, endpoint, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(*key)
        counter.inc()
        if status >= 400:
            self._error(status)
        if ctx.refusal is not None:
            self.rejections.labels(ctx.refusal.limit).inc()
        if ctx.endpoint is not None:
            self._observe_model(self._per_model(model), ctx)

    def _observe_model(self, per: _PerModel, ctx: RequestContext) -> None:
        per.latency.observe(perf_counter() - ctx.started)
        if ctx.ttft_s is not None:
            per.ttft.observe(ctx.ttft_s)
        usage = ctx.usage
        if usage is not None:
            if usage.prompt_tokens:
                per.prompt.inc(usage.prompt_tokens)
            if usage.completion_tokens:
                per.completion.inc(usage.completion_tokens)
            if usage.reasoning_tokens:
                per.reasoning.inc(usage.reasoning_tokens)
            if usage.audio_seconds:
                per.audio.inc(usage.audio_seconds)

    def _error(self, status: int) -> None:
        counter = self._errors.get(status)
        if counter is None:
            counter = self._errors[status] = self.errors.labels(str(status))
        counter.inc()

    def _label(self, model: str | None) -> str:
        """MODEL when the catalog or the registry knows it, else `unknown` (`none` when not given)."""
        if model is None:
            return NONE
        if model in self._models or self.state.names.known(model) or model in self.state.view.snapshot.pools:
            return model
        return UNKNOWN

    def _per_model(self, model: str) -> _PerModel:
        per = self._models.get(model)
        if per is None:
            per = self._models[model] = _PerModel(self, model)
        return per


class BackendCollector(Collector):
    """In-flight requests and health of every backend, read from the snapshot at scrape time."""

    def __init__(self, state: RouterState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        """Two gauges per backend, labelled with its deployment id, model and URL."""
        labels = ["backend", "model", "url"]
        in_flight = GaugeMetricFamily("llm_router_backend_in_flight", "Requests in flight per backend", labels=labels)
        up = GaugeMetricFamily("llm_router_backend_up", "1 when the backend can take requests, else 0", labels=labels)
        for backend in self.state.view.snapshot.backends.values():
            values = [str(backend.record.id), backend.model, backend.url]
            in_flight.add_metric(values, backend.outstanding)
            up.add_metric(values, 1 if backend.routable else 0)
        yield in_flight
        yield up


METRICS = web.AppKey("llm_launch_metrics", Metrics)


async def scrape(request: web.Request) -> web.Response:
    """GET /metrics for the admin: 403 while router.admin_token is not set, 401 without it."""
    require_admin(request)
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    """Mount GET /metrics and start observing requests."""
    metrics = Metrics(app[STATE])
    app[METRICS] = metrics
    app[STATE].observers.append(metrics.observe)
    app.router.add_get("/metrics", scrape)
