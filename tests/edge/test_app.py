"""The Falcon app with a fake inference client: shapes, errors, auth, limits, models, health."""

from __future__ import annotations

import json
import re

import falcon
import falcon.testing
import grpc
import pytest

from inference_service.v1 import inference_pb2 as pb
from rest_edge.app import create_app
from tests.edge import test_golden as golden
from tests.edge.fakes import LENGTH, FakeClient, last, piece, rpc_error
from tests.helpers import client_for

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MESSAGES = [{"role": "user", "content": "你好"}]


def frames(result) -> list:
    """The decoded data of each SSE frame; '[DONE]' stays a string."""
    text = result.text
    assert text.endswith("data: [DONE]\n\n"), text
    parts = text.split("\n\n")
    assert parts[-1] == ""
    out = []
    for part in parts[:-1]:
        assert part.startswith("data: ") and "\n" not in part, part
        data = part[len("data: "):]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def assert_sse_headers(result):
    assert result.status_code == 200
    assert result.headers["content-type"] == "text/event-stream"
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-accel-buffering"] == "no"
    assert "connection" not in result.headers
    assert "transfer-encoding" not in result.headers


def assert_error(result, status, type_, param=None, code=None):
    assert result.status_code == status, result.text
    assert result.headers["content-type"] == "application/json"
    body = result.json
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    assert body["error"]["type"] == type_
    assert body["error"]["param"] == param
    assert body["error"]["code"] == code
    assert "Traceback" not in result.text
    return body["error"]


def normalise(text: str, id_: str, created: int) -> str:
    text = re.sub(r'"id":"(chat)?cmpl-\d+"', lambda m: f'"id":"{id_}"', text)
    return re.sub(r'"created":\d+', f'"created":{created}', text)


# --- reference shapes through the app ----------------------------------------------------------

def test_completion_stream_matches_reference_modulo_id_and_time():
    ref = golden.frames_of(golden.COMPLETION_STREAM)
    fake = FakeClient([piece(f["choices"][0]["text"]) for f in ref[:-1]] + [last()])
    result = client_for(fake).simulate_post(COMP, json={"model": "qwen2.5:3b", "prompt": "你好啊",
                                                        "temperature": 0.7, "stream": True})
    assert_sse_headers(result)
    ids = set(re.findall(r'"id":"(cmpl-\d+)"', result.text))
    assert len(ids) == 1  # one id per response
    expected = golden.stream_bytes(normalise(golden.COMPLETION_STREAM, "X", 0)).decode()
    assert normalise(result.text, "X", 0) == expected
    assert fake.requests[0].prompt == "你好啊"
    # the service gets the request id (X-Request-Id, made here when the client sent none), not the response id
    assert fake.requests[0].request_id == result.headers["x-request-id"] != ids.pop()
    assert fake.calls[0].cancelled  # the finally ran


def test_chat_stream_matches_reference_modulo_id_and_time():
    ref = golden.frames_of(golden.CHAT_STREAM)
    fake = FakeClient([piece(f["choices"][0]["delta"]["content"]) for f in ref[:-1]] + [last()])
    result = client_for(fake).simulate_post(CHAT, json={"model": "qwen2.5:3b", "messages": MESSAGES,
                                                        "temperature": 0.7, "stream": True})
    assert_sse_headers(result)
    assert len(set(re.findall(r'"id":"(chatcmpl-\d+)"', result.text))) == 1
    expected = golden.stream_bytes(normalise(golden.CHAT_STREAM, "X", 0)).decode()
    assert normalise(result.text, "X", 0) == expected
    assert fake.requests[0].messages[0].content == "你好"


def test_completion_non_stream_matches_reference_plus_cached_tokens():
    text = "你好!很高兴为你服务。有什么我可以帮助你的吗?"
    fake = FakeClient([piece(text[:5]), last(text[5:], prompt=31, completion=13, cached=0)])
    result = client_for(fake).simulate_post(COMP, json={"model": "qwen2.5:3b", "prompt": "你好啊", "temperature": 0.7})
    assert result.status_code == 200 and result.headers["content-type"] == "application/json"
    assert re.fullmatch(r'\{"id":"cmpl-\d+".*', result.text)
    body = result.json
    assert body["usage"].pop("prompt_tokens_details") == {"cached_tokens": 0}
    expected = golden.compact(golden.COMPLETION_BODY).decode()
    assert normalise(json.dumps(body, separators=(",", ":"), ensure_ascii=False), "cmpl-765", 1740898347) == expected
    assert "\\u" not in result.text  # raw UTF-8


def test_chat_non_stream_matches_reference_plus_cached_tokens():
    text = "你好!有什么我可以帮助你的吗?"
    fake = FakeClient([piece(text), last(prompt=30, completion=9, cached=12)])
    result = client_for(fake).simulate_post(CHAT, json={"model": "qwen2.5:3b", "messages": MESSAGES, "temperature": 0.7})
    assert result.status_code == 200
    body = result.json
    assert body["usage"].pop("prompt_tokens_details") == {"cached_tokens": 12}
    expected = golden.compact(golden.CHAT_BODY).decode()
    assert normalise(json.dumps(body, separators=(",", ":"), ensure_ascii=False), "chatcmpl-323", 1740898382) == expected


def test_ids_differ_between_responses():
    fake = FakeClient([piece("a"), last()])
    client = client_for(fake)
    ids = {client.simulate_post(CHAT, json={"model": "m", "messages": MESSAGES}).json["id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("path, body", [
    (CHAT, {"model": "m", "messages": MESSAGES}),
    (COMP, {"model": "m", "prompt": "x"}),
])
def test_include_usage_frame(path, body):
    fake = FakeClient([piece("a"), last("b", reason=LENGTH, prompt=5, completion=2, cached=3)])
    result = client_for(fake).simulate_post(path, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    fr = frames(result)
    assert fr[-1] == "[DONE]"
    usage_frame, final = fr[-2], fr[-3]
    assert usage_frame["choices"] == [] and usage_frame["id"] == final["id"]
    assert list(usage_frame)[-1] == "usage"
    assert usage_frame["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
                                    "prompt_tokens_details": {"cached_tokens": 3}}
    assert final["choices"][0]["finish_reason"] == "length"
    texts = [f["choices"][0].get("text", f["choices"][0].get("delta", {}).get("content")) for f in fr[:-2]]
    assert texts == ["a", "b", ""]


def test_no_usage_frame_without_include_usage():
    fake = FakeClient([piece("a"), last()])
    fr = frames(client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": True}))
    assert all("usage" not in f for f in fr[:-1])
    assert len(fr) == 3


def test_finish_only_stream():
    fake = FakeClient([last(reason=LENGTH)])
    fr = frames(client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": True}))
    assert len(fr) == 2
    assert fr[0]["choices"][0] == {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "length"}


def test_request_reaches_the_client_translated_with_timeout():
    fake = FakeClient([last()])
    client_for(fake, request_timeout=42).simulate_post(
        CHAT, json={"model": "smollm2:135m", "messages": MESSAGES, "temperature": 0, "seed": 1,
                    "stop": "\n", "max_completion_tokens": 5})
    req = fake.requests[0]
    assert req.model == "smollm2:135m" and req.temperature == 0 and req.HasField("temperature")
    assert req.seed == 1 and list(req.stop) == ["\n"] and req.max_tokens == 5
    assert fake.timeouts == [42]


# --- logprobs ---------------------------------------------------------------------------------

def _lp(token, value):
    return pb.TokenLogprob(token=token, logprob=value, top_logprobs=[pb.TopLogprob(token=token, logprob=value)])


def test_chat_logprobs_stream_and_non_stream():
    script = [piece("a", logprobs=[_lp("a", -0.5)]), last(logprobs=[])]
    fake = FakeClient(script)
    client = client_for(fake)
    body = client.simulate_post(CHAT, json={"model": "m", "messages": MESSAGES, "logprobs": True, "top_logprobs": 1}).json
    choice = body["choices"][0]
    assert list(choice) == ["index", "message", "logprobs", "finish_reason"]
    assert choice["logprobs"]["content"][0]["token"] == "a"
    fr = frames(client.simulate_post(CHAT, json={"model": "m", "messages": MESSAGES, "logprobs": True, "stream": True}))
    assert list(fr[0]["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]
    assert fr[0]["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5
    assert fr[1]["choices"][0]["logprobs"] is None


def test_completion_logprobs_stream_and_non_stream():
    script = [piece("ab", logprobs=[_lp("a", -0.5), _lp("b", -1.0)]), last("c", logprobs=[_lp("c", -2.0)])]
    client = client_for(FakeClient(script))
    body = client.simulate_post(COMP, json={"model": "m", "prompt": "x", "logprobs": 1}).json
    choice = body["choices"][0]
    assert list(choice) == ["text", "index", "logprobs", "finish_reason"]
    assert choice["logprobs"] == {"tokens": ["a", "b", "c"], "token_logprobs": [-0.5, -1.0, -2.0],
                                  "top_logprobs": [{"a": -0.5}, {"b": -1.0}, {"c": -2.0}], "text_offset": [0, 1, 2]}
    fr = frames(client.simulate_post(COMP, json={"model": "m", "prompt": "x", "logprobs": 0, "stream": True}))
    assert fr[0]["choices"][0]["logprobs"]["text_offset"] == [0, 1]
    assert fr[1]["choices"][0]["logprobs"]["text_offset"] == [2]
    assert fr[2]["choices"][0]["logprobs"] is None


def test_no_logprobs_key_unless_requested():
    client = client_for(FakeClient([piece("a", logprobs=[_lp("a", -0.5)]), last()]))
    assert "logprobs" not in client.simulate_post(CHAT, json={"model": "m", "messages": MESSAGES}).json["choices"][0]
    assert "logprobs" not in client.simulate_post(COMP, json={"model": "m", "prompt": "x"}).json["choices"][0]


# --- errors before the first token: real HTTP statuses -------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("code, status, type_, param, err_code", [
    (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error", "temperature", None),
    (grpc.StatusCode.OUT_OF_RANGE, 400, "invalid_request_error", "messages", "context_length_exceeded"),
    (grpc.StatusCode.NOT_FOUND, 404, "not_found_error", "model", "model_not_found"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error", None, "rate_limit_exceeded"),
    (grpc.StatusCode.UNAVAILABLE, 503, "server_error", None, "service_unavailable"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "server_error", None, "timeout"),
    (grpc.StatusCode.INTERNAL, 500, "server_error", None, None),
    (grpc.StatusCode.UNIMPLEMENTED, 501, "server_error", None, None),
    (grpc.StatusCode.CANCELLED, 499, "server_error", None, "cancelled"),
])
def test_error_before_first_token_gets_its_status(stream, code, status, type_, param, err_code):
    metadata = {"error-param": param} if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE) else {}
    fake = FakeClient([rpc_error(code, "details from the service", **metadata)])
    result = client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": stream})
    assert_error(result, status, type_, param, err_code)
    if status == 429:
        assert result.headers["retry-after"] == "1"
    if status == 499:
        assert result.status == "499 Client Closed Request"
    assert fake.calls[0].cancelled


def test_error_when_starting_the_call():
    fake = FakeClient(generate_error=rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    result = client_for(fake).simulate_post(COMP, json={"model": "m", "prompt": "x", "stream": True})
    err = assert_error(result, 503, "server_error", None, "service_unavailable")
    assert "refused" not in err["message"]


def test_error_after_empty_pieces_but_before_text_is_still_a_status():
    # messages without text (e.g. held-back bytes) do not start the stream
    fake = FakeClient([piece(""), rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", **{"retry-after": "4"})])
    result = client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": True})
    assert_error(result, 429, "rate_limit_error", None, "rate_limit_exceeded")
    assert result.headers["retry-after"] == "4"


def test_mid_stream_error_becomes_one_error_frame_then_done():
    fake = FakeClient([piece("Hel"), piece("lo"), rpc_error(grpc.StatusCode.INTERNAL, "engine exploded at 0x7f")])
    result = client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": True})
    assert_sse_headers(result)
    fr = frames(result)
    assert [f["choices"][0]["delta"]["content"] for f in fr[:2]] == ["Hel", "lo"]
    assert fr[2] == {"error": {"message": "The server had an error while processing your request.",
                               "type": "server_error", "param": None, "code": None}}
    assert fr[3] == "[DONE]" and len(fr) == 4
    assert "0x7f" not in result.text
    assert fake.calls[0].cancelled


def test_mid_stream_unexpected_exception_is_generic():
    fake = FakeClient([piece("a"), ValueError("secret internal detail")])
    result = client_for(fake).simulate_post(COMP, json={"model": "m", "prompt": "x", "stream": True})
    fr = frames(result)
    assert fr[1]["error"]["type"] == "server_error" and fr[2] == "[DONE]"
    assert "secret" not in result.text and "Traceback" not in result.text


def test_stream_ending_without_finish_is_an_error_frame():
    fake = FakeClient([piece("a")])
    fr = frames(client_for(fake).simulate_post(COMP, json={"model": "m", "prompt": "x", "stream": True}))
    assert "error" in fr[1] and fr[2] == "[DONE]"


def test_non_stream_error_after_text_is_a_status():
    fake = FakeClient([piece("a"), rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")])
    result = client_for(fake).simulate_post(COMP, json={"model": "m", "prompt": "x"})
    assert_error(result, 504, "server_error", None, "timeout")
    assert fake.calls[0].cancelled


def test_unexpected_exception_in_responder_is_a_generic_500():
    fake = FakeClient(generate_error=KeyError("secret"))
    result = client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": MESSAGES})
    err = assert_error(result, 500, "server_error")
    assert "secret" not in result.text and err["message"]


# --- validation through HTTP ----------------------------------------------------------------

@pytest.mark.parametrize("path, body, param", [
    (CHAT, {"model": "m", "messages": MESSAGES, "n": 17}, "n"),
    (CHAT, {"model": "m", "messages": MESSAGES, "tools": [{"type": "function"}]}, "tools[0].function"),
    (CHAT, {"model": "m", "messages": MESSAGES, "response_format": {"type": "json"}}, "response_format.type"),
    (COMP, {"model": "m", "prompt": "x", "response_format": {"type": "json_object"}}, "response_format"),
    (COMP, {"model": "m", "prompt": "x", "suffix": "y"}, "suffix"),
    (COMP, {"model": "m", "prompt": "x", "echo": True}, "echo"),
    (COMP, {"model": "m", "prompt": "x", "best_of": 2}, "best_of"),
    (CHAT, {"model": "m", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
    (COMP, {"model": "m", "prompt": "x", "max_tokens": -1}, "max_tokens"),
    (CHAT, {"messages": MESSAGES}, "model"),
    (CHAT, {"model": "m"}, "messages"),
    (COMP, {"model": "m"}, "prompt"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_requests_are_400_naming_the_field(path, body, param, stream):
    fake = FakeClient([last()])
    result = client_for(fake).simulate_post(path, json={**body, "stream": stream})
    assert result.status_code == 400
    err = result.json["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert fake.requests == []  # never reached the service


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1,2]", b'"text"', b"\xff", b'{"model":NaN}'])
def test_bad_bodies_are_400(raw):
    fake = FakeClient([last()])
    result = client_for(fake).simulate_post(CHAT, body=raw, headers={"Content-Type": "application/json"})
    assert_error(result, 400, "invalid_request_error")


def test_body_over_the_limit_is_413():
    fake = FakeClient([last()])
    client = client_for(fake, max_body_bytes=100)
    result = client.simulate_post(COMP, json={"model": "m", "prompt": "x" * 200})
    assert_error(result, 413, "invalid_request_error")
    assert fake.requests == []
    assert client.simulate_post(COMP, json={"model": "m", "prompt": "x" * 10}).status_code == 200


def test_default_body_limit_is_one_mib():
    fake = FakeClient([last()])
    client = client_for(fake)
    assert client.simulate_post(COMP, json={"model": "m", "prompt": "x" * (1024 * 1024)}).status_code == 413
    assert client.simulate_post(COMP, json={"model": "m", "prompt": "x" * (1000 * 1000)}).status_code == 200


def test_unknown_route_and_wrong_method_have_openai_bodies():
    client = client_for(FakeClient())
    assert_error(client.simulate_get("/v1/nothing"), 404, "not_found_error")
    result = client.simulate_get(CHAT)
    assert_error(result, 405, "invalid_request_error")


# --- auth ----------------------------------------------------------------------------------------

def test_api_keys():
    fake = FakeClient([last()], models=[pb.ModelInfo(name="m")])
    client = client_for(fake, api_keys=["k1", "k2"])
    body = {"model": "m", "messages": MESSAGES}
    result = client.simulate_post(CHAT, json=body)
    assert_error(result, 401, "authentication_error", None, "missing_api_key")
    assert result.headers["www-authenticate"] == "Bearer"
    assert_error(client.simulate_post(CHAT, json=body, headers={"Authorization": "Bearer nope"}),
                 401, "authentication_error", None, "invalid_api_key")
    assert_error(client.simulate_get("/v1/models", headers={"Authorization": "Basic k1"}),
                 401, "authentication_error", None, "missing_api_key")
    assert client.simulate_post(CHAT, json=body, headers={"Authorization": "Bearer k2"}).status_code == 200
    assert client.simulate_get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
    assert client.simulate_get("/health").status_code == 200  # probes need no key
    assert fake.requests and len(fake.requests) == 1


def test_api_keys_from_environment(monkeypatch):
    monkeypatch.setenv("EDGE_API_KEYS", " a , b ,")
    client = client_for(FakeClient(models=[]))
    assert client.simulate_get("/v1/models").status_code == 401
    assert client.simulate_get("/v1/models", headers={"Authorization": "Bearer b"}).status_code == 200


def test_no_keys_means_open():
    client = client_for(FakeClient(models=[]), api_keys=[])
    assert client.simulate_get("/v1/models").status_code == 200


# --- models and health --------------------------------------------------------------------------

MODELS = [pb.ModelInfo(name="smollm2:135m", created=1700000000, owned_by="library", context_length=8192),
          pb.ModelInfo(name="hf.co/org/qwen2.5:0.5b", created=1700000001, owned_by="me")]


def test_list_models():
    result = client_for(FakeClient(models=MODELS)).simulate_get("/v1/models")
    assert result.status_code == 200
    assert result.text == ('{"object":"list","data":['
                           '{"id":"smollm2:135m","object":"model","created":1700000000,"owned_by":"library"},'
                           '{"id":"hf.co/org/qwen2.5:0.5b","object":"model","created":1700000001,"owned_by":"me"}]}')


def test_list_models_empty():
    assert client_for(FakeClient(models=[])).simulate_get("/v1/models").json == {"object": "list", "data": []}


def test_get_model_with_colon_dot_and_slash():
    client = client_for(FakeClient(models=MODELS))
    result = client.simulate_get("/v1/models/smollm2:135m")
    assert result.status_code == 200
    assert result.json == {"id": "smollm2:135m", "object": "model", "created": 1700000000, "owned_by": "library"}
    assert client.simulate_get("/v1/models/smollm2%3A135m").json["id"] == "smollm2:135m"
    assert client.simulate_get("/v1/models/hf.co/org/qwen2.5:0.5b").json["id"] == "hf.co/org/qwen2.5:0.5b"


def test_get_unknown_model_is_404():
    result = client_for(FakeClient(models=MODELS)).simulate_get("/v1/models/nope:1b")
    err = assert_error(result, 404, "not_found_error", "model", "model_not_found")
    assert "nope:1b" in err["message"]
    long_name = "m" * 3000
    err = assert_error(client_for(FakeClient(models=MODELS)).simulate_get(f"/v1/models/{long_name}"),
                       404, "not_found_error", "model", "model_not_found")
    assert len(err["message"]) < 200  # a short prefix is quoted, never the whole path


def test_models_when_service_is_down():
    fake = FakeClient(models_error=rpc_error(grpc.StatusCode.UNAVAILABLE, "connect failed"))
    client = client_for(fake)
    assert_error(client.simulate_get("/v1/models"), 503, "server_error", None, "service_unavailable")
    assert_error(client.simulate_get("/v1/models/x"), 503, "server_error", None, "service_unavailable")


@pytest.mark.parametrize("healthy, status", [(True, 200), (False, 503), (RuntimeError("boom"), 503)])
def test_health(healthy, status):
    result = client_for(FakeClient(healthy=healthy)).simulate_get("/health")
    assert result.status_code == status
    assert result.json["status"] == ("ok" if status == 200 else "unavailable")


def test_metrics():
    client = client_for(FakeClient([piece("a"), last()]))
    client.simulate_post(CHAT, json={"model": "m", "messages": MESSAGES})
    client.simulate_get("/nope")
    text = client.simulate_get("/metrics").text
    assert 'edge_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'route="unmatched",status="404"' in text


def test_create_app_does_not_connect(monkeypatch):
    # The default client builds a channel lazily; nothing listens on this port.
    app = create_app(target="127.0.0.1:9", request_timeout=1)
    result = falcon.testing.TestClient(app).simulate_get("/health")
    assert result.status_code == 503
