"""Prometheus metrics, one registry per app (so several apps can live in one process, as in tests).

Requests are labelled by route template ("/v2/models/{name}/infer"), never by
the raw path, so a scan of random URLs cannot blow up the label cardinality.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("hv_requests", "HTTP requests by route and status", ["endpoint", "method", "status"],
                                registry=r)
        self.latency = Histogram("hv_request_duration_seconds", "HTTP request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("hv_requests_in_flight", "HTTP requests being handled", ["endpoint"], registry=r)
        self.batch_size = Histogram("hv_batch_size", "images per model call", ["model"], buckets=BATCH_BUCKETS,
                                    registry=r)
        self.model_seconds = Histogram("hv_model_seconds", "model call time per batch", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("hv_images", "images run through the model", ["model"], registry=r)
        self.queue_depth = Gauge("hv_queue_depth", "requests waiting for the model", ["model"], registry=r)
        self.internal_errors = Counter("hv_internal_errors", "requests that ended in an unexpected 500", registry=r)
        self.ready = Gauge("hv_ready", "1 once every model is warmed up and the server is not draining", registry=r)

    def observe_batch(self, model: str, images: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(images)
        self.model_seconds.labels(model).observe(seconds)
        self.images.labels(model).inc(images)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request, the ones refused before routing (401/413/429) included.

    ``hot_label`` names the endpoints served outside the router; labels are cached per (method, path).
    """

    CACHE_SIZE = 4096

    def __init__(self, app: ASGIApp, metrics: Metrics, routes, hot_label=None):
        self.app, self.metrics, self.routes, self.hot_label = app, metrics, routes, hot_label
        self._cache: dict[tuple[str, str], tuple[str, Gauge, Histogram]] = {}
        self._counters: dict[tuple[str, str, int], Counter] = {}  # endpoints x methods x statuses: bounded

    def _endpoint(self, scope: Scope) -> tuple[str, Gauge, Histogram]:
        """The request's endpoint label, with its in-flight gauge and latency histogram (labelled once)."""
        key = (scope["method"], scope["path"])
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            name = self._match(scope)
            hit = self._cache[key] = (name, self.metrics.in_flight.labels(name), self.metrics.latency.labels(name))
        return hit

    def _counter(self, endpoint: str, method: str, status: int) -> Counter:
        key = (endpoint, method, status)
        c = self._counters.get(key)
        if c is None:
            c = self._counters[key] = self.metrics.requests.labels(endpoint, method, str(status))
        return c

    def _match(self, scope: Scope) -> str:
        hot = self.hot_label(scope) if self.hot_label is not None else None
        if hot is not None:
            return hot
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "other")
            if match == Match.PARTIAL and partial is None:  # the path matched, the method did not (405)
                partial = getattr(route, "path", "other")
        return partial or "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint, gauge, latency = self._endpoint(scope)
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        gauge.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            gauge.dec()
            self._counter(endpoint, scope["method"], status).inc()
            latency.observe(time.perf_counter() - t0)
