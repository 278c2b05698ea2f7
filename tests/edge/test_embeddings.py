"""POST /v1/embeddings: the Falcon app with a fake client (input shapes, encodings, every
malformed request a 400 naming its field, ``dimensions``, gRPC errors), then the real
gunicorn edge in front of the real gRPC server over the fake engine, driven by the official
openai client.
"""

from __future__ import annotations

import array
import base64
import json

import grpc
import httpx
import openai
import pytest

from inference_service import limits
from inference_service.v1 import inference_pb2 as pb
from tests.edge.fake_stack import oai, stack  # noqa: F401  (fixtures)
from tests.edge.fakes import EMBEDDING_DIMENSIONS, FakeClient, rpc_error, vector_of
from tests.helpers import client_for, eventually
from tests.service.fake_engine import EMBEDDING_DIMENSIONS as ENGINE_DIMENSIONS
from tests.service.fake_engine import fake_vector

PATH = "/v1/embeddings"
SAFETY = 30  # seconds: bounds a hang, never a measured limit

MODELS = [pb.ModelInfo(name="embedder", created=1700000000, owned_by="library", can_embed=True,
                       embedding_dimensions=EMBEDDING_DIMENSIONS),
          pb.ModelInfo(name="generator", created=1700000000, owned_by="library")]


def post(body, fake: FakeClient | None = None, **kwargs):
    fake = fake or FakeClient(models=MODELS)
    client = client_for(fake, **kwargs)
    if isinstance(body, (bytes, str)):
        return client.simulate_post(PATH, body=body, headers={"Content-Type": "application/json"}), fake
    return client.simulate_post(PATH, json=body), fake


def error_of(result, status: int = 400) -> dict:
    assert result.status_code == status, result.text
    body = result.json
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    assert "Traceback" not in result.text
    return body["error"]


def text(value: str) -> pb.EmbedInput:
    return pb.EmbedInput(text=value)


def tokens(*ids: int) -> pb.EmbedInput:
    return pb.EmbedInput(tokens=pb.TokenIds(ids=ids))


def floats32(data: str) -> list[float]:
    return array.array("f", base64.b64decode(data)).tolist()  # little-endian hosts, as the tests run


# --- input shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("given, sent", [
    ("hello", [text("hello")]),
    (["hello", "你好"], [text("hello"), text("你好")]),
    ([1, 2, 3], [tokens(1, 2, 3)]),
    ([[1, 2], [3]], [tokens(1, 2), tokens(3)]),
    ([[0]], [tokens(0)]),
    ([5.0, 6], [tokens(5, 6)]),  # 5.0 is an integer in JSON's eyes, as everywhere else
    (["mixed", [4, 5]], [text("mixed"), tokens(4, 5)]),
])
def test_each_input_shape(given, sent):
    result, fake = post({"model": "embedder", "input": given})
    assert result.status_code == 200, result.text
    (request,) = fake.embed_requests
    assert list(request.inputs) == sent and request.model == "embedder"
    assert request.request_id == result.headers["x-request-id"]  # the request's X-Request-Id
    body = result.json
    assert list(body) == ["object", "data", "model", "usage"]
    assert body["object"] == "list" and body["model"] == "embedder"
    assert [list(d) for d in body["data"]] == [["object", "index", "embedding"]] * len(sent)
    assert [d["object"] for d in body["data"]] == ["embedding"] * len(sent)
    assert [d["index"] for d in body["data"]] == list(range(len(sent)))
    assert [d["embedding"] for d in body["data"]] == [vector_of(item) for item in sent]
    n = sum(len(i.text) if i.WhichOneof("kind") == "text" else len(i.tokens.ids) for i in sent)
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n}
    assert fake.list_models_calls == 0  # only ``dimensions`` asks for the model's


def test_base64_decodes_to_the_same_floats():
    inputs = ["a", "b", "c"]
    as_floats, _ = post({"model": "embedder", "input": inputs, "encoding_format": "float"})
    as_base64, _ = post({"model": "embedder", "input": inputs, "encoding_format": "base64"})
    assert as_floats.status_code == as_base64.status_code == 200
    strings = [d["embedding"] for d in as_base64.json["data"]]
    assert all(isinstance(s, str) for s in strings)
    assert [floats32(s) for s in strings] == [d["embedding"] for d in as_floats.json["data"]]
    assert as_base64.json["usage"] == as_floats.json["usage"]


def test_floats_are_written_exactly():
    """Each float in the JSON text reads back as the very float32 the service sent."""
    response = pb.EmbedResponse(embeddings=[pb.Embedding(values=[0.1, -1e-8, 1 / 3, 0.0])], prompt_tokens=1)
    result, _ = post({"model": "embedder", "input": "x"}, FakeClient(embed_script=lambda r: response))
    written = json.loads(result.text)["data"][0]["embedding"]
    assert written == list(response.embeddings[0].values)
    assert array.array("f", written).tolist() == written
    assert '"embedding":[0.10000000149011612,' in result.text  # float32 0.1, as OpenAI writes it


def test_the_most_inputs_allowed():
    result, fake = post({"model": "embedder", "input": ["x"] * limits.MAX_EMBEDDING_INPUTS})
    assert result.status_code == 200
    assert len(result.json["data"]) == limits.MAX_EMBEDDING_INPUTS


def test_user_is_accepted_and_unknown_fields_are_refused():
    result, _ = post({"model": "embedder", "input": "hi", "whatever": {"x": 1}})
    assert result.status_code == 400 and result.json["error"]["param"] == "whatever"
    result, _ = post({"model": "embedder", "input": "hi", "user": ["someone"]})
    assert result.status_code == 400 and result.json["error"]["param"] == "user"
    result, fake = post({"model": "embedder", "input": "hi", "user": "someone"})
    assert result.status_code == 200
    assert list(fake.embed_requests[0].inputs) == [text("hi")]


# --- malformed requests: 400 naming the field, nothing sent ----------------------------------

TOO_LONG = "a" * (limits.MAX_EMBEDDING_INPUT_CHARS + 1)


@pytest.mark.parametrize("body, param", [
    ({"input": "hi"}, "model"),
    ({"model": 5, "input": "hi"}, "model"),
    ({"model": "", "input": "hi"}, "model"),
    ({"model": "m" * (limits.MAX_MODEL_CHARS + 1), "input": "hi"}, "model"),
    ({"model": "embedder"}, "input"),
    ({"model": "embedder", "input": None}, "input"),
    ({"model": "embedder", "input": ""}, "input"),
    ({"model": "embedder", "input": []}, "input"),
    ({"model": "embedder", "input": [""]}, "input[0]"),
    ({"model": "embedder", "input": ["a", ""]}, "input[1]"),
    ({"model": "embedder", "input": 5}, "input"),
    ({"model": "embedder", "input": True}, "input"),
    ({"model": "embedder", "input": {"text": "hi"}}, "input"),
    ({"model": "embedder", "input": [None]}, "input[0]"),
    ({"model": "embedder", "input": [True]}, "input[0]"),
    ({"model": "embedder", "input": [{"text": "hi"}]}, "input[0]"),
    ({"model": "embedder", "input": ["a", 3]}, "input[1]"),
    ({"model": "embedder", "input": ["a", [1], None]}, "input[2]"),
    ({"model": "embedder", "input": [1, -1]}, "input[1]"),
    ({"model": "embedder", "input": [1, 1.5]}, "input[1]"),
    ({"model": "embedder", "input": [1, "a"]}, "input[1]"),
    ({"model": "embedder", "input": [1, True]}, "input[1]"),
    ({"model": "embedder", "input": [1, [2]]}, "input[1]"),
    ({"model": "embedder", "input": [2**31]}, "input[0]"),
    ({"model": "embedder", "input": [10**400]}, "input[0]"),
    ({"model": "embedder", "input": [1e300]}, "input[0]"),
    ({"model": "embedder", "input": [[1], []]}, "input[1]"),
    ({"model": "embedder", "input": [[1, -3]]}, "input[0][1]"),
    ({"model": "embedder", "input": [[1, "x"]]}, "input[0][1]"),
    ({"model": "embedder", "input": [[1, 0.5]]}, "input[0][1]"),
    ({"model": "embedder", "input": [[[1]]]}, "input[0][0]"),
    ({"model": "embedder", "input": TOO_LONG}, "input"),
    ({"model": "embedder", "input": ["ok", TOO_LONG]}, "input[1]"),
    ({"model": "embedder", "input": ["x"] * (limits.MAX_EMBEDDING_INPUTS + 1)}, "input"),
    ({"model": "embedder", "input": [[1]] * (limits.MAX_EMBEDDING_INPUTS + 1)}, "input"),
    ({"model": "embedder", "input": [1] * (limits.MAX_EMBEDDING_INPUT_TOKENS + 1)}, "input"),
    ({"model": "embedder", "input": [[1] * (limits.MAX_EMBEDDING_INPUT_TOKENS + 1)]}, "input[0]"),
    ({"model": "embedder", "input": "hi", "encoding_format": "binary"}, "encoding_format"),
    ({"model": "embedder", "input": "hi", "encoding_format": "FLOAT"}, "encoding_format"),
    ({"model": "embedder", "input": "hi", "encoding_format": 1}, "encoding_format"),
    ({"model": "embedder", "input": "hi", "dimensions": "4"}, "dimensions"),
    ({"model": "embedder", "input": "hi", "dimensions": 0}, "dimensions"),
    ({"model": "embedder", "input": "hi", "dimensions": -4}, "dimensions"),
    ({"model": "embedder", "input": "hi", "dimensions": 4.5}, "dimensions"),
    ({"model": "embedder", "input": "hi", "dimensions": 2**40}, "dimensions"),
    ({"model": "embedder", "input": "hi", "dimensions": 3}, "dimensions"),  # not the model's 4
])
def test_malformed_requests_are_400_naming_the_field(body, param):
    result, fake = post(body)
    error = error_of(result)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert len(error["message"]) < 400  # never echoes an input in full
    assert fake.embed_requests == []


@pytest.mark.parametrize("raw, param", [
    (b'{"model":"embedder","input":"\\ud800"}', "input"),
    (b'{"model":"embedder","input":["ok","a\\udfffb"]}', "input[1]"),
    (b'{"model":"embedder","input":"hi"', None),
    (b'["embedder"]', None),
    (b'', None),
])
def test_invalid_text_and_json_are_400(raw, param):
    result, fake = post(raw)
    assert error_of(result)["param"] == param
    assert fake.embed_requests == []


def test_too_long_text_code_and_message():
    error = error_of(post({"model": "embedder", "input": ["ok", TOO_LONG]})[0])
    assert error["code"] == "string_above_max_length"
    assert error["message"] == limits.too_long_message("input[1]", TOO_LONG, limits.MAX_EMBEDDING_INPUT_CHARS)


def test_too_many_inputs_message():
    error = error_of(post({"model": "embedder", "input": ["x"] * 3000})[0])
    assert error["message"] == limits.too_many_inputs_message("input", 3000)


def test_body_over_the_limit_is_413():
    result, fake = post({"model": "embedder", "input": "x" * 2000}, max_body_bytes=1000)
    assert error_of(result, 413)["type"] == "invalid_request_error"
    assert fake.embed_requests == []


# --- dimensions --------------------------------------------------------------------------------


def test_dimensions_equal_to_the_models_is_accepted():
    result, fake = post({"model": "embedder", "input": "hi", "dimensions": EMBEDDING_DIMENSIONS})
    assert result.status_code == 200
    assert len(result.json["data"][0]["embedding"]) == EMBEDDING_DIMENSIONS


def test_other_dimensions_are_refused_saying_the_models():
    error = error_of(post({"model": "embedder", "input": "hi", "dimensions": 2})[0])
    assert error["code"] == "unsupported_parameter"
    assert f"{EMBEDDING_DIMENSIONS} dimensions" in error["message"]


def test_dimensions_null_is_absent():
    result, fake = post({"model": "embedder", "input": "hi", "dimensions": None})
    assert result.status_code == 200 and fake.list_models_calls == 0


@pytest.mark.parametrize("model", ["unknown", "generator"])
def test_dimensions_of_a_model_that_does_not_embed_leaves_the_answer_to_the_service(model):
    """The service's own error (404, or 400 naming the model) says more than 'dimensions'."""
    fake = FakeClient(models=MODELS, embed_script=lambda r: rpc_error(grpc.StatusCode.NOT_FOUND, "no such model"))
    result, _ = post({"model": model, "input": "hi", "dimensions": 4}, fake)
    assert error_of(result, 404)["param"] == "model"
    assert len(fake.embed_requests) == 1


# --- errors of the service ----------------------------------------------------------------------


@pytest.mark.parametrize("error, status, param, code", [
    (rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "model 'x' cannot compute embeddings", **{"error-param": "model"}),
     400, "model", None),
    (rpc_error(grpc.StatusCode.OUT_OF_RANGE, "input has 5000 tokens, more than the context of 4096",
               **{"error-param": "input"}), 400, "input", "context_length_exceeded"),
    (rpc_error(grpc.StatusCode.NOT_FOUND, "model 'x' not found"), 404, "model", "model_not_found"),
    (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", **{"retry-after": "2"}), 429, None, "rate_limit_exceeded"),
    (rpc_error(grpc.StatusCode.UNAVAILABLE, "loading"), 503, None, "service_unavailable"),
    (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "late"), 504, None, "timeout"),
    (rpc_error(grpc.StatusCode.INTERNAL, "secret /path"), 500, None, None),
])
def test_service_errors_become_openai_errors(error, status, param, code):
    for fake in (FakeClient(embed_script=lambda r: error), FakeClient(embed_error=error)):
        result, _ = post({"model": "embedder", "input": "hi"}, fake)
        body = error_of(result, status)
        assert (body["param"], body["code"]) == (param, code)
        assert "secret" not in result.text
        if status == 429:
            assert result.headers["retry-after"] == "2"


def test_the_request_timeout_is_the_deadline():
    result, fake = post({"model": "embedder", "input": "hi"}, request_timeout=12.5)
    assert result.status_code == 200 and fake.timeouts == [12.5]


def test_api_key_is_required_when_configured():
    fake = FakeClient(models=MODELS)
    client = client_for(fake, api_keys=["k1"])
    assert client.simulate_post(PATH, json={"model": "embedder", "input": "hi"}).status_code == 401
    ok = client.simulate_post(PATH, json={"model": "embedder", "input": "hi"}, headers={"Authorization": "Bearer k1"})
    assert ok.status_code == 200


def test_metrics_label_the_route():
    client = client_for(FakeClient(models=MODELS))
    client.simulate_post(PATH, json={"model": "embedder", "input": "hi"})
    client.simulate_post(PATH, json={"model": "embedder", "input": ""})
    text_ = client.simulate_get("/metrics").text
    assert 'edge_http_requests_total{method="POST",route="/v1/embeddings",status="200"} 1.0' in text_
    assert 'edge_http_requests_total{method="POST",route="/v1/embeddings",status="400"} 1.0' in text_


# --- the real gunicorn edge, the real gRPC server, the fake engine, the openai client ----------------




def test_openai_client_floats_base64_and_default_agree(oai):
    inputs = ["The food was delicious.", "你好", "🙂 emoji"]
    expected = [list(fake_vector(t)) for t in inputs]
    as_floats = oai.embeddings.create(model="fake", input=inputs, encoding_format="float")
    assert [d.embedding for d in as_floats.data] == expected
    assert [d.index for d in as_floats.data] == [0, 1, 2]
    assert as_floats.model == "fake" and as_floats.object == "list"
    assert as_floats.usage.prompt_tokens == as_floats.usage.total_tokens == sum(len(t) for t in inputs)
    # The client's default asks for base64 and decodes it itself.
    default = oai.embeddings.create(model="fake", input=inputs)
    assert [d.embedding for d in default.data] == expected
    # Asked for explicitly, base64 comes back as the string: the same float32 bytes.
    as_base64 = oai.embeddings.create(model="fake", input=inputs, encoding_format="base64")
    assert [floats32(d.embedding) for d in as_base64.data] == expected


def test_openai_client_token_inputs(oai, stack):
    one = oai.embeddings.create(model="fake", input=[1, 2, 3], encoding_format="float")
    many = oai.embeddings.create(model="fake", input=[[1, 2, 3], [4]], encoding_format="float")
    assert one.data[0].embedding == many.data[0].embedding == list(fake_vector((1, 2, 3)))
    assert many.data[1].embedding == list(fake_vector((4,)))
    assert stack[1].embed_calls[-1].inputs == ((1, 2, 3), (4,))


def test_openai_client_dimensions(oai):
    ok = oai.embeddings.create(model="fake", input="hi", dimensions=ENGINE_DIMENSIONS, encoding_format="float")
    assert len(ok.data[0].embedding) == ENGINE_DIMENSIONS
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model="fake", input="hi", dimensions=ENGINE_DIMENSIONS // 2)
    assert info.value.body["param"] == "dimensions"


@pytest.mark.parametrize("model, exc, param, code", [
    ("missing", openai.NotFoundError, "model", "model_not_found"),
    ("no-embed", openai.BadRequestError, "model", None),
    ("context", openai.BadRequestError, "input", "context_length_exceeded"),
    ("full", openai.RateLimitError, None, "rate_limit_exceeded"),
    ("crash", openai.InternalServerError, None, None),
])
def test_openai_client_errors(oai, model, exc, param, code):
    with pytest.raises(exc) as info:
        oai.embeddings.create(model=model, input=["hi"])
    assert (info.value.body["param"], info.value.body["code"]) == (param, code)


def test_openai_client_bad_input(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model="fake", input=["fine", ""])
    assert info.value.body["param"] == "input[1]"


def test_a_client_that_leaves_cancels_the_embedding(stack):
    base, engine = stack
    before = len(engine.embed_calls)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{base}{PATH}", json={"model": "gated", "input": "hi"}, timeout=httpx.Timeout(SAFETY, read=1.0))
    eventually(lambda: len(engine.embed_calls) > before, "the Embed call reached the engine", timeout=SAFETY)
    assert engine.embed_calls[before].stopped_by_cancel.wait(SAFETY), "the Embed call was not cancelled"
