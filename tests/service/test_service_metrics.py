"""The service's Prometheus endpoint (inference_service.metrics): scraped over HTTP.

With the fake engine: the real gRPC server with the metrics as its Generate observer, a few
calls (a stream to its end, INVALID_ARGUMENT, a cancelled stream, a passed deadline), then
the counters, histograms and gauges as a scrape shows them. With the real model (marked
``model``): ``python -m inference_service serve --metrics-address ...`` scraped while it
loads and after one Generate.

Waits use generous safety timeouts only; no latency is asserted against the clock.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import processes
from inference_service import metrics as service_metrics
from inference_service.server import GenerateObserver, create_server
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from tests.helpers import eventually
from tests.service.fake_engine import FakeEngine

SAFETY = 30  # seconds: bounds a hang, never a measured limit

Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=SAFETY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scraped(url: str, check, what: str, timeout: float = SAFETY) -> Samples:
    """Scrapes until ``check(samples)`` holds (a call's end is counted once gRPC has
    terminated it, which may be just after the client read its status)."""
    return eventually(lambda: scrape(url), what, until=check, timeout=timeout)


class MetricsHarness:
    def __init__(self):
        self.engine = FakeEngine()
        self.metrics = service_metrics.ServiceMetrics(self.engine)
        self.endpoint = service_metrics.MetricsEndpoint(self.metrics, "127.0.0.1:0")
        self.url = self.endpoint.url
        self.running = create_server(self.engine, "127.0.0.1:0", observer=self.metrics)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.running.port}")
        self.stub = pb_grpc.InferenceServiceStub(self.channel)

    def generate(self, model: str, timeout: float = SAFETY, **fields):
        return self.stub.Generate(pb.GenerateRequest(model=model, prompt="hi", **fields), timeout=timeout)

    def close(self) -> None:
        self.engine.release.set()
        self.channel.close()
        self.running.server.stop(None)
        self.endpoint.close()


@pytest.fixture
def harness():
    h = MetricsHarness()
    yield h
    h.close()


def test_a_fresh_service_shows_loading_zero_counts_and_its_engine(harness):
    samples = scrape(harness.url)
    assert value(samples, "inference_model_load_state") == 0
    harness.metrics.set_state(service_metrics.SERVING)
    samples = scrape(harness.url)
    assert value(samples, "inference_model_load_state") == 1
    assert value(samples, "inference_slots", model="fake") == 64
    assert value(samples, "inference_slots_busy", model="fake") == 0
    assert value(samples, "inference_queue_waiting", model="fake") == 0
    assert value(samples, "inference_generations_total", outcome="finished") == 0
    assert value(samples, "inference_time_to_first_token_seconds_count") == 0
    assert value(samples, "inference_inter_token_latency_seconds_count") == 0
    assert any(name == "process_resident_memory_bytes" for name, _ in samples)  # Linux
    harness.metrics.set_state(service_metrics.DRAINING)
    assert value(scrape(harness.url), "inference_model_load_state") == 2


def test_generate_calls_fill_the_histograms_counters_and_gauges(harness):
    # A stream to its end: three chunks of one token each.
    replies = list(harness.generate("slow", max_tokens=3))
    assert sum(len(r.token_ids) for r in replies) == 3

    # Refused before any token: INVALID_ARGUMENT, no timing.
    with pytest.raises(grpc.RpcError) as refused:
        list(harness.generate("invalid"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A stream holding its slot, seen busy at scrape time, then cancelled by its client.
    gated = harness.generate("gated")
    assert next(gated).text == "first "
    samples = scrape(harness.url)
    assert value(samples, "inference_slots_busy", model="fake") == 1
    gated.cancel()

    # A stream whose deadline passes midway (the fake never finishes 10,000 tokens in time).
    with pytest.raises(grpc.RpcError) as expired:
        list(harness.generate("slow", timeout=0.5))
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    samples = scraped(
        harness.url,
        lambda s: (value(s, "inference_generate_calls_total", code="CANCELLED") == 1
                   and value(s, "inference_generate_calls_total", code="DEADLINE_EXCEEDED") == 1
                   and value(s, "inference_generations_total", outcome="cancelled") == 2),
        "the cancelled and expired calls counted by the servicer and the engine",
    )
    assert value(samples, "inference_generate_calls_total", code="OK") == 1
    assert value(samples, "inference_generate_calls_total", code="INVALID_ARGUMENT") == 1
    # The engine's outcomes (read from its status): the invalid call never reached a
    # generation; the cancelled and expired ones stopped before their next chunk.
    assert value(samples, "inference_generations_started_total") == 3
    assert value(samples, "inference_generations_total", outcome="finished") == 1
    assert value(samples, "inference_slots_busy", model="fake") == 0
    # Time to first token: one per call that produced a token (the completed, gated and
    # expired streams), none for the refused one.
    assert value(samples, "inference_time_to_first_token_seconds_count") == 3
    assert value(samples, "inference_time_to_first_token_seconds_bucket", le="+Inf") == 3
    # Inter-token latency: one observation per token after the first: 2 from the completed
    # stream, at least one more from the expired one (a chunk every 20 ms for 0.5 s).
    itl_count = value(samples, "inference_inter_token_latency_seconds_count")
    assert itl_count >= 3
    assert value(samples, "inference_inter_token_latency_seconds_sum") > 0


def test_a_draining_service_counts_its_refusals(harness):
    harness.running.draining.set()
    with pytest.raises(grpc.RpcError) as refused:
        list(harness.generate("slow", max_tokens=2))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    scraped(harness.url, lambda s: value(s, "inference_generate_calls_total", code="UNAVAILABLE") == 1,
            "the refusal counted")


def test_a_chunk_of_several_tokens_shares_its_gap():
    metrics = service_metrics.ServiceMetrics(FakeEngine(), process=False)
    metrics.tokens(4, 0.04)
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in metrics.registry.collect() for s in family.samples
    }
    assert value(samples, "inference_inter_token_latency_seconds_count") == 4
    assert value(samples, "inference_inter_token_latency_seconds_sum") == pytest.approx(0.04)
    assert value(samples, "inference_inter_token_latency_seconds_bucket", le="0.01") == 4
    assert value(samples, "inference_inter_token_latency_seconds_bucket", le="0.0075") == 0


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:9090", ("127.0.0.1", 9090)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9090", ("::1", 9090)),
    ("localhost:9090", ("localhost", 9090)),
])
def test_metrics_addresses(address, expected):
    assert service_metrics.parse_address(address) == expected


@pytest.mark.parametrize("address", ["9090", ":9090", "host:", "host:port", "host:70000"])
def test_bad_metrics_addresses(address):
    with pytest.raises(ValueError, match="HOST:PORT"):
        service_metrics.parse_address(address)


def test_without_metrics_nothing_imports_prometheus_client():
    """The service must not need prometheus_client unless asked: the server module, its
    default observer and the command line leave it unimported."""
    code = (
        "import sys\n"
        "from inference_service import server, __main__\n"
        "from tests.service.fake_engine import FakeEngine\n"
        "running = server.create_server(FakeEngine(), '127.0.0.1:0')\n"
        "running.server.stop(None)\n"
        "assert isinstance(running.servicer._observer, server.GenerateObserver)\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=processes.REPO, check=True, timeout=SAFETY)


def test_the_metrics_implement_every_hook_of_the_observer():
    """The servicer calls the hooks of ``GenerateObserver``; ``ServiceMetrics`` stands in for it
    without subclassing (the server module must not import prometheus_client), so a hook added
    to one and not the other, or with other parameters, would break only when called."""
    hooks = {name: inspect.signature(member) for name, member in vars(GenerateObserver).items()
             if inspect.isfunction(member) and not name.startswith("_")}
    assert hooks, "GenerateObserver has no hooks"
    for name, signature in hooks.items():
        implemented = getattr(service_metrics.ServiceMetrics, name, None)
        assert implemented is not None, f"ServiceMetrics lacks {name}"
        assert list(inspect.signature(implemented).parameters) == list(signature.parameters), name


# --- the real service ---------------------------------------------------------------------


def _serving(address: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=SAFETY)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.model
def test_real_service_metrics_while_loading_and_after_a_generate(model_file, tmp_path):
    """``serve --metrics-address``: the endpoint answers before the model is loaded (state 0,
    no engine numbers yet, health NOT_SERVING), then state 1, and one real Generate shows in
    the time-to-first-token histogram, the calls by status and the engine's token counters."""
    from tests.service.helpers import SAFETY as MODEL_SAFETY
    from tests.service.helpers import SYSTEM, request

    address = f"127.0.0.1:{processes.free_port()}"
    url = f"http://127.0.0.1:{processes.free_port()}/metrics"
    log_path = tmp_path / "service.log"
    argv = [sys.executable, "-m", "inference_service", "serve", "--address", address,
            "--metrics-address", url.removeprefix("http://").removesuffix("/metrics"), "--slots", "1"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=processes.REPO, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    with processes.Service(proc, log_path, address) as service:
        scrapes: list[Samples] = []

        def answers() -> bool:
            try:
                scrapes.append(scrape(url))
            except httpx.HTTPError:
                return False
            return True

        # Loading and warming up the model takes seconds; the endpoint starts before it.
        processes.wait_until(service, answers, "the metrics endpoint", 120)
        loading = scrapes[-1]
        assert not _serving(address), "the model loaded before the first scrape: nothing to check"
        assert value(loading, "inference_model_load_state") == 0
        assert not any(name.startswith("inference_generations") for name, _ in loading)  # no engine yet

        processes.wait_until(service, lambda: _serving(address), "inference service", MODEL_SAFETY)
        before = scrape(url)
        assert value(before, "inference_model_load_state") == 1
        assert value(before, "inference_slots", model="smollm2:135m") == 1
        assert value(before, "inference_time_to_first_token_seconds_count") == 0
        tokens_before = value(before, "inference_tokens_generated_total")
        prompt_before = value(before, "inference_prompt_tokens_evaluated_total")

        with service.channel() as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            replies = list(stub.Generate(request(SYSTEM, ("user", "Count to five."), max_tokens=8),
                                         timeout=MODEL_SAFETY))
        completion_tokens = replies[-1].usage.completion_tokens
        assert completion_tokens > 0

        after = scraped(url, lambda s: value(s, "inference_generate_calls_total", code="OK") == 1,
                        "the Generate call counted", MODEL_SAFETY)
        assert value(after, "inference_time_to_first_token_seconds_count") == 1
        assert value(after, "inference_time_to_first_token_seconds_sum") > 0
        assert value(after, "inference_tokens_generated_total") == tokens_before + completion_tokens
        assert value(after, "inference_prompt_tokens_evaluated_total") > prompt_before
        if completion_tokens > 1:
            assert value(after, "inference_inter_token_latency_seconds_count") >= 1
        assert value(after, "inference_slots_busy", model="smollm2:135m") == 0
        assert value(after, "process_resident_memory_bytes") > 0
