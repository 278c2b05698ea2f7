"""validate_request: every refused field is named in ``param`` and in the message."""

from __future__ import annotations

import math

import pytest

from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams
from inference_service.engine.validation import validate_request
from inference_service.errors import InvalidRequest

VOCAB = 1000
HI = (ChatMessage("user", "hi"),)


def chat(**fields) -> GenerationRequest:
    return GenerationRequest(model="m", messages=HI, **fields)


def sampled(**params) -> GenerationRequest:
    return chat(sampling=SamplingParams(**params))


BAD = [
    ("both prompt and messages", GenerationRequest(model="m", prompt="x", messages=HI), "prompt"),
    ("neither prompt nor messages", GenerationRequest(model="m"), "messages"),
    ("max_tokens 0", chat(max_tokens=0), "max_tokens"),
    ("max_tokens negative", chat(max_tokens=-5), "max_tokens"),
    ("five stop strings", chat(stop=("a", "b", "c", "d", "e")), "stop"),
    ("temperature below 0", sampled(temperature=-0.01), "temperature"),
    ("temperature above 2", sampled(temperature=2.01), "temperature"),
    ("temperature nan", sampled(temperature=math.nan), "temperature"),
    ("temperature inf", sampled(temperature=math.inf), "temperature"),
    ("top_p 0 (exclusive)", sampled(top_p=0.0), "top_p"),
    ("top_p above 1", sampled(top_p=1.5), "top_p"),
    ("min_p negative", sampled(min_p=-0.1), "min_p"),
    ("min_p above 1", sampled(min_p=1.1), "min_p"),
    ("repetition_penalty 0 (exclusive)", sampled(repetition_penalty=0.0), "repetition_penalty"),
    ("repetition_penalty above 10", sampled(repetition_penalty=10.5), "repetition_penalty"),
    ("frequency_penalty above 2", sampled(frequency_penalty=2.5), "frequency_penalty"),
    ("frequency_penalty below -2", sampled(frequency_penalty=-2.5), "frequency_penalty"),
    ("presence_penalty below -2", sampled(presence_penalty=-3.0), "presence_penalty"),
    ("presence_penalty above 2", sampled(presence_penalty=2.01), "presence_penalty"),
    ("top_k negative", sampled(top_k=-1), "top_k"),
    ("top_logprobs above 20", sampled(top_logprobs=21), "top_logprobs"),
    ("top_logprobs negative", sampled(top_logprobs=-1), "top_logprobs"),
    ("logit_bias token past the vocabulary", sampled(logit_bias={VOCAB: 1.0}), "logit_bias"),
    ("logit_bias negative token", sampled(logit_bias={-1: 1.0}), "logit_bias"),
    ("logit_bias value above 100", sampled(logit_bias={5: 100.5}), "logit_bias"),
    ("logit_bias value below -100", sampled(logit_bias={5: -101.0}), "logit_bias"),
    ("logit_bias value nan", sampled(logit_bias={5: math.nan}), "logit_bias"),
]


@pytest.mark.parametrize("request_, param", [(r, p) for _, r, p in BAD], ids=[name for name, _, _ in BAD])
def test_refused_field_is_named(request_, param):
    with pytest.raises(InvalidRequest) as info:
        validate_request(request_, VOCAB)
    assert info.value.param == param
    assert param in str(info.value)


GOOD = [
    ("prompt only", GenerationRequest(model="m", prompt="x")),
    ("empty prompt string is a prompt", GenerationRequest(model="m", prompt="")),
    ("messages only", chat()),
    ("max_tokens 1", chat(max_tokens=1)),
    ("four stop strings", chat(stop=("a", "b", "c", "d"))),
    ("greedy", sampled(temperature=0.0)),
    ("temperature 2", sampled(temperature=2.0)),
    ("top_p 1", sampled(top_p=1.0)),
    ("min_p 0 and 1", sampled(min_p=1.0)),
    ("repetition_penalty 10", sampled(repetition_penalty=10.0)),
    ("penalties at the bounds", sampled(frequency_penalty=-2.0, presence_penalty=2.0)),
    ("top_k 0 means no limit", sampled(top_k=0)),
    ("top_logprobs 20", sampled(top_logprobs=20, logprobs=True)),
    ("logit_bias bounds", sampled(logit_bias={0: -100.0, VOCAB - 1: 100.0})),
]


@pytest.mark.parametrize("request_", [r for _, r in GOOD], ids=[name for name, _ in GOOD])
def test_valid_requests_pass(request_):
    validate_request(request_, VOCAB)
