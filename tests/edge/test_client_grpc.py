"""rest_edge.client against a real gRPC server (ephemeral port) with a fake servicer."""

from __future__ import annotations

import socket

import falcon.testing
import pytest
from grpc_health.v1 import health_pb2

from inference_service.v1 import inference_pb2 as pb
from rest_edge.app import create_app
from rest_edge.client import InferenceClient
from rest_edge.errors import RequestError
from tests.edge.fakes import FakeServicer, start_server
from tests.helpers import eventually


@pytest.fixture
def service():
    servicer = FakeServicer()
    server, port, health = start_server(servicer)
    client = InferenceClient(f"127.0.0.1:{port}")
    yield servicer, client, health, port
    client.close()
    server.stop(None)


def request(model: str, **fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=model, prompt="hi", **fields)


def failure(client, model: str, timeout=None) -> RequestError:
    """The error of a call: raised when it starts (the edge's own: no replica, none has the
    model, all full) or while it is read (the service's)."""
    with pytest.raises(RequestError) as info:
        list(client.generate(request(model), timeout=timeout))
    return info.value


def test_generate_streams_messages(service):
    servicer, client, _, _ = service
    msgs = list(client.generate(request("ok", temperature=0.0), timeout=5))
    assert [m.text for m in msgs] == ["Hel", "lo", "!"]
    assert msgs[-1].finish_reason == pb.FINISH_REASON_STOP
    assert msgs[-1].usage.cached_prompt_tokens == 1
    assert servicer.requests[0].HasField("temperature") and servicer.requests[0].temperature == 0


def test_invalid_argument_with_error_param(service):
    _, client, _, _ = service
    err = failure(client, "bad")
    assert (err.status, err.param, err.type) == (400, "temperature", "invalid_request_error")
    assert err.message == "temperature must be between 0 and 2"


def test_resource_exhausted_with_retry_after(service):
    _, client, _, _ = service
    err = failure(client, "full")
    assert err.status == 429 and err.headers == {"Retry-After": "3"} and err.type == "rate_limit_error"


def test_out_of_range_and_not_found(service):
    _, client, _, _ = service
    err = failure(client, "long")
    assert (err.status, err.code) == (400, "context_length_exceeded")
    err = failure(client, "missing")
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")


def test_servicer_exception_is_a_generic_500(service):
    _, client, _, _ = service
    err = failure(client, "crash")
    assert err.status == 500 and "secret" not in err.message


def test_error_after_messages(service):
    _, client, _, _ = service
    call = client.generate(request("midway"), timeout=5)
    assert next(call).text == "partial"
    with pytest.raises(RequestError) as info:
        next(call)
    assert info.value.status == 500 and "secret" not in info.value.message


def test_deadline_is_504(service):
    _, client, _, _ = service
    err = failure(client, "sleepy", timeout=0.3)
    assert (err.status, err.code) == (504, "timeout")


def test_cancel_reaches_the_servicer(service):
    servicer, client, _, _ = service
    call = client.generate(request("slow"), timeout=30)
    assert next(call).text == "t0 "
    assert not servicer.cancelled.is_set()
    assert call.cancel() is True
    assert servicer.cancelled.wait(5), "the servicer never saw the cancellation"


def test_cancel_after_the_end_is_a_no_op(service):
    _, client, _, _ = service
    call = client.generate(request("ok"), timeout=5)
    list(call)
    assert call.cancel() is False


def test_list_models(service):
    _, client, _, _ = service
    names = [m.name for m in client.list_models()]
    assert names == ["smollm2:135m", "qwen2.5:0.5b-instruct"]


def test_health(service):
    _, client, health, _ = service
    assert client.health() is True
    health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    eventually(lambda: client.health() is False, "the watched health turned NOT_SERVING")
    with pytest.raises(RequestError) as info:  # no replica serving: the edge answers 503 itself
        client.generate(request("ok"), timeout=5)
    assert info.value.status == 503 and info.value.code == "service_unavailable"
    health.set("", health_pb2.HealthCheckResponse.SERVING)  # back by itself
    eventually(lambda: client.health() is True, "the watched health turned SERVING")
    assert len(list(client.generate(request("ok"), timeout=5))) == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_service():
    client = InferenceClient(f"127.0.0.1:{_free_port()}")
    try:
        assert client.health(timeout=2) is False
        with pytest.raises(RequestError) as info:
            client.list_models(timeout=2)
        assert info.value.status == 503 and info.value.code == "service_unavailable"
        with pytest.raises(RequestError) as info:
            list(client.generate(request("ok"), timeout=2))
        assert info.value.status == 503
    finally:
        client.close()


# --- the app on the real client ------------------------------------------------------------------

@pytest.fixture
def app_client(service):
    _, _, _, port = service
    return falcon.testing.TestClient(create_app(target=f"127.0.0.1:{port}", request_timeout=10))


def test_app_stream_over_real_grpc(app_client, service):
    servicer = service[0]
    result = app_client.simulate_post("/v1/chat/completions", json={
        "model": "ok", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}})
    assert result.status_code == 200
    lines = [l for l in result.text.split("\n\n") if l]
    assert len(lines) == 6 and lines[-1] == "data: [DONE]"
    assert '"content":"!"' in lines[2] and '"finish_reason":"stop"' in lines[3]
    assert '"usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":1}}' in lines[4]
    # the request id travels in GenerateRequest.request_id and as x-request-id metadata
    request_id = result.headers["x-request-id"]
    assert servicer.requests[0].request_id == request_id and request_id not in lines[0]
    assert ("x-request-id", request_id) in servicer.metadata[0]


def test_app_passes_the_clients_request_id(app_client, service):
    servicer = service[0]
    result = app_client.simulate_post("/v1/completions", json={"model": "ok", "prompt": "x"},
                                      headers={"X-Request-Id": "client-id-1"})
    assert result.status_code == 200 and result.headers["x-request-id"] == "client-id-1"
    assert servicer.requests[-1].request_id == "client-id-1"
    assert ("x-request-id", "client-id-1") in servicer.metadata[-1]


@pytest.mark.parametrize("model, status", [("bad", 400), ("full", 429), ("long", 400), ("missing", 404), ("crash", 500)])
def test_app_errors_over_real_grpc(app_client, model, status):
    result = app_client.simulate_post("/v1/completions", json={"model": model, "prompt": "x", "stream": True})
    assert result.status_code == status
    assert "secret" not in result.text and "Traceback" not in result.text
    if model == "bad":
        assert result.json["error"]["param"] == "temperature"
    if model == "full":
        assert result.headers["retry-after"] == "3"


def test_app_mid_stream_error_over_real_grpc(app_client):
    result = app_client.simulate_post("/v1/completions", json={"model": "midway", "prompt": "x", "stream": True})
    assert result.status_code == 200
    frames = [f for f in result.text.split("\n\n") if f]
    assert '"text":"partial"' in frames[0] and frames[1].startswith('data: {"error":') and frames[2] == "data: [DONE]"


def test_app_disconnect_cancels_the_rpc(service):
    servicer, _, _, port = service
    app = create_app(target=f"127.0.0.1:{port}")
    env = falcon.testing.create_environ(
        method="POST", path="/v1/chat/completions",
        body='{"model":"slow","messages":[{"role":"user","content":"hi"}],"stream":true}')
    iterable = app(env, lambda status, headers, exc_info=None: None)
    it = iter(iterable)
    assert b"t0 " in next(it)
    assert b"t1 " in next(it)
    iterable.close()  # what gunicorn does when the client is gone
    assert servicer.cancelled.wait(5)


def test_app_models_and_health_over_real_grpc(app_client, service):
    health = service[2]
    assert app_client.simulate_get("/v1/models/smollm2:135m").json["id"] == "smollm2:135m"
    assert app_client.simulate_get("/v1/models/qwen2.5:0.5b-instruct").status_code == 200
    assert app_client.simulate_get("/v1/models/x:1b").status_code == 404
    assert len(app_client.simulate_get("/v1/models").json["data"]) == 2
    assert app_client.simulate_get("/health").status_code == 200
    health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    eventually(lambda: app_client.simulate_get("/health").status_code == 503, "/health answers 503")
