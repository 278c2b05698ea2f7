"""validate_request: every refused field is named in ``param`` and in the message; strings are
bounded (``inference_service.limits``) and bad values quoted by a short prefix only."""

from __future__ import annotations

import math

import pytest

from inference_service import limits
from inference_service.engine.chat_template import ChatTemplate
from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams
from inference_service.engine.validation import check_model_name, unknown_model, validate_request
from inference_service.errors import InvalidRequest, ModelNotFound

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
    ("top_p negative", sampled(top_p=-0.01), "top_p"),
    ("top_p above 1", sampled(top_p=1.5), "top_p"),
    ("top_p nan", sampled(top_p=math.nan), "top_p"),
    ("min_p negative", sampled(min_p=-0.1), "min_p"),
    ("min_p above 1", sampled(min_p=1.1), "min_p"),
    ("repetition_penalty 0 (exclusive)", sampled(repetition_penalty=0.0), "repetition_penalty"),
    ("repetition_penalty negative", sampled(repetition_penalty=-1.0), "repetition_penalty"),
    ("repetition_penalty above 10", sampled(repetition_penalty=10.01), "repetition_penalty"),
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
    ("unknown role", GenerationRequest(model="m", messages=(*HI, ChatMessage("function", "42"))), "messages[1].role"),
    ("the edge's alias is not a gRPC role", GenerationRequest(model="m", messages=(ChatMessage("developer", "x"),)),
     "messages[0].role"),
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
    ("top_p 0 keeps the most likely token", sampled(top_p=0.0)),
    ("min_p 0 and 1", sampled(min_p=1.0)),
    ("repetition_penalty 10 (the cap)", sampled(repetition_penalty=10.0)),
    ("repetition_penalty just above 0", sampled(repetition_penalty=1e-3)),
    ("every role", GenerationRequest(model="m", messages=tuple(ChatMessage(r, "x") for r in limits.ROLES))),
    ("penalties at the bounds", sampled(frequency_penalty=-2.0, presence_penalty=2.0)),
    ("top_k 0 means no limit", sampled(top_k=0)),
    ("top_logprobs 20", sampled(top_logprobs=20, logprobs=True)),
    ("logit_bias bounds", sampled(logit_bias={0: -100.0, VOCAB - 1: 100.0})),
]


@pytest.mark.parametrize("request_", [r for _, r in GOOD], ids=[name for name, _ in GOOD])
def test_valid_requests_pass(request_):
    validate_request(request_, VOCAB)


@pytest.mark.parametrize("name", list(limits.RANGES))
def test_every_range_of_the_shared_table_is_applied_at_its_bounds(name):
    bounds = limits.RANGES[name]
    validate_request(sampled(**{name: bounds.high}), VOCAB)
    with pytest.raises(InvalidRequest) as info:
        validate_request(sampled(**{name: bounds.high + 0.01}), VOCAB)
    assert info.value.param == name and bounds.describe() in str(info.value)
    with pytest.raises(InvalidRequest):
        validate_request(sampled(**{name: bounds.low - 0.01}), VOCAB)
    if bounds.low_open:
        with pytest.raises(InvalidRequest):
            validate_request(sampled(**{name: bounds.low}), VOCAB)
    else:
        validate_request(sampled(**{name: bounds.low}), VOCAB)


# --- bounded and valid strings (issue 7) ---------------------------------------------------------

LONG = 9000
MAX_DETAILS = 300  # no message below needs more: a bad value is quoted by a prefix only

STRINGS_BAD = [
    ("model too long", GenerationRequest(model="m" * (limits.MAX_MODEL_CHARS + 1), prompt="x"), "model"),
    ("model 9000 characters", GenerationRequest(model="m" * LONG, prompt="x"), "model"),
    ("model with a lone surrogate", GenerationRequest(model="m\ud800", prompt="x"), "model"),
    ("role too long", GenerationRequest(model="m", messages=(ChatMessage("r" * LONG, "hi"),)), "messages[0].role"),
    ("role just too long",
     GenerationRequest(model="m", messages=(*HI, ChatMessage("u" * (limits.MAX_ROLE_CHARS + 1), "hi"))),
     "messages[1].role"),
    ("role with a lone surrogate", GenerationRequest(model="m", messages=(ChatMessage("us\udfffer", "hi"),)),
     "messages[0].role"),
    ("content with a lone surrogate", GenerationRequest(model="m", messages=(*HI, ChatMessage("user", "a\udc00"))),
     "messages[1].content"),
    ("prompt with a lone surrogate", GenerationRequest(model="m", prompt="\ud800"), "prompt"),
    ("stop too long", chat(stop=("s" * (limits.MAX_STOP_CHARS + 1),)), "stop"),
    ("stop 9000 characters", chat(stop=("ok", "s" * LONG)), "stop"),
    ("stop with a lone surrogate", chat(stop=("\ud800",)), "stop"),
]


@pytest.mark.parametrize("request_, param", [(r, p) for _, r, p in STRINGS_BAD], ids=[n for n, _, _ in STRINGS_BAD])
def test_long_or_invalid_strings_are_refused_briefly(request_, param):
    with pytest.raises(InvalidRequest) as info:
        validate_request(request_, VOCAB)
    assert info.value.param == param
    message = str(info.value)
    assert param in message
    assert len(message) <= MAX_DETAILS, message
    message.encode("utf-8")  # the message itself is valid text: it becomes gRPC details


def test_strings_at_their_limits_pass():
    validate_request(
        GenerationRequest(model="m" * limits.MAX_MODEL_CHARS,
                          messages=(ChatMessage("assistant", "😀 \u202e\x00\ue000"),),
                          stop=("s" * limits.MAX_STOP_CHARS, "x")),
        VOCAB,
    )
    validate_request(GenerationRequest(model="m", prompt="😀"), VOCAB)


def test_unknown_model_quotes_a_short_prefix():
    error = unknown_model("nope:" + "x" * 200, ["fake", "other"])
    assert isinstance(error, ModelNotFound)
    message = str(error)
    assert message.startswith("model 'nope:xxx") and message.endswith("… not found; served: fake, other")
    assert len(message) < 120
    assert str(unknown_model("nope", [])) == "model 'nope' not found; served: none"


@pytest.mark.parametrize("name", ["m" * LONG, "m" * (limits.MAX_MODEL_CHARS + 1), "bad\ud800"])
def test_a_model_name_no_model_could_have_is_invalid_not_missing(name):
    error = unknown_model(name, ["fake"])
    assert isinstance(error, InvalidRequest) and error.param == "model"
    assert len(str(error)) <= MAX_DETAILS
    with pytest.raises(InvalidRequest):
        check_model_name(name)


def test_engine_model_lookup_refuses_long_names_and_quotes_unknown_ones():
    from inference_service.engine.engine import Engine

    engine = Engine([])
    with pytest.raises(InvalidRequest) as info:
        engine.model("m" * LONG)
    assert info.value.param == "model" and len(str(info.value)) <= MAX_DETAILS
    with pytest.raises(ModelNotFound) as missing:
        engine.model("z" * limits.MAX_MODEL_CHARS)
    assert len(str(missing.value)) < 120


def test_chat_template_quotes_an_unknown_role_briefly():
    template = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(InvalidRequest) as info:
        template.render([ChatMessage("tool" * 2000, "hi")])
    assert info.value.param == "messages[0].role"
    assert len(str(info.value)) < 150 and "…" in str(info.value)


def test_chat_template_refusal_is_quoted_briefly():
    template = ChatTemplate("{{ raise_exception('bad: ' + messages[0].content) }}")
    with pytest.raises(InvalidRequest) as info:
        template.render([ChatMessage("user", "c" * LONG)])
    assert info.value.param == "messages"
    assert len(str(info.value)) < 300
