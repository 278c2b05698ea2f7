"""``Embed`` on the real gRPC server over the fake engine: translation, limits, error mapping,
cancellation, the new ModelInfo fields.

Waits use generous safety timeouts only; nothing is measured against the clock.
"""

from __future__ import annotations

import grpc
import pytest

from inference_service import limits
from inference_service import server as server_module
from inference_service.server import create_server
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from tests.service.fake_engine import EMBEDDING_DIMENSIONS, FakeEngine, fake_vector
from tests.helpers import trailing
from tests.service.test_server_fake import SAFETY, harness  # noqa: F401  (the fixture)




def text(value: str) -> pb.EmbedInput:
    return pb.EmbedInput(text=value)


def tokens(*ids: int) -> pb.EmbedInput:
    return pb.EmbedInput(tokens=pb.TokenIds(ids=ids))


def embed(harness, *inputs: pb.EmbedInput, model: str = "fake", timeout: float = SAFETY) -> pb.EmbedResponse:
    return harness.stub.Embed(pb.EmbedRequest(model=model, inputs=inputs, request_id="r-1"), timeout=timeout)


def failure(harness, *inputs: pb.EmbedInput, model: str = "fake") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        embed(harness, *inputs, model=model)
    return info.value


# --- success ------------------------------------------------------------------------------


def test_texts_and_token_arrays_embed_in_order(harness):
    response = embed(harness, text("hello"), tokens(1, 2, 3), text("你好"))
    assert response.model == "fake"
    assert [tuple(e.values) for e in response.embeddings] == [
        fake_vector("hello"), fake_vector((1, 2, 3)), fake_vector("你好")]
    assert all(len(e.values) == EMBEDDING_DIMENSIONS for e in response.embeddings)
    assert response.prompt_tokens == 5 + 3 + 2
    (call,) = harness.engine.embed_calls
    assert call.model == "fake"
    assert call.inputs == ("hello", (1, 2, 3), "你好")  # text stays text, token arrays become tuples


def test_the_most_inputs_allowed_embed(harness):
    inputs = [text(f"t{i}") for i in range(limits.MAX_EMBEDDING_INPUTS)]
    response = embed(harness, *inputs)
    assert len(response.embeddings) == limits.MAX_EMBEDDING_INPUTS
    assert tuple(response.embeddings[-1].values) == fake_vector(f"t{limits.MAX_EMBEDDING_INPUTS - 1}")


def test_longest_text_and_token_array_allowed(harness):
    response = embed(harness, text("a" * limits.MAX_EMBEDDING_INPUT_CHARS),
                     tokens(*[7] * limits.MAX_EMBEDDING_INPUT_TOKENS))
    assert response.prompt_tokens == limits.MAX_EMBEDDING_INPUT_CHARS + limits.MAX_EMBEDDING_INPUT_TOKENS


def test_list_models_has_engine_architecture_and_embedding_fields(harness):
    (info,) = harness.stub.ListModels(pb.ListModelsRequest(), timeout=SAFETY).models
    assert (info.name, info.engine, info.architecture, info.can_embed, info.embedding_dimensions) == (
        "fake", "fake", "llama", True, EMBEDDING_DIMENSIONS)


# --- inputs refused before the engine -------------------------------------------------------


@pytest.mark.parametrize("inputs, param", [
    ((), "input"),
    ((text(""),), "input"),
    ((text("ok"), text("")), "input[1]"),
    ((pb.EmbedInput(),), "input"),
    ((text("ok"), pb.EmbedInput()), "input[1]"),
    ((tokens(),), "input"),
    ((tokens(1, -1),), "input"),
    ((text("ok"), tokens(5, -2147483648)), "input[1]"),
    ((text("a" * (limits.MAX_EMBEDDING_INPUT_CHARS + 1)),), "input"),
    ((tokens(*[1] * (limits.MAX_EMBEDDING_INPUT_TOKENS + 1)),), "input"),
    (tuple(text("x") for _ in range(limits.MAX_EMBEDDING_INPUTS + 1)), "input"),
])
def test_bad_inputs_are_invalid_argument_naming_the_input(harness, inputs, param):
    error = failure(harness, *inputs)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert trailing(error)["error-param"] == param
    assert len(error.details().encode()) <= limits.MAX_DETAILS_BYTES
    assert harness.engine.embed_calls == []


def test_too_many_inputs_says_how_many(harness):
    error = failure(harness, *(text("x") for _ in range(limits.MAX_EMBEDDING_INPUTS + 5)))
    assert error.details() == limits.too_many_inputs_message("input", limits.MAX_EMBEDDING_INPUTS + 5)


def test_a_long_model_name_is_invalid_argument(harness):
    error = failure(harness, text("hi"), model="m" * (limits.MAX_MODEL_CHARS + 1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailing(error)["error-param"] == "model"


def test_invalid_utf8_is_invalid_argument(harness):
    embed_raw = harness.channel.unary_unary("/inference_service.v1.InferenceService/Embed")
    good = pb.EmbedRequest(model="fake", inputs=[text("hi")]).SerializeToString()
    assert pb.EmbedResponse.FromString(embed_raw(good, timeout=SAFETY)).embeddings
    with pytest.raises(grpc.RpcError) as info:
        embed_raw(good.replace(b"hi", b"\xff\xfe"), timeout=SAFETY)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(harness.engine.embed_calls) == 1


# --- engine errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("model, code, param", [
    ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ("no-embed", grpc.StatusCode.INVALID_ARGUMENT, "model"),
    ("context", grpc.StatusCode.OUT_OF_RANGE, "input"),
    ("missing", grpc.StatusCode.NOT_FOUND, None),
    ("unknown-model", grpc.StatusCode.NOT_FOUND, None),
    ("full", grpc.StatusCode.RESOURCE_EXHAUSTED, None),
    ("expired", grpc.StatusCode.DEADLINE_EXCEEDED, None),
    ("loading", grpc.StatusCode.UNAVAILABLE, None),
])
def test_engine_errors_map_to_status_codes(harness, model, code, param):
    error = failure(harness, text("hi"), model=model)
    assert error.code() == code
    assert trailing(error).get("error-param") == param
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert trailing(error)["retry-after"] == "1"


def test_an_unexpected_engine_error_is_internal_without_details(harness):
    error = failure(harness, text("hi"), model="crash")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"


# --- cancellation, deadlines, draining, loading --------------------------------------------------


def test_cancelling_the_call_stops_the_embedding(harness):
    future = harness.stub.Embed.future(pb.EmbedRequest(model="gated", inputs=[text("hi")]), timeout=SAFETY)
    assert harness.engine.embed_started.acquire(timeout=SAFETY)
    future.cancel()
    assert harness.engine.embed_calls[0].stopped_by_cancel.wait(SAFETY)


def test_a_passed_deadline_stops_the_embedding(harness):
    with pytest.raises(grpc.RpcError) as info:
        embed(harness, text("hi"), model="gated", timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert harness.engine.embed_calls[0].stopped_by_cancel.wait(SAFETY)


def test_a_released_gated_embedding_answers(harness):
    future = harness.stub.Embed.future(pb.EmbedRequest(model="gated", inputs=[text("hi")]), timeout=SAFETY)
    assert harness.engine.embed_started.acquire(timeout=SAFETY)
    harness.engine.release.set()
    assert tuple(future.result(timeout=SAFETY).embeddings[0].values) == fake_vector("hi")
    assert not harness.engine.embed_calls[0].stopped_by_cancel.is_set()


def test_draining_refuses_embed(harness):
    harness.running.draining.set()
    error = failure(harness, text("hi"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert harness.engine.embed_calls == []


def test_loading_engine_is_unavailable_until_ready():
    loading = server_module.LoadingEngine()
    running = create_server(loading, "127.0.0.1:0", serving=False)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = pb_grpc.InferenceServiceStub(channel)
    request = pb.EmbedRequest(model="fake", inputs=[text("x")])
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(request, timeout=SAFETY)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        loading.ready(FakeEngine())
        assert tuple(stub.Embed(request, timeout=SAFETY).embeddings[0].values) == fake_vector("x")
    finally:
        channel.close()
        running.server.stop(None)
