"""The real service with ``--log-format json``: every line it writes (stdout and stderr, from
start to stop) is one JSON object, and a Generate's end is logged with the caller's request id.
Also, in process over the fake engine: that line's outcome and fields for other ends of a call."""

from __future__ import annotations

import logging

import grpc
import pytest

from harness.processes import stop_process
from inference_service.server import create_server
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import start_service
from tests.helpers import eventually, json_lines
from tests.service.fake_engine import FakeEngine
from tests.service.helpers import MODEL, SAFETY, SYSTEM, request


def service_lines(log: str) -> list[dict]:
    return json_lines(log, "the service's output")


def generate_lines(log: str, request_id: str) -> list[dict]:
    return [line for line in service_lines(log) if line.get("request_id") == request_id and "outcome" in line]


@pytest.mark.model
def test_json_log_lines_and_the_request_id(tmp_path):
    service = start_service(tmp_path, "--log-format", "json", "--slots", "1", "--max-waiting", "1")
    try:
        with service.channel() as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            req = request(SYSTEM, ("user", "Say hi."), max_tokens=4, request_id="from-the-message")
            responses = list(stub.Generate(req, timeout=SAFETY, metadata=[("x-request-id", "req-json-log-1")]))
            usage = responses[-1].usage
            # Only the field: the id in the message is used when no metadata carries one.
            list(stub.Generate(request(SYSTEM, ("user", "Hi"), max_tokens=2, request_id="only-field"),
                               timeout=SAFETY))
        # the line is written when gRPC reports the call's end
        eventually(lambda: generate_lines(service.log(), "req-json-log-1") and generate_lines(service.log(), "only-field"),
                   "both Generate lines logged", timeout=SAFETY, interval=0.1)
    finally:
        stop_process(service.process)

    lines = service_lines(service.log())  # start to stop, every line
    assert {line["logger"] for line in lines} >= {"inference_service", "inference_service.server"}
    assert any(line["message"] == "stopped" for line in lines)
    for line in lines:
        assert set(line) >= {"time", "level", "logger", "message", "process"}
        assert line["process"] == service.pid

    (done,) = generate_lines(service.log(), "req-json-log-1")
    assert done["level"] == "INFO" and done["logger"] == "inference_service.server"
    assert done["model"] == MODEL and done["outcome"] == "OK"
    assert (done["prompt_tokens"], done["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert done["completion_tokens"] >= 1 and done["prompt_tokens"] > 1
    assert 0 < done["duration_s"] < SAFETY
    assert "req-json-log-1" in done["message"]
    assert not [line for line in lines if line.get("request_id") == "from-the-message"]
    (only_field,) = generate_lines(service.log(), "only-field")
    assert only_field["outcome"] == "OK"


# --- over the fake engine, in process --------------------------------------------------------


@pytest.fixture
def fake_stub():
    engine = FakeEngine()
    running = create_server(engine, "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield pb_grpc.InferenceServiceStub(channel), engine
    finally:
        engine.release.set()
        channel.close()
        running.server.stop(None)


def generate_record(caplog, request_id: str) -> logging.LogRecord:
    """The servicer's line for ``request_id`` (written once gRPC reports the call's end)."""
    found = eventually(lambda: [r for r in caplog.records
                                if r.name == "inference_service.server" and getattr(r, "request_id", None) == request_id],
                       f"the servicer's line for {request_id}", timeout=SAFETY)
    assert len(found) == 1, found
    return found[0]


def test_line_of_a_completed_call(fake_stub, caplog):
    caplog.set_level(logging.INFO, "inference_service.server")
    stub, _ = fake_stub
    list(stub.Generate(pb.GenerateRequest(model="slow", prompt="hi", max_tokens=3, request_id="field-id"),
                       timeout=SAFETY, metadata=[("x-request-id", "meta-id")]))
    record = generate_record(caplog, "meta-id")
    assert record.levelno == logging.INFO
    assert (record.model, record.outcome, record.prompt_tokens, record.completion_tokens) == ("slow", "OK", 4, 3)
    assert record.duration_s >= 0
    assert record.getMessage().startswith("generate meta-id: model slow, OK, 4 prompt + 3 completion tokens in ")


def test_line_of_a_call_failing_midway(fake_stub, caplog):
    caplog.set_level(logging.INFO, "inference_service.server")
    stub, _ = fake_stub
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Generate(pb.GenerateRequest(model="midway", prompt="hi", request_id="mid-1"), timeout=SAFETY))
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    record = generate_record(caplog, "mid-1")
    assert (record.outcome, record.prompt_tokens, record.completion_tokens) == ("INVALID_ARGUMENT", None, 1)
    assert "mid-1: model midway, INVALID_ARGUMENT, - prompt + 1 completion tokens" in record.getMessage()


def test_line_of_a_cancelled_call(fake_stub, caplog):
    caplog.set_level(logging.INFO, "inference_service.server")
    stub, engine = fake_stub
    call = stub.Generate(pb.GenerateRequest(model="gated", prompt="hi"), timeout=SAFETY,
                         metadata=[("x-request-id", "gone-1")])
    next(call)  # the first chunk
    call.cancel()
    assert generate_record(caplog, "gone-1").outcome == "CANCELLED"


def test_request_id_is_one_printable_bounded_line(fake_stub, caplog):
    caplog.set_level(logging.INFO, "inference_service.server")
    stub, _ = fake_stub
    list(stub.Generate(pb.GenerateRequest(model="slow", prompt="hi", max_tokens=1,
                                          request_id="a\nb\u00e9" + "x" * 500), timeout=SAFETY))
    record = generate_record(caplog, ("a\\nb\\xe9" + "x" * 500)[:128])
    assert "\n" not in record.getMessage()


def test_no_request_id(fake_stub, caplog):
    caplog.set_level(logging.INFO, "inference_service.server")
    stub, _ = fake_stub
    list(stub.Generate(pb.GenerateRequest(model="slow", prompt="hi", max_tokens=1), timeout=SAFETY))
    record = generate_record(caplog, "")
    assert record.getMessage().startswith("generate -: model slow, OK")
