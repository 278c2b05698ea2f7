"""Prometheus metrics of the edge (one registry per app; each gunicorn worker has its own)."""

from __future__ import annotations

import time

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "edge_http_requests_total", "HTTP requests by route, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "edge_http_response_start_seconds",
            "Seconds from request to response headers (time to first token for streams).",
            ["route", "method"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.stream_errors = Counter(
            "edge_stream_errors_total", "Streams that ended with an error frame, by HTTP-equivalent status.",
            ["route", "status"], registry=self.registry,
        )
        self.client_departures = Counter(
            "edge_client_departures_total",
            "Generations cancelled because their client went away before the response was complete.",
            ["route"], registry=self.registry,
        )


class MetricsMiddleware:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        route = req.uri_template or "unmatched"
        self._metrics.requests.labels(route, req.method, str(resp.status_code)).inc()
        started = getattr(req.context, "started", None)
        if started is not None:
            self._metrics.latency.labels(route, req.method).observe(time.perf_counter() - started)


class MetricsResource:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self._metrics.registry)
