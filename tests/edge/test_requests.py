"""Requests in: OpenAI JSON bodies → GenerateRequest (rest_edge.requests), pure functions."""

from __future__ import annotations

import pytest

from inference_service import limits
from rest_edge import requests
from rest_edge.errors import RequestError

OPTIONAL_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                   "frequency_penalty", "presence_penalty", "seed")


def chat(**fields):
    body = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return requests.chat_request(body)


def comp(**fields):
    body = {"model": "smollm2:135m", "prompt": "Once upon"}
    body.update(fields)
    return requests.completion_request(body)


def rejected(fn, **fields) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(**fields)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


# --- body --------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"   ", b"{", b"not json", b"\xff\xfe", b'{"a": NaN}', b'{"a": Infinity}'])
def test_body_that_is_not_json_is_rejected(data):
    with pytest.raises(RequestError) as info:
        requests.parse_json_body(data)
    assert info.value.status == 400


@pytest.mark.parametrize("data", [b"[]", b'"x"', b"1", b"null", b"true"])
def test_body_that_is_not_an_object_is_rejected(data):
    with pytest.raises(RequestError) as info:
        requests.parse_json_body(data)
    assert "JSON object" in info.value.message


def test_body_object_is_parsed_with_utf8():
    assert requests.parse_json_body('{"prompt":"你好"}'.encode()) == {"prompt": "你好"}


# --- defaults ------------------------------------------------------------------------------------

def test_defaults_leave_optional_fields_unset():
    for parsed in (chat(), comp()):
        req = parsed.request
        for name in OPTIONAL_FIELDS:
            assert not req.HasField(name), name
        assert list(req.stop) == [] and dict(req.logit_bias) == {}
        assert req.logprobs is False and req.top_logprobs == 0 and req.raw is False
        assert parsed.stream is False and parsed.include_usage is False and parsed.logprobs is False


def test_null_counts_as_absent():
    parsed = chat(**{name: None for name in OPTIONAL_FIELDS}, stop=None, logit_bias=None, stream=None,
                  stream_options=None, n=None, tools=None, response_format=None, logprobs=None,
                  top_logprobs=None, max_completion_tokens=None)
    for name in OPTIONAL_FIELDS:
        assert not parsed.request.HasField(name)


def test_chat_request_fields():
    parsed = chat(messages=[{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "hello"},
                            {"role": "user", "content": "again"}])
    req = parsed.request
    assert req.model == "smollm2:135m" and req.prompt == ""
    assert [(m.role, m.content) for m in req.messages] == [
        ("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "again")]


def test_completion_request_fields():
    req = comp(raw=True).request
    assert req.prompt == "Once upon" and len(req.messages) == 0 and req.raw is True
    assert comp(prompt=["only one"]).request.prompt == "only one"
    assert comp(raw=False).request.raw is False


def test_every_sampling_field_is_set_when_sent():
    fields = dict(max_tokens=16, temperature=0.5, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1,
                  frequency_penalty=0.5, presence_penalty=-0.5, seed=42, stop=["\n", "END"],
                  logit_bias={"50256": -100, "15": 2.5})
    for parsed in (chat(**fields), comp(**fields)):
        req = parsed.request
        assert req.max_tokens == 16
        assert req.temperature == pytest.approx(0.5) and req.top_p == pytest.approx(0.9)
        assert req.top_k == 40 and req.min_p == pytest.approx(0.05)
        assert req.repetition_penalty == pytest.approx(1.1)
        assert req.frequency_penalty == pytest.approx(0.5) and req.presence_penalty == pytest.approx(-0.5)
        assert req.seed == 42
        assert list(req.stop) == ["\n", "END"]
        assert dict(req.logit_bias) == {50256: -100.0, 15: 2.5}


def test_temperature_zero_is_sent_as_zero_not_absent():
    req = chat(temperature=0).request
    assert req.HasField("temperature") and req.temperature == 0.0


def test_top_p_zero_is_sent_as_zero_not_absent():
    """top_p=0 keeps only the most likely token (limits.RANGES); the engine accepts it too."""
    for parsed in (chat(top_p=0), comp(top_p=0.0)):
        assert parsed.request.HasField("top_p") and parsed.request.top_p == 0.0


def test_repetition_penalty_cap_is_the_engines():
    """One cap for both entry points: limits.RANGES says (0, 10]."""
    assert limits.RANGES["repetition_penalty"].high == 10.0
    assert chat(repetition_penalty=10).request.repetition_penalty == 10.0
    assert chat(repetition_penalty=3).request.repetition_penalty == 3.0  # refused by the edge before
    err = rejected(chat, repetition_penalty=10.01)
    assert err.param == "repetition_penalty" and "> 0 and <= 10" in err.message
    assert rejected(chat, repetition_penalty=0).param == "repetition_penalty"


@pytest.mark.parametrize("name", list(limits.RANGES))
def test_every_range_of_the_shared_table_is_applied_at_its_bounds(name):
    bounds = limits.RANGES[name]
    assert getattr(chat(**{name: bounds.high}).request, name) == pytest.approx(bounds.high)
    for outside in (bounds.high + 0.01, bounds.low - 0.01):
        err = rejected(chat, **{name: outside})
        assert err.param == name and bounds.describe() in err.message
    if bounds.low_open:
        assert rejected(comp, **{name: bounds.low}).param == name
    else:
        assert comp(**{name: bounds.low}).request.HasField(name)


def test_logit_bias_bounds_are_the_shared_limit():
    limit = limits.LOGIT_BIAS_LIMIT
    assert dict(chat(logit_bias={"1": -limit, "2": limit}).request.logit_bias) == {1: -limit, 2: limit}
    assert rejected(chat, logit_bias={"1": limit + 0.5}).param == "logit_bias"


def test_request_id_is_an_argument():
    body = {"model": "m", "prompt": "x"}
    assert requests.completion_request(body, "cmpl-7").request.request_id == "cmpl-7"
    assert requests.chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]},
                                 "chatcmpl-8").request.request_id == "chatcmpl-8"
    assert requests.completion_request(body).request.request_id == ""


def test_ints_accepted_for_floats_and_integral_floats_for_ints():
    req = chat(temperature=1, max_tokens=8.0).request
    assert req.temperature == 1.0 and req.max_tokens == 8


def test_top_k_minus_one_means_no_limit():
    assert chat(top_k=-1).request.top_k == 0


def test_negative_seed_is_accepted():
    assert chat(seed=-5).request.seed == -5


def test_stop_as_string_or_list():
    assert list(chat(stop="###").request.stop) == ["###"]
    assert list(chat(stop=["a", "b", "c", "d"]).request.stop) == ["a", "b", "c", "d"]
    assert list(chat(stop=[]).request.stop) == []
    assert list(chat(stop="").request.stop) == []


def test_max_completion_tokens_wins_over_max_tokens_on_chat():
    assert chat(max_completion_tokens=7).request.max_tokens == 7
    assert chat(max_completion_tokens=7, max_tokens=9).request.max_tokens == 7
    assert chat(max_tokens=9).request.max_tokens == 9


def test_content_parts_are_joined():
    parsed = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "Hello, "},
                                                         {"type": "text", "text": "world"}]}])
    assert parsed.request.messages[0].content == "Hello, world"


def test_every_shared_role_and_alias_is_accepted():
    for role in (*limits.ROLES, *limits.ROLE_ALIASES):
        (message,) = chat(messages=[{"role": role, "content": "x", "tool_call_id": "call_1"}]).request.messages
        assert message.role == limits.ROLE_ALIASES.get(role, role) and message.role in limits.ROLES


def test_developer_role_is_system_and_assistant_null_content_is_empty():
    req = chat(messages=[{"role": "developer", "content": "rules"}, {"role": "user", "content": "q"},
                         {"role": "assistant", "content": None}]).request
    assert [(m.role, m.content) for m in req.messages] == [("system", "rules"), ("user", "q"), ("assistant", "")]


def test_unknown_fields_are_a_400_naming_them():
    """Issue 21: every field is in the route's table (rest_edge.fields) or refused, as OpenAI's own API."""
    parsed = chat(user="me", metadata={"a": "1"}, store=False, parallel_tool_calls=False)
    assert parsed.request.model == "smollm2:135m"
    for fn in (chat, comp):
        err = rejected(fn, whatever=[1, 2])
        assert (err.param, err.code) == ("whatever", "unknown_parameter")


def test_stream_and_include_usage():
    parsed = chat(stream=True, stream_options={"include_usage": True})
    assert parsed.stream and parsed.include_usage
    assert chat(stream=True, stream_options={}).include_usage is False
    # include_usage only matters for streams
    assert chat(stream=False, stream_options={"include_usage": True}).include_usage is False


def test_chat_logprobs():
    parsed = chat(logprobs=True, top_logprobs=3)
    assert parsed.logprobs and parsed.request.logprobs and parsed.request.top_logprobs == 3
    parsed = chat(logprobs=True)
    assert parsed.request.logprobs and parsed.request.top_logprobs == 0
    assert chat(logprobs=False).logprobs is False


def test_completion_logprobs_is_the_number_of_alternatives():
    parsed = comp(logprobs=5)
    assert parsed.logprobs and parsed.request.logprobs and parsed.request.top_logprobs == 5
    parsed = comp(logprobs=0)
    assert parsed.logprobs and parsed.request.logprobs and parsed.request.top_logprobs == 0


# --- rejections --------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, param", [
    ({"n": 17}, "n"),
    ({"n": 0}, "n"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": {"name": "f"}}, "function_call"),
    ({"suffix": "tail"}, "suffix"),
    ({"echo": True}, "echo"),
    ({"best_of": 3}, "best_of"),
    ({"stop_token_ids": [2]}, "stop_token_ids"),
    ({"include_stop_str_in_output": True}, "include_stop_str_in_output"),
    ({"use_beam_search": True}, "use_beam_search"),
    ({"guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
    ({"mirostat": 2}, "mirostat"),
    ({"dry_multiplier": 0.8}, "dry_multiplier"),
    ({"xtc_probability": 0.5}, "xtc_probability"),
    ({"samplers": ["top_k"]}, "samplers"),
    ({"chat_template": "{{ x }}"}, "chat_template"),
    ({"add_generation_prompt": False}, "add_generation_prompt"),
    ({"modalities": ["text", "audio"]}, "modalities"),
])
def test_unsupported_fields_are_rejected_by_name(fields, param):
    for fn in (chat, comp):
        err = rejected(fn, **fields)
        assert err.param == param, (fn, fields)
        assert param in err.message


# Chat parses tools and response_format (tests/edge/test_tools_and_formats.py); completions have
# neither, as OpenAI's, and refuse them by name.
@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
    ({"response_format": "text"}, "response_format"),
])
def test_completions_refuse_tools_and_formats_by_name(fields, param):
    err = rejected(comp, **fields)
    assert err.param == param and err.code == "unsupported_parameter"
    assert param in err.message and "/v1/chat/completions" in err.message


@pytest.mark.parametrize("fields", [{"tool_choice": "none"}, {"tool_choice": "auto"}])
def test_completions_accept_neutral_tool_choice(fields):
    comp(**fields)


@pytest.mark.parametrize("fields", [
    {"n": 1}, {"tools": []}, {"functions": []}, {"function_call": "none"}, {"function_call": "auto"},
    {"response_format": {"type": "text"}}, {"suffix": ""}, {"echo": False}, {"best_of": 1},
    {"stop_token_ids": []}, {"include_stop_str_in_output": False}, {"skip_special_tokens": True},
    {"add_generation_prompt": True}, {"modalities": ["text"]},
    # cannot change the answer: accepted and ignored on purpose
    {"user": "u-1"}, {"metadata": {"k": "v"}}, {"store": False}, {"service_tier": "auto"},
    {"prompt_cache_key": "k"}, {"safety_identifier": "s"},
])
def test_harmless_values_of_unsupported_fields_pass(fields):
    chat(**fields)
    comp(**fields)


@pytest.mark.parametrize("fields, param", [
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -1}, "top_p"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"presence_penalty": -2.1}, "presence_penalty"),
    ({"min_p": 2}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": 10.5}, "repetition_penalty"),
    ({"repetition_penalty": -1}, "repetition_penalty"),
    ({"top_k": -2}, "top_k"),
    ({"top_k": 1.5}, "top_k"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_tokens": 2**32}, "max_tokens"),
    ({"seed": "x"}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"stop": ["a", 1]}, "stop"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"-3": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"5": "x"}}, "logit_bias"),
    ({"logit_bias": [1]}, "logit_bias"),
    ({"stream": "yes"}, "stream"),
    ({"stream": True, "stream_options": "x"}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"model": 5}, "model"),
    ({"model": ""}, "model"),
    ({"n": "2"}, "n"),
    ({"echo": "yes"}, "echo"),
])
def test_bad_values_are_rejected_naming_the_field(fields, param):
    for fn in (chat, comp):
        err = rejected(fn, **fields)
        assert err.param == param, (fn, fields, err)


@pytest.mark.parametrize("fields, param", [
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"logprobs": 3}, "logprobs"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "function", "name": "f", "content": "42"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
     "messages[0].tool_calls[0].function"),
    ({"messages": [{"role": "assistant", "content": None, "function_call": {"name": "f"}}]},
     "messages[0].function_call"),
])
def test_chat_specific_rejections(fields, param):
    assert rejected(chat, **fields).param == param


@pytest.mark.parametrize("fields, param", [
    ({"logprobs": 21}, "logprobs"),
    ({"logprobs": True}, "logprobs"),
    ({"prompt": None}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"raw": "yes"}, "raw"),
])
def test_completion_specific_rejections(fields, param):
    assert rejected(comp, **fields).param == param


def test_missing_model_is_rejected():
    with pytest.raises(RequestError) as info:
        requests.chat_request({"messages": [{"role": "user", "content": "x"}]})
    assert info.value.param == "model" and info.value.code == "missing_required_parameter"
    with pytest.raises(RequestError) as info:
        requests.completion_request({"prompt": "x"})
    assert info.value.param == "model"


def test_ignore_eos_and_min_tokens_reach_the_request():
    for fn in (chat, comp):
        plain = fn()
        assert (plain.request.ignore_eos, plain.request.min_tokens) == (False, 0)
        parsed = fn(ignore_eos=True, min_tokens=16, max_tokens=64)
        assert (parsed.request.ignore_eos, parsed.request.min_tokens) == (True, 16)
        assert rejected(fn, ignore_eos="yes").param == "ignore_eos"
        assert rejected(fn, min_tokens=-1).param == "min_tokens"
