"""Prometheus metrics of the inference service, on an HTTP endpoint of their own.

Off by default: ``serve --metrics-address HOST:PORT`` (env ``INFERENCE_METRICS_ADDRESS``)
imports this module and starts the endpoint (prometheus_client's HTTP server, a daemon
thread) before the models load, so a scrape shows the load state from the start. Without
the flag nothing here is imported, and the service does not need prometheus_client.

What a scrape reads, and where it comes from:

* The engine's own numbers, read at scrape time by :class:`EngineCollector` from
  ``engine.status()`` (nothing is added to the generation hot path): generations by outcome
  (``inference_generations_total{outcome="finished|cancelled|failed"}``, and
  ``inference_generations_started_total``), prompt tokens evaluated, tokens generated, and per
  model the slots, busy slots, waiting requests and the queue's cap. While the models load the
  engine has no status yet and these are absent.
* The server's load state, ``inference_model_load_state``: 0 loading, 1 serving, 2 draining
  (set by ``server.serve()``).
* What only the gRPC servicer sees, per Generate call, through the observer interface
  (``call_log.GenerateObserver``) this class implements: time to first token and inter-token
  latency histograms, and calls by final gRPC status (``inference_generate_calls_total{code}``).
* The process (``process_*``: resident memory, CPU seconds, open files) on Linux.

Bind it to loopback (``127.0.0.1:9090``) on a host; ``0.0.0.0:9090`` only inside a
container or pod, where the network namespace is the pod's own. The endpoint has no
authentication: it reveals load and model names, never request content.
"""

from __future__ import annotations

import logging
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inference_service.engine.types import EngineStatus, InferenceEngine

log = logging.getLogger(__name__)

LOADING, SERVING, DRAINING = 0, 1, 2

# Seconds. Time to first token includes queueing and prompt evaluation (a long prompt on 2
# cores takes seconds); inter-token latency is a few milliseconds per token on a small model.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9090`` for IPv6) as (host, port); ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"a metrics address is HOST:PORT (e.g. 127.0.0.1:9090), not {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class EngineCollector(Collector):
    """The engine's totals and load, read from ``engine.status()`` at each scrape."""

    def __init__(self, engine: InferenceEngine):
        self._engine = engine

    def describe(self) -> list[Metric]:  # names only: registering must not call the engine
        return [
            CounterMetricFamily("inference_generations", "Generations that ended, by outcome.", labels=["outcome"]),
            CounterMetricFamily("inference_generations_started", "Generations started."),
            CounterMetricFamily("inference_prompt_tokens_evaluated", "Prompt tokens evaluated (reused prefixes not counted)."),
            CounterMetricFamily("inference_tokens_generated", "Tokens generated."),
            CounterMetricFamily("inference_draft_tokens", "Speculative draft tokens, by outcome.", labels=["outcome"]),
            GaugeMetricFamily("inference_slots", "Sequences a model serves at once.", labels=["model"]),
            GaugeMetricFamily("inference_slots_busy", "Slots generating now.", labels=["model"]),
            GaugeMetricFamily("inference_queue_waiting", "Requests waiting for a slot.", labels=["model"]),
            GaugeMetricFamily("inference_queue_max_waiting", "Most requests that may wait before RESOURCE_EXHAUSTED.",
                              labels=["model"]),
        ]

    def collect(self) -> Iterator[Metric]:
        try:
            status: EngineStatus = self._engine.status()
        except Exception as error:  # noqa: BLE001 - loading (UNAVAILABLE), or closed: no engine numbers
            log.debug("no engine status for the scrape: %s", error)
            return
        outcomes = CounterMetricFamily("inference_generations", "Generations that ended, by outcome.",
                                       labels=["outcome"])
        outcomes.add_metric(["finished"], status.generations_finished)
        outcomes.add_metric(["cancelled"], status.generations_cancelled)
        outcomes.add_metric(["failed"], status.generations_failed)
        yield outcomes
        yield CounterMetricFamily("inference_generations_started", "Generations started.",
                                  value=status.generations_started)
        yield CounterMetricFamily("inference_prompt_tokens_evaluated",
                                  "Prompt tokens evaluated (reused prefixes not counted).",
                                  value=status.prompt_tokens_evaluated)
        yield CounterMetricFamily("inference_tokens_generated", "Tokens generated.", value=status.tokens_generated)
        drafts = CounterMetricFamily("inference_draft_tokens", "Speculative draft tokens, by outcome.",
                                     labels=["outcome"])
        drafts.add_metric(["accepted"], status.draft_tokens_accepted)
        drafts.add_metric(["rejected"], status.draft_tokens_proposed - status.draft_tokens_accepted)
        yield drafts
        per_model = {
            "inference_slots": ("Sequences a model serves at once.", lambda m: m.slots),
            "inference_slots_busy": ("Slots generating now.", lambda m: m.busy_slots),
            "inference_queue_waiting": ("Requests waiting for a slot.", lambda m: m.waiting),
            "inference_queue_max_waiting": ("Most requests that may wait before RESOURCE_EXHAUSTED.",
                                            lambda m: m.max_waiting),
        }
        for name, (documentation, value) in per_model.items():
            family = GaugeMetricFamily(name, documentation, labels=["model"])
            for model in status.models:
                family.add_metric([model.name], value(model))
            yield family


class ServiceMetrics:
    """The service's metrics in one registry; also the servicer's Generate observer.

    ``engine`` is read at scrape time (the ``LoadingEngine`` stand-in while loading is fine).
    """

    def __init__(self, engine: InferenceEngine, registry: CollectorRegistry | None = None,
                 process: bool = True):
        self.registry = registry or CollectorRegistry()
        self.registry.register(EngineCollector(engine))
        if process:
            ProcessCollector(registry=self.registry)  # process_* (Linux /proc), nothing elsewhere
        self._state = Gauge("inference_model_load_state",
                            "0 while the models load and warm up, 1 serving, 2 draining after SIGTERM.",
                            registry=self.registry)
        self._ttft = Histogram("inference_time_to_first_token_seconds",
                               "Seconds from a Generate call's start to its first chunk with tokens "
                               "(queueing and prompt evaluation included).",
                               registry=self.registry, buckets=TTFT_BUCKETS)
        self._itl = Histogram("inference_inter_token_latency_seconds",
                              "Seconds between tokens of a stream after the first (a chunk's gap divided "
                              "among its tokens).", registry=self.registry, buckets=ITL_BUCKETS)
        self._calls = Counter("inference_generate_calls", "Generate calls that ended, by gRPC status code.",
                              ["code"], registry=self.registry)
        self.set_state(LOADING)

    # --- load state (server.serve) -------------------------------------------------------

    def set_state(self, state: int) -> None:
        self._state.set(state)

    # --- the Generate observer (call_log.GenerateObserver) -------------------------------

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def tokens(self, count: int, seconds: float) -> None:
        gap = seconds / count
        for _ in range(count):
            self._itl.observe(gap)

    def finished(self, code: str) -> None:
        self._calls.labels(code).inc()


class MetricsEndpoint:
    """prometheus_client's HTTP server on a daemon thread; ``port`` is the bound one."""

    def __init__(self, metrics: ServiceMetrics, address: str):
        host, port = parse_address(address)
        self.metrics = metrics
        self._httpd, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port: int = self._httpd.server_port
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def start(engine: InferenceEngine, address: str) -> MetricsEndpoint:
    """The service's metrics over ``engine``, served on ``address`` (HOST:PORT) from now on."""
    endpoint = MetricsEndpoint(ServiceMetrics(engine), address)
    log.info("metrics on %s", endpoint.url)
    return endpoint
