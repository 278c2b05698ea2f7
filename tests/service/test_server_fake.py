"""The real gRPC server (ephemeral port) over a fake engine: cancellation, deadlines,
status codes, health, reflection and draining.

Waits use generous safety timeouts only; nothing is measured against the clock.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from inference_service import server as server_module
from inference_service.errors import Cancelled
from inference_service.server import STATUS_FOR_ERROR, create_server
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from tests.helpers import trailing
from tests.service.fake_engine import FakeEngine

SAFETY = 30  # seconds: bounds a hang, never a measured limit
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Harness:
    def __init__(self, serving: bool = True):
        self.engine = FakeEngine()
        self.running = create_server(self.engine, "127.0.0.1:0", serving=serving)
        self.address = f"127.0.0.1:{self.running.port}"
        self.channel = grpc.insecure_channel(self.address)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def generate(self, model: str = "slow", timeout: float | None = SAFETY, **fields):
        return self.stub.Generate(pb.GenerateRequest(model=model, prompt="hi", **fields), timeout=timeout)

    def next_call(self):
        assert self.engine.call_started.acquire(timeout=SAFETY), "the engine was never called"
        return self.engine.calls[-1]

    def health_status(self, service: str = "") -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=SAFETY).status

    def close(self) -> None:
        self.engine.release.set()
        self.channel.close()
        self.running.server.stop(None)


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.close()


def rpc_failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    return info.value


# --- streaming and cancellation ----------------------------------------------------------


def test_stream_arrives_message_by_message(harness):
    responses = list(harness.generate(max_tokens=3))
    assert [r.text for r in responses] == ["t0 ", "t1 ", "t2"]
    assert [list(r.token_ids) for r in responses] == [[1], [2], [3]]
    assert [r.finish_reason for r in responses] == [0, 0, pb.FINISH_REASON_STOP]
    assert all(r.model == "slow" for r in responses)
    assert not responses[0].HasField("usage")
    assert (responses[-1].usage.prompt_tokens, responses[-1].usage.completion_tokens, responses[-1].usage.cached_prompt_tokens) == (4, 3, 1)


def test_request_reaches_the_engine_converted(harness):
    list(harness.generate(max_tokens=1, temperature=0.0, stop=["x"], seed=7, request_id="abc"))
    request = harness.engine.calls[0].request
    assert (request.max_tokens, request.sampling.temperature, request.stop, request.sampling.seed, request.request_id) == (
        1, 0.0, ("x",), 7, "abc")


def test_client_cancel_sets_the_engines_event(harness):
    call = harness.generate()
    assert next(call).text == "t0 "
    engine_call = harness.next_call()
    assert not engine_call.cancelled.is_set()
    call.cancel()
    assert engine_call.cancelled.wait(SAFETY), "context.add_callback never fired"
    assert engine_call.stopped_by_cancel.wait(SAFETY), "the engine kept generating"
    assert not engine_call.finished.is_set()
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED


def test_closing_the_channel_cancels_the_generation(harness):
    channel = grpc.insecure_channel(harness.address)
    call = pb_grpc.InferenceServiceStub(channel).Generate(pb.GenerateRequest(model="slow", prompt="hi"), timeout=SAFETY)
    next(call)
    engine_call = harness.next_call()
    channel.close()
    assert engine_call.cancelled.wait(SAFETY)
    assert engine_call.stopped_by_cancel.wait(SAFETY)


def test_client_deadline_is_deadline_exceeded_and_stops_the_engine(harness):
    before = time.monotonic()
    call = harness.generate(timeout=1.0)  # the slow stream would run for minutes
    error = rpc_failure(call)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    engine_call = harness.engine.calls[0]
    assert engine_call.deadline is not None  # the servicer passes the client's deadline on
    assert before < engine_call.deadline < before + SAFETY
    assert engine_call.cancelled.wait(SAFETY)
    assert engine_call.stopped_by_cancel.wait(SAFETY)


def test_no_client_deadline_means_no_engine_deadline(harness):
    list(harness.generate(max_tokens=1, timeout=None))
    deadline = harness.engine.calls[0].deadline
    # grpcio reports "no deadline" as a huge time_remaining(), so the engine sees either
    # None or a deadline centuries away; both mean "wait as long as it takes".
    assert deadline is None or deadline - time.monotonic() > 100 * 365 * 86400


# --- domain errors to status codes ---------------------------------------------------------


def test_invalid_request_names_the_param(harness):
    error = rpc_failure(harness.generate("invalid"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "temperature must be in [0.0, 2.0], got 3.0"
    assert trailing(error)["error-param"] == "temperature"
    assert "retry-after" not in trailing(error)


def test_context_length_exceeded_is_out_of_range(harness):
    error = rpc_failure(harness.generate("context"))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "4096" in error.details() and "5000" in error.details()
    assert trailing(error)["error-param"] == "messages"


def test_model_not_found(harness):
    error = rpc_failure(harness.generate("missing"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "model 'missing' not found; served: fake"
    assert "error-param" not in trailing(error)


def test_queue_full_is_resource_exhausted_with_retry_after(harness):
    error = rpc_failure(harness.generate("full"))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit 2" in error.details()
    assert trailing(error)["retry-after"] == str(server_module.RETRY_AFTER_SECONDS)


def test_deadline_exceeded_in_the_engine(harness):
    error = rpc_failure(harness.generate("expired"))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_model_still_loading_is_unavailable(harness):
    error = rpc_failure(harness.generate("loading"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_unexpected_exception_is_internal_without_details(harness):
    error = rpc_failure(harness.generate("crash"))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    everything = error.details() + repr(error.trailing_metadata()) + repr(error.initial_metadata())
    assert "Traceback" not in everything and "secret" not in everything


@pytest.mark.parametrize(
    "error_type, code",
    [(t, c) for t, c in STATUS_FOR_ERROR if t is not Cancelled],
    ids=[t.__name__ for t, _ in STATUS_FOR_ERROR if t is not Cancelled],
)
def test_every_row_of_the_status_table(harness, error_type, code, monkeypatch):
    def raise_it(request, cancelled=None, deadline=None):
        raise error_type("a message")

    monkeypatch.setattr(harness.engine, "generate", raise_it)
    error = rpc_failure(harness.generate())
    assert error.code() == code
    assert error.details() == "a message"


def test_error_after_the_first_message(harness):
    call = harness.generate("midway")
    assert next(call).text == "partial"
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailing(info.value)["error-param"] == "stop"


def test_crash_after_the_first_message_is_internal(harness):
    call = harness.generate("midway-crash")
    assert next(call).text == "partial"
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INTERNAL, "internal error")


def test_list_models_and_tokenize(harness):
    models = harness.stub.ListModels(pb.ListModelsRequest(), timeout=SAFETY).models
    assert [(m.name, m.context_length, m.has_chat_template, m.owned_by) for m in models] == [("fake", 4096, True, "tests")]
    response = harness.stub.Tokenize(pb.TokenizeRequest(model="fake", text="ab"), timeout=SAFETY)
    assert (list(response.token_ids), list(response.tokens)) == ([97, 98], ["a", "b"])
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.Tokenize(pb.TokenizeRequest(model="nope", text="ab"), timeout=SAFETY)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# --- health, reflection, draining ----------------------------------------------------------


def test_health_follows_serving_state():
    h = Harness(serving=False)
    try:
        assert h.health_status() == NOT_SERVING
        assert h.health_status("inference_service.v1.InferenceService") == NOT_SERVING
        h.running.set_serving(True)
        assert h.health_status() == SERVING
        assert h.health_status("inference_service.v1.InferenceService") == SERVING
        h.running.set_serving(False)
        assert h.health_status() == NOT_SERVING
    finally:
        h.close()


def test_reflection_lists_the_services(harness):
    database = ProtoReflectionDescriptorDatabase(harness.channel)
    services = set(database.get_services())
    assert "inference_service.v1.InferenceService" in services
    assert "grpc.health.v1.Health" in services
    pool = DescriptorPool(database)
    service = pool.FindServiceByName("inference_service.v1.InferenceService")
    assert {m.name for m in service.methods} == {"Generate", "ListModels", "Tokenize", "GetStatus", "Embed"}
    generate = service.methods_by_name["Generate"]
    assert generate.server_streaming and not generate.client_streaming
    assert generate.input_type.full_name == "inference_service.v1.GenerateRequest"


def test_drain_refuses_new_generations_while_the_in_flight_stream_completes(harness):
    watch = harness.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=SAFETY)
    assert next(watch).status == SERVING

    in_flight = harness.generate("gated")
    assert next(in_flight).text == "first "
    drainer = threading.Thread(target=harness.running.drain_and_stop, args=(SAFETY,), daemon=True)
    drainer.start()

    assert next(watch).status == NOT_SERVING
    watch.cancel()  # an open watch would hold the graceful stop for the whole grace
    assert harness.running.draining.is_set()

    refused = rpc_failure(harness.generate(max_tokens=1))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.details() == "the service is shutting down"
    assert harness.health_status() == NOT_SERVING  # still answering while the stream finishes
    assert drainer.is_alive()

    harness.engine.release.set()
    rest = list(in_flight)
    assert [r.text for r in rest] == ["last"]
    assert rest[-1].finish_reason == pb.FINISH_REASON_STOP
    drainer.join(SAFETY)
    assert not drainer.is_alive(), "the server did not stop after the stream completed"


def test_draining_flag_alone_refuses_generate(harness):
    harness.running.draining.set()
    refused = rpc_failure(harness.generate(max_tokens=1))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.details() == "the service is shutting down"
    assert harness.engine.calls == []
    # other RPCs still answer while draining
    assert harness.stub.ListModels(pb.ListModelsRequest(), timeout=SAFETY).models[0].name == "fake"


def test_get_status_reports_the_engines_load_and_totals(harness):
    call = harness.stub.Generate(pb.GenerateRequest(model="gated", prompt="x"), timeout=SAFETY)
    next(call)
    status = harness.stub.GetStatus(pb.GetStatusRequest(), timeout=SAFETY)
    assert (status.in_flight, status.generations_started) == (1, 1)
    assert [(m.name, m.busy_slots) for m in status.models] == [("fake", 1)]
    call.cancel()
    harness.engine.calls[0].stopped_by_cancel.wait(SAFETY)
    status = harness.stub.GetStatus(pb.GetStatusRequest(), timeout=SAFETY)
    assert (status.generations_cancelled, status.models[0].busy_slots) == (1, 0)


def test_calls_beyond_the_servers_concurrency_are_refused_at_once_not_queued():
    engine = FakeEngine()
    running = create_server(engine, "127.0.0.1:0", max_workers=3)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = pb_grpc.InferenceServiceStub(channel)
    try:
        held = [stub.Generate(pb.GenerateRequest(model="gated", prompt="x"), timeout=SAFETY) for _ in range(3)]
        for call in held:
            next(call)  # every handler thread is now busy streaming
        extra = stub.Generate(pb.GenerateRequest(model="gated", prompt="x"), timeout=SAFETY)
        with pytest.raises(grpc.RpcError) as info:
            next(extra)  # without the cap this waits for a thread until SAFETY runs out
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(engine.calls) == 3
    finally:
        engine.release.set()
        channel.close()
        running.server.stop(None)


def test_server_concurrency_covers_every_slot_and_queue_place_plus_headroom():
    assert server_module.server_concurrency(1, slots=2, max_waiting=200) == 202 + server_module.CONTROL_RPC_HEADROOM
    assert server_module.server_concurrency(2, slots=1, max_waiting=3) == 8 + server_module.CONTROL_RPC_HEADROOM


# --- long and unbounded strings (issue 7) ----------------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from inference_service.engine.engine import Engine  # noqa: E402
from inference_service.errors import InvalidRequest  # noqa: E402

LONG = 9000
SHORT_DETAILS = 300  # every status message below fits; nothing is echoed unbounded


@pytest.fixture
def real_engine_stub_model():
    """The real Engine (lookup, validation) over a stand-in model: requests here fail before tokens."""
    engine = Engine([SimpleNamespace(name="fake", vocab_size=1000)])
    running = create_server(engine, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield pb_grpc.InferenceServiceStub(channel)
    channel.close()
    running.server.stop(None)


@pytest.mark.parametrize("request_, param", [
    (pb.GenerateRequest(model="m" * LONG, prompt="hi"), "model"),
    (pb.GenerateRequest(model="fake", messages=[pb.ChatMessage(role="r" * LONG, content="hi")]), "messages[0].role"),
    (pb.GenerateRequest(model="fake", prompt="hi", stop=["s" * LONG]), "stop"),
], ids=["model", "role", "stop"])
def test_long_strings_are_invalid_argument_with_short_details(real_engine_stub_model, request_, param):
    error = rpc_failure(real_engine_stub_model.Generate(request_, timeout=SAFETY))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert trailing(error)["error-param"] == param
    assert len(error.details()) <= SHORT_DETAILS, error.details()


def test_long_model_on_tokenize_is_invalid_argument(real_engine_stub_model):
    with pytest.raises(grpc.RpcError) as info:
        real_engine_stub_model.Tokenize(pb.TokenizeRequest(model="m" * LONG, text="hi"), timeout=SAFETY)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailing(info.value)["error-param"] == "model"
    assert len(info.value.details()) <= SHORT_DETAILS


def test_unknown_model_is_quoted_by_a_prefix(real_engine_stub_model):
    error = rpc_failure(real_engine_stub_model.Generate(pb.GenerateRequest(model="n" * 256, prompt="hi"), timeout=SAFETY))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "n" * 65 not in error.details() and error.details().endswith("… not found; served: fake")


def test_an_unbounded_message_is_clipped_not_resource_exhausted(harness, monkeypatch):
    """A message or param beyond gRPC's metadata limit used to reach the client as RESOURCE_EXHAUSTED."""
    def raise_it(request, cancelled=None, deadline=None):
        raise InvalidRequest("x" * 100_000 + "\ud800", param="p" * 10_000)

    monkeypatch.setattr(harness.engine, "generate", raise_it)
    error = rpc_failure(harness.generate())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(error.details().encode()) <= 1024 and error.details().endswith("…")
    assert trailing(error)["error-param"] == "p" * 128


def test_a_request_that_does_not_parse_is_invalid_argument_not_internal(harness):
    good = pb.GenerateRequest(model="slow", prompt="hi", max_tokens=2).SerializeToString()
    bad_utf8 = good.replace(b"hi", b"\xff\xfe")
    generate = harness.channel.unary_stream("/inference_service.v1.InferenceService/Generate")
    assert len(list(generate(good, timeout=SAFETY))) == 2
    with pytest.raises(grpc.RpcError) as info:
        list(generate(bad_utf8, timeout=SAFETY))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in info.value.details()
    tokenize = harness.channel.unary_unary("/inference_service.v1.InferenceService/Tokenize")
    with pytest.raises(grpc.RpcError) as info:
        tokenize(pb.TokenizeRequest(model="fake", text="hi").SerializeToString().replace(b"hi", b"\xff\xfe"),
                 timeout=SAFETY)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [call.request.prompt for call in harness.engine.calls] == ["hi"]  # only the good one arrived


def test_loading_engine_is_unavailable_until_ready_then_serves():
    loading = server_module.LoadingEngine()
    running = create_server(loading, "127.0.0.1:0", serving=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = pb_grpc.InferenceServiceStub(channel)
    try:
        for call in (lambda: next(stub.Generate(pb.GenerateRequest(model="fake", prompt="x"), timeout=SAFETY)),
                     lambda: stub.ListModels(pb.ListModelsRequest(), timeout=SAFETY),
                     lambda: stub.Tokenize(pb.TokenizeRequest(model="fake", text="x"), timeout=SAFETY),
                     lambda: stub.GetStatus(pb.GetStatusRequest(), timeout=SAFETY)):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        loading.ready(FakeEngine())
        assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=SAFETY).models] == ["fake"]
        assert list(stub.Tokenize(pb.TokenizeRequest(model="fake", text="ab"), timeout=SAFETY).token_ids) == [97, 98]
        assert len(list(stub.Generate(pb.GenerateRequest(model="slow", prompt="x", max_tokens=2), timeout=SAFETY))) == 2
    finally:
        channel.close()
        running.server.stop(None)
