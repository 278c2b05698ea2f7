"""Prometheus metrics of the edge: what ``/metrics`` answers is the whole edge.

Two modes, chosen when the app is built (:class:`Metrics`), by prometheus_client's own switch,
the environment variable ``PROMETHEUS_MULTIPROC_DIR``:

* **In process** (the variable is unset: ``create_app()`` in a test, falcon.testing): an
  ordinary registry per app; ``/metrics`` shows that app's counts.
* **Multiprocess** (the variable names a directory; under gunicorn,
  :func:`rest_edge.gunicorn_conf.on_starting` sets it in the arbiter before any worker
  forks): every worker writes its values into memory-mapped files ``<kind>_<pid>.db`` in that
  directory, and ``/metrics``, whichever worker answers it, merges all the files
  (``MultiProcessCollector``). Counters and histograms are summed over every worker that ever
  ran since the edge started, dead ones included (their files stay), so a total never goes
  backwards when a worker dies or is replaced. Gauges say how their workers' values combine
  (``multiprocess_mode``): the in-flight gauge is ``livesum``, the sum over live workers;
  gunicorn's ``child_exit`` hook drops a dead worker's share (``mark_process_dead``).

prometheus_client's rules for multiprocess mode apply: every Gauge must declare its
``multiprocess_mode``; no custom collectors; no ``process_*``/``python_*`` metrics (there
were none here); one :class:`Metrics` per process (two apps in one process would write to the
same entries of the same file); the directory is wiped at startup (the gunicorn hook does it).
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator, Optional

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Bodies that the WSGI app drops without iterating or closing them (falcon.App.__call__).
_BODILESS_STATUSES = frozenset({100, 101, 204, 304})


def multiprocess_dir() -> Optional[str]:
    """The multiprocess directory if multiprocess mode is on in this process, else None."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def _use_multiprocess_values() -> None:
    """Make new metric values live in this process's files of the multiprocess directory.

    prometheus_client decides where values live when it is first imported. If that was before
    ``PROMETHEUS_MULTIPROC_DIR`` was set (``python -m rest_edge`` imports this module in the
    arbiter, before the gunicorn hook sets the variable, and the workers inherit that import),
    its values would be plain per-process floats that ``/metrics`` never sees. Switch to the
    file-backed values now, before this process creates any metric.
    """
    if values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()


class Metrics:
    """The edge's metrics. ``registry`` holds the metric objects; ``exposition`` is what
    ``/metrics`` renders: the same registry in process, every worker's files in multiprocess
    mode."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.multiprocess_dir = multiprocess_dir()
        if self.multiprocess_dir is not None:
            _use_multiprocess_values()
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
        self.in_flight = Gauge(
            "edge_http_requests_in_flight",
            "Requests being handled, by route; a stream counts until its last frame is sent or its client leaves.",
            ["route"], registry=self.registry, multiprocess_mode="livesum",
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
        # Routing across the replicas (rest_edge.client); ``replica`` is its address.
        self.replica_requests = Counter(
            "edge_replica_requests_total",
            "Generate and Embed calls sent to each replica (a retry counts again, on its new replica).",
            ["replica"], registry=self.registry,
        )
        self.replica_in_flight = Gauge(
            "edge_replica_in_flight",
            "Calls in flight to each replica, by the edge's own count (the sum over live workers).",
            ["replica"], registry=self.registry, multiprocess_mode="livesum",
        )
        self.retries = Counter(
            "edge_retries_total",
            "Calls retried on another replica before their first response, by the replica left and why: "
            "unavailable (gone, refused, draining, unanswered keepalive), stalled (no first answer in "
            "EDGE_FIRST_TOKEN_TIMEOUT) or full (RESOURCE_EXHAUSTED).",
            ["replica", "reason"], registry=self.registry,
        )
        self.replica_serving = Gauge(
            "edge_replica_serving",
            "1 while a live worker's health watch of the replica says SERVING, else 0.",
            ["replica"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.unrouted = Counter(
            "edge_unrouted_requests_total",
            "Calls the edge answered itself: no_replica serving (503) or all_full replicas (429).",
            ["reason"], registry=self.registry,
        )
        if self.multiprocess_dir is None:
            self.exposition = self.registry
        else:
            # Only the files: the metric objects above write into them, and rendering
            # ``registry`` as well would show this worker's share twice.
            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition, path=self.multiprocess_dir)

    def render(self) -> bytes:
        return generate_latest(self.exposition)


class _InFlightBody:
    """The response iterable of a stream, unchanged, that leaves the in-flight gauge when the
    server closes it (after the last frame, or when the client left)."""

    def __init__(self, body: Any, gauge: Any):
        self._body = body
        self._iter: Optional[Iterator[bytes]] = None
        self._gauge = gauge

    def __iter__(self) -> "_InFlightBody":
        return self

    def __next__(self) -> bytes:
        if self._iter is None:
            self._iter = iter(self._body)
        return next(self._iter)

    def close(self) -> None:
        gauge, self._gauge = self._gauge, None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            if gauge is not None:
                gauge.dec()


class MetricsMiddleware:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        # Called once a route matched (an unmatched request is answered at once, not counted).
        gauge = self._metrics.in_flight.labels(req.uri_template or "unmatched")
        gauge.inc()
        req.context.in_flight = gauge

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        route = req.uri_template or "unmatched"
        self._metrics.requests.labels(route, req.method, str(resp.status_code)).inc()
        started = getattr(req.context, "started", None)
        if started is not None:
            self._metrics.latency.labels(route, req.method).observe(time.perf_counter() - started)
        gauge = getattr(req.context, "in_flight", None)
        if gauge is None:
            return
        if (resp.stream is not None and resp.data is None and resp.text is None and resp.media is None
                and req.method != "HEAD" and resp.status_code not in _BODILESS_STATUSES):
            resp.stream = _InFlightBody(resp.stream, gauge)
        else:
            gauge.dec()


class MetricsResource:
    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self._metrics.render()
