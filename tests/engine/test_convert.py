"""convert.py: protobuf ↔ engine types."""

from __future__ import annotations

import pytest

from inference_service import convert
from inference_service.engine.types import ModelDescription
from inference_service.engine.types import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from inference_service.v1 import inference_pb2 as pb


def test_absent_optional_fields_take_the_defaults():
    request = convert.request_from_proto(pb.GenerateRequest(model="m", prompt="hi"))
    assert request == GenerationRequest(model="m", prompt="hi", sampling=SamplingParams())
    assert request.max_tokens is None
    assert request.sampling.temperature == 1.0
    assert request.sampling.top_p == 1.0
    assert request.sampling.seed is None
    assert request.stop == () and request.messages == ()


def test_zero_values_that_are_set_are_preserved():
    message = pb.GenerateRequest(
        model="m", prompt="hi", temperature=0.0, top_k=0, min_p=0.0, frequency_penalty=0.0, seed=0, max_tokens=0
    )
    request = convert.request_from_proto(message)
    assert request.sampling.temperature == 0.0  # greedy, not the 1.0 default
    assert request.sampling.seed == 0  # a real seed, not "no seed"
    assert request.max_tokens == 0  # left for validation to refuse, not silently "unlimited"


def test_every_field_is_carried():
    message = pb.GenerateRequest(
        model="smollm2:135m",
        messages=[pb.ChatMessage(role="system", content="S"), pb.ChatMessage(role="user", content="U")],
        raw=False,
        max_tokens=7,
        stop=["\n\n", "END"],
        temperature=0.5,
        top_p=0.75,
        top_k=40,
        min_p=0.125,
        repetition_penalty=1.25,
        frequency_penalty=-0.5,
        presence_penalty=1.5,
        seed=-12345678901,
        logprobs=True,
        top_logprobs=3,
        logit_bias={2: -100.0, 17: 2.5},
        request_id="req-1",
        ignore_eos=True,
        min_tokens=3,
    )
    assert convert.request_from_proto(message) == GenerationRequest(
        model="smollm2:135m",
        prompt=None,
        messages=(ChatMessage("system", "S"), ChatMessage("user", "U")),
        raw=False,
        max_tokens=7,
        stop=("\n\n", "END"),
        sampling=SamplingParams(
            temperature=0.5,
            top_p=0.75,
            top_k=40,
            min_p=0.125,
            repetition_penalty=1.25,
            frequency_penalty=-0.5,
            presence_penalty=1.5,
            seed=-12345678901,
            logit_bias={2: -100.0, 17: 2.5},
            logprobs=True,
            top_logprobs=3,
        ),
        request_id="req-1",
        ignore_eos=True,
        min_tokens=3,
    )


def test_raw_prompt():
    request = convert.request_from_proto(pb.GenerateRequest(model="m", prompt="Once upon", raw=True))
    assert (request.prompt, request.raw, request.messages) == ("Once upon", True, ())


def test_top_logprobs_implies_logprobs():
    request = convert.request_from_proto(pb.GenerateRequest(model="m", prompt="x", top_logprobs=2))
    assert request.sampling.logprobs is True and request.sampling.top_logprobs == 2
    plain = convert.request_from_proto(pb.GenerateRequest(model="m", prompt="x"))
    assert plain.sampling.logprobs is False


def test_empty_stop_strings_are_dropped():
    request = convert.request_from_proto(pb.GenerateRequest(model="m", prompt="x", stop=["", "END", ""]))
    assert request.stop == ("END",)


def test_messages_without_prompt_leave_prompt_unset():
    request = convert.request_from_proto(pb.GenerateRequest(model="m", messages=[pb.ChatMessage(role="user", content="x")]))
    assert request.prompt is None


def test_prompt_and_messages_both_reach_validation():
    request = convert.request_from_proto(
        pb.GenerateRequest(model="m", prompt="p", messages=[pb.ChatMessage(role="user", content="x")])
    )
    assert request.prompt == "p" and len(request.messages) == 1


# --- responses ---------------------------------------------------------------------------


def test_middle_chunk():
    response = convert.chunk_to_proto(GenerationChunk(text="你好", token_ids=(18645, 250, 48392, 138)), "m")
    assert response == pb.GenerateResponse(text="你好", token_ids=[18645, 250, 48392, 138], model="m")
    assert response.finish_reason == pb.FINISH_REASON_UNSPECIFIED
    assert not response.HasField("usage")
    assert list(response.logprobs) == []


@pytest.mark.parametrize(
    "reason, expected", [("stop", pb.FINISH_REASON_STOP), ("length", pb.FINISH_REASON_LENGTH), (None, pb.FINISH_REASON_UNSPECIFIED)]
)
def test_finish_reasons(reason, expected):
    assert convert.chunk_to_proto(GenerationChunk(text="", finish_reason=reason), "m").finish_reason == expected


def test_last_chunk_carries_usage_with_cached_tokens():
    chunk = GenerationChunk(
        text="!", token_ids=(0,), finish_reason="length",
        usage=Usage(prompt_tokens=31, completion_tokens=5, cached_prompt_tokens=30),
    )
    response = convert.chunk_to_proto(chunk, "smollm2:135m")
    assert response.HasField("usage")
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.cached_prompt_tokens) == (31, 5, 30)
    assert response.model == "smollm2:135m"
    assert response.finish_reason == pb.FINISH_REASON_LENGTH


def test_usage_with_zero_counts_is_still_present():
    chunk = GenerationChunk(text="", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=0))
    response = convert.chunk_to_proto(chunk, "m")
    assert response.HasField("usage")
    assert (response.usage.completion_tokens, response.usage.cached_prompt_tokens) == (0, 0)


def test_logprobs():
    lp = TokenLogprob(
        token_id=5, token="Hi", logprob=-0.25, token_bytes=b"Hi",
        top_logprobs=(TopLogprob(5, "Hi", -0.25, b"Hi"), TopLogprob(250, "\ufffd", -2.5, b"\xa0")),
    )
    response = convert.chunk_to_proto(GenerationChunk(text="Hi", token_ids=(5,), logprobs=(lp,)), "m")
    assert response.logprobs[0] == pb.TokenLogprob(
        token_id=5, token="Hi", logprob=-0.25, token_bytes=b"Hi",
        top_logprobs=[
            pb.TopLogprob(token_id=5, token="Hi", logprob=-0.25, token_bytes=b"Hi"),
            pb.TopLogprob(token_id=250, token="\ufffd", logprob=-2.5, token_bytes=b"\xa0"),
        ],
    )


def test_model_description():
    info = convert.model_to_proto(
        ModelDescription(name="smollm2:135m", created=1700000000, owned_by="HuggingFaceTB", context_length=4096, has_chat_template=True)
    )
    assert info == pb.ModelInfo(
        name="smollm2:135m", created=1700000000, owned_by="HuggingFaceTB", context_length=4096, has_chat_template=True
    )


def test_round_trip_through_the_wire():
    """What the servicer sends survives serialization byte for byte."""
    chunk = GenerationChunk(text="😀", token_ids=(10813, 242, 218), finish_reason="stop",
                            usage=Usage(prompt_tokens=10, completion_tokens=3, cached_prompt_tokens=9))
    wire = convert.chunk_to_proto(chunk, "m").SerializeToString()
    back = pb.GenerateResponse.FromString(wire)
    assert (back.text, list(back.token_ids), back.usage.cached_prompt_tokens) == ("😀", [10813, 242, 218], 9)
