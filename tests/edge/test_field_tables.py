"""The routes' field tables (rest_edge.field_tables): llama.cpp's and vLLM's fields become the
GenerateRequest they ask for, OpenAI's inert fields are type-checked, everything else is a 400
naming it. Pure parsing; the real model's answers are in tests/e2e/test_other_servers_fields.py."""

from __future__ import annotations

import pytest

from inference_service.v1 import inference_pb2 as pb
from rest_edge import field_tables as fields
from rest_edge.errors import RequestError
from rest_edge.requests import chat_request, completion_request

MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f"}}]


def chat(**body):
    return chat_request({"model": "m", "messages": MESSAGES, **body})


def comp(**body):
    return completion_request({"model": "m", "prompt": "hi", **body})


def refused(fn, **body) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(**body)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize("fn", [chat, comp], ids=["chat", "completions"])
@pytest.mark.parametrize("body, kind, source, param", [
    ({"grammar": 'root ::= "a"{5,5}'}, "gbnf", 'root ::= "a"{5,5}', "grammar"),
    ({"json_schema": {"type": "integer"}}, "json_schema", '{"type":"integer"}', "json_schema"),
    ({"structured_outputs": {"regex": "[0-9]+"}}, "regex", "[0-9]+", "structured_outputs.regex"),
    ({"structured_outputs": {"choice": ["yes", "no \"way\""]}}, "lark", 'start: "yes" | "no \\"way\\""',
     "structured_outputs.choice"),
    ({"structured_outputs": {"json": '{"type": "boolean"}'}}, "json_schema", '{"type":"boolean"}',
     "structured_outputs.json"),
    ({"structured_outputs": {"grammar": 'root ::= "x"'}}, "gbnf", 'root ::= "x"', "structured_outputs.grammar"),
    ({"structured_outputs": {"json_object": True}}, "json_object", True, "structured_outputs.json_object"),
    ({"guided_json": {"type": "object"}}, "json_schema", '{"type":"object"}', "guided_json"),
    ({"guided_regex": "a|b"}, "regex", "a|b", "guided_regex"),
    ({"guided_choice": ["A", "B"]}, "lark", 'start: "A" | "B"', "guided_choice"),
    ({"guided_grammar": 'root ::= "y"'}, "gbnf", 'root ::= "y"', "guided_grammar"),
])
def test_constraints_of_llamacpp_and_vllm(fn, body, kind, source, param):
    constraint = fn(**body).request.constraint
    assert constraint.WhichOneof("kind") == kind
    assert getattr(constraint, kind) == source
    assert constraint.param == param


def test_llamacpp_json_object_with_schema_is_a_schema():
    constraint = chat(response_format={"type": "json_object", "schema": {"type": "object"}}).request.constraint
    assert (constraint.json_schema, constraint.param) == ('{"type":"object"}', "response_format.schema")
    assert chat(response_format={"type": "json_object"}).request.constraint.json_object
    assert refused(chat, response_format={"type": "json_object", "schema": 123}).param == "response_format.schema"


@pytest.mark.parametrize("body, param", [
    ({"grammar": 5}, "grammar"),
    ({"json_schema": [1]}, "json_schema"),
    ({"structured_outputs": "json"}, "structured_outputs"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"choice": ["a", ""]}}, "structured_outputs.choice[1]"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs.choice"),
    ({"structured_outputs": {"nonsense": 1}}, "structured_outputs.nonsense"),
    ({"structured_outputs": {"whitespace_pattern": " "}}, "structured_outputs.whitespace_pattern"),
    ({"grammar": 'root ::= "a"', "json_schema": {}}, "json_schema"),
    ({"response_format": {"type": "json_object"}, "grammar": 'root ::= "a"'}, "grammar"),
    ({"tools": TOOLS, "grammar": 'root ::= "a"'}, "grammar"),
    ({"guided_json": "{not json"}, "guided_json"),
])
def test_bad_or_clashing_constraints_are_400s_naming_the_field(body, param):
    assert refused(chat, **body).param == param


def test_a_constraint_with_tools_off_is_fine():
    assert chat(tools=TOOLS, tool_choice="none", grammar='root ::= "a"').request.constraint.gbnf == 'root ::= "a"'


def test_n_predict_is_max_tokens():
    assert comp(n_predict=3).request.max_tokens == 3
    assert not comp(n_predict=-1).request.HasField("max_tokens")
    assert comp(n_predict=3, max_tokens=3).request.max_tokens == 3
    assert refused(comp, n_predict=3, max_tokens=4).param == "n_predict"
    assert refused(comp, n_predict=0).param == "n_predict"
    assert refused(chat, n_predict="3").param == "n_predict"


def test_repeat_penalty_is_llamacpps_windowed_repetition_penalty():
    req = chat(repeat_penalty=1.3).request
    assert req.repetition_penalty == pytest.approx(1.3) and req.penalty_last_n == fields.LLAMACPP_PENALTY_LAST_N
    req = chat(repeat_penalty=1.3, penalty_last_n=-1).request
    assert req.penalty_last_n == -1
    req = chat(repetition_penalty=1.3).request  # vLLM's: every token
    assert not req.HasField("penalty_last_n")
    assert refused(chat, repeat_penalty=0).param == "repeat_penalty"
    assert refused(chat, repeat_penalty=1.2, repetition_penalty=1.3).param == "repeat_penalty"
    assert refused(chat, penalty_last_n=-2).param == "penalty_last_n"


def test_typical_p_and_n_probs():
    assert chat(typical_p=0.5).request.typical_p == pytest.approx(0.5)
    assert refused(chat, typical_p=0).param == "typical_p"
    assert refused(chat, typical_p=1.5).param == "typical_p"
    parsed = chat(n_probs=3)
    assert parsed.logprobs and parsed.request.logprobs and parsed.request.top_logprobs == 3
    parsed = comp(n_probs=2)
    assert parsed.logprobs and parsed.request.top_logprobs == 2
    assert not chat(n_probs=0).logprobs
    assert refused(chat, n_probs=21).param == "n_probs"
    assert refused(chat, n_probs=3, logprobs=True, top_logprobs=2).param == "n_probs"


def test_cache_prompt_is_type_checked():
    chat(cache_prompt=True)
    chat(cache_prompt=False)
    assert refused(chat, cache_prompt="yes").param == "cache_prompt"


LLAMACPP_WEB_UI_DEFAULTS = {
    "cache_prompt": True, "mirostat": 0, "mirostat_tau": 5, "mirostat_eta": 0.1, "dynatemp_range": 0,
    "dynatemp_exponent": 1, "xtc_probability": 0, "xtc_threshold": 0.1, "dry_multiplier": 0, "dry_base": 1.75,
    "dry_allowed_length": 2, "dry_penalty_last_n": -1, "top_n_sigma": -1, "typical_p": 1, "repeat_penalty": 1,
    "penalty_last_n": 64, "top_k": 40, "min_p": 0.05, "n_probs": 0,
}


def test_llamacpps_defaults_pass():
    chat(**LLAMACPP_WEB_UI_DEFAULTS)
    comp(**LLAMACPP_WEB_UI_DEFAULTS)


@pytest.mark.parametrize("body, param", [
    ({"mirostat": 2}, "mirostat"), ({"mirostat": 0, "mirostat_tau": 3}, None),
    ({"dry_multiplier": 0.8, "dry_base": 2}, "dry_multiplier"), ({"xtc_probability": 0.1}, "xtc_probability"),
    ({"top_n_sigma": 1.0}, "top_n_sigma"), ({"dynatemp_range": 0.5}, "dynatemp_range"),
    ({"samplers": "edkypmxt"}, "samplers"), ({"n_keep": 10}, "n_keep"), ({"lora": [{"id": 0}]}, "lora"),
    ({"id_slot": 1}, "id_slot"), ({"skip_special_tokens": False}, "skip_special_tokens"),
    ({"include_stop_str_in_output": True}, "include_stop_str_in_output"),
])
def test_samplers_we_do_not_have_are_refused_by_name(body, param):
    if param is None:
        chat(**body)
    else:
        assert refused(chat, **body).param == param


@pytest.mark.parametrize("body, param", [
    ({"safety_identifier": [[]]}, "safety_identifier"), ({"safety_identifier": "x" * 65}, "safety_identifier"),
    ({"metadata": 5}, "metadata"), ({"metadata": {"k": 1}}, "metadata.k"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"), ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"verbosity": "loud"}, "verbosity"), ({"user": {"a": 1}}, "user"), ({"store": "yes"}, "store"),
    ({"service_tier": "gold"}, "service_tier"), ({"prompt_cache_key": 1}, "prompt_cache_key"),
    ({"prompt_cache_retention": "forever"}, "prompt_cache_retention"),
    ({"stream_options": {"include_obfuscation": "no"}}, "stream_options.include_obfuscation"),
    ({"reasoning_effort": "loud"}, "reasoning_effort"),
])
def test_ill_typed_openai_fields_are_400s_naming_them(body, param):
    for fn in (chat, comp):
        assert refused(fn, **body).param == param


def test_well_typed_openai_fields_pass():
    body = dict(safety_identifier="hash-1", metadata={"team": "a", "run": "7"}, verbosity="low", user="u-1",
                store=True, service_tier="flex", prompt_cache_key="k", prompt_cache_retention="24h",
                stream_options={"include_obfuscation": False})
    chat(**body)
    comp(**body)


def test_every_table_field_is_read_somewhere():
    """The README's table and the parsers agree: no field of a table is an unknown field."""
    for route, table in fields.TABLES.items():
        for name in table:
            fields.check_known({name: None}, table)
    assert "grammar" in fields.markdown() and "| `n_predict` | llama.cpp |" in fields.markdown()


def test_proto_constraint_param_round_trips():
    from inference_service.convert import constraint_from_proto

    constraint = constraint_from_proto(pb.Constraint(gbnf='root ::= "a"', param="grammar"))
    assert (constraint.kind, constraint.source, constraint.param) == ("gbnf", 'root ::= "a"', "grammar")
    assert constraint_from_proto(pb.Constraint(regex="a")).param == "response_format"


def test_the_readme_shows_the_tables_as_they_are():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs" / "apis.md").read_text(encoding="utf-8")
    assert fields.markdown() in readme, "docs/apis.md's field tables drifted: paste `python -m rest_edge.field_tables`"
