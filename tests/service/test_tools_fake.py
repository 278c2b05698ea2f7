"""Structured outputs and tool calling over the real gRPC server, fake engine: the new fields
travel to the engine intact, tool calls and finish reason "tool_calls" come back, and the
shared bounds (``inference_service.limits``) are INVALID_ARGUMENT naming the field the OpenAI
way in ``error-param``.

Waits use generous safety timeouts only; nothing is measured against the clock.
"""

from __future__ import annotations

import json

import grpc
import pytest

from inference_service import limits
from inference_service.engine.types import ChatMessage, Constraint, Tool, ToolCall
from inference_service.v1 import inference_pb2 as pb
from tests.helpers import trailing
from tests.service.fake_engine import TOOL_ARGUMENTS, echo_of
from tests.service.test_server_fake import SAFETY, harness  # noqa: F401  (the fixture)

SCHEMA = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
USER = pb.ChatMessage(role="user", content="Weather in Paris?")
FUNCTION = pb.ToolChoice.MODE_FUNCTION


def weather(name: str = "get_weather", **fields) -> pb.Tool:
    fields.setdefault("parameters_json", SCHEMA)
    fields.setdefault("description", "The weather of a city")
    return pb.Tool(name=name, **fields)


def generate(harness, model: str = "tools", **fields) -> list[pb.GenerateResponse]:
    fields.setdefault("messages", [USER])
    return list(harness.stub.Generate(pb.GenerateRequest(model=model, **fields), timeout=SAFETY))


def failure(harness, model: str = "tools", **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        generate(harness, model, **fields)
    return info.value


# --- the fields reach the engine --------------------------------------------------------------


def test_every_new_field_reaches_the_engine(harness):
    history = [
        USER,
        pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id="call_a", name="get_weather",
                                                                 arguments_json='{"city": "Paris"}')]),
        pb.ChatMessage(role="tool", content="21 C", tool_call_id="call_a", name="get_weather"),
    ]
    generate(harness, "slow", max_tokens=1, messages=history, constraint=pb.Constraint(json_schema=SCHEMA),
             tools=[weather(), pb.Tool(name="now")],
             tool_choice=pb.ToolChoice(mode=FUNCTION, function_name="now"), parallel_tool_calls=False)
    request = harness.engine.calls[-1].request
    assert request.constraint == Constraint("json_schema", SCHEMA)
    assert request.tools == (Tool("get_weather", "The weather of a city", SCHEMA), Tool("now"))
    assert (request.tool_choice, request.tool_choice_name, request.parallel_tool_calls) == ("function", "now", False)
    assert request.messages == (
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_a", "get_weather", '{"city": "Paris"}'),)),
        ChatMessage("tool", "21 C", tool_call_id="call_a", name="get_weather"),
    )


def test_absent_fields_are_the_defaults(harness):
    (response,) = generate(harness, "echo-tools")
    assert json.loads(response.text) == {
        "constraint": None, "tools": [], "tool_choice": "auto", "tool_choice_name": "",
        "parallel_tool_calls": True, "messages": [{"role": "user", "content": "Weather in Paris?", "tool_calls": [],
                                                   "tool_call_id": "", "name": ""}],
    }


@pytest.mark.parametrize("constraint, expected", [
    (pb.Constraint(json_object=True), {"kind": "json_object", "source": "", "param": "response_format"}),
    (pb.Constraint(regex="[0-9]+"), {"kind": "regex", "source": "[0-9]+", "param": "response_format"}),
    (pb.Constraint(lark='start: "a"'), {"kind": "lark", "source": 'start: "a"', "param": "response_format"}),
    (pb.Constraint(gbnf='root ::= "a"', param="grammar"), {"kind": "gbnf", "source": 'root ::= "a"',
                                                            "param": "grammar"}),
])
def test_each_constraint_kind_reaches_the_engine(harness, constraint, expected):
    (response,) = generate(harness, "echo-tools", constraint=constraint)
    assert json.loads(response.text)["constraint"] == expected


# --- tool calls come back ---------------------------------------------------------------------


def test_tool_calls_and_their_finish_reason_come_back(harness):
    responses = generate(harness, tools=[weather(), weather("get_time")])
    assert [[(c.id, c.name, c.arguments_json) for c in r.tool_calls] for r in responses] == [
        [("call_0", "get_weather", TOOL_ARGUMENTS)],
        [("call_1", "get_time", TOOL_ARGUMENTS)],
    ]
    assert [r.text for r in responses] == ["", ""]
    assert [r.finish_reason for r in responses] == [pb.FINISH_REASON_UNSPECIFIED, pb.FINISH_REASON_TOOL_CALLS]
    assert responses[-1].usage.prompt_tokens == 4


def test_a_forced_function_is_the_one_called(harness):
    responses = generate(harness, tools=[weather(), weather("get_time")],
                         tool_choice=pb.ToolChoice(mode=FUNCTION, function_name="get_time"))
    assert [c.name for r in responses for c in r.tool_calls] == ["get_time"]


def test_tool_choice_none_answers_in_text(harness):
    responses = generate(harness, tools=[weather()], tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_NONE))
    assert "".join(r.text for r in responses) == "no call"
    assert responses[-1].finish_reason == pb.FINISH_REASON_STOP
    assert not any(r.tool_calls for r in responses)


# --- bounds: INVALID_ARGUMENT naming the field ----------------------------------------------------


def tools(count: int) -> list[pb.Tool]:
    return [pb.Tool(name=f"f{i}") for i in range(count)]


def calling(*calls: pb.ToolCall) -> list[pb.ChatMessage]:
    return [USER, pb.ChatMessage(role="assistant", tool_calls=calls)]


GOOD_CALL = dict(id="call_1", name="f", arguments_json="{}")
TOO_LONG = limits.MAX_SCHEMA_CHARS + 1

BAD = [  # (id, fields of the request, error-param)
    ("too many tools", dict(tools=tools(limits.MAX_TOOLS + 1)), "tools"),
    ("empty tool name", dict(tools=[weather(""), weather()]), "tools[0].function.name"),
    ("long tool name", dict(tools=[weather(), weather("f" * 65)]), "tools[1].function.name"),
    ("tool name with a space", dict(tools=[weather("a"), weather("b"), weather("get weather")]), "tools[2].function.name"),
    ("tool name with a dot", dict(tools=[weather("a.b")]), "tools[0].function.name"),
    ("non-ASCII tool name", dict(tools=[weather("météo")]), "tools[0].function.name"),
    ("long description", dict(tools=[weather(description="d" * (limits.MAX_DESCRIPTION_CHARS + 1))]),
     "tools[0].function.description"),
    ("long parameters", dict(tools=[weather(parameters_json=" " * TOO_LONG)]), "tools[0].function.parameters"),
    ("long json schema", dict(constraint=pb.Constraint(json_schema=" " * TOO_LONG)), "response_format"),
    ("long regex", dict(constraint=pb.Constraint(regex="a" * TOO_LONG)), "response_format"),
    ("long lark", dict(constraint=pb.Constraint(lark="a" * TOO_LONG)), "response_format"),
    ("function without a name", dict(tools=[weather()], tool_choice=pb.ToolChoice(mode=FUNCTION)), "tool_choice"),
    ("unknown tool choice mode", dict(tools=[weather()], tool_choice=pb.ToolChoice(mode=7)), "tool_choice"),
    ("call without an id", dict(messages=calling(pb.ToolCall(name="f", arguments_json="{}"))),
     "messages[1].tool_calls[0].id"),
    ("long call id", dict(messages=calling(pb.ToolCall(**{**GOOD_CALL, "id": "c" * 257}))),
     "messages[1].tool_calls[0].id"),
    ("bad call name", dict(messages=calling(pb.ToolCall(**GOOD_CALL), pb.ToolCall(**{**GOOD_CALL, "name": "a b"}))),
     "messages[1].tool_calls[1].function.name"),
    ("arguments not JSON", dict(messages=calling(pb.ToolCall(**{**GOOD_CALL, "arguments_json": "{city: 1}"}))),
     "messages[1].tool_calls[0].function.arguments"),
    ("arguments not an object", dict(messages=calling(pb.ToolCall(**{**GOOD_CALL, "arguments_json": "[1]"}))),
     "messages[1].tool_calls[0].function.arguments"),
    ("arguments NaN", dict(messages=calling(pb.ToolCall(**{**GOOD_CALL, "arguments_json": '{"x": NaN}'}))),
     "messages[1].tool_calls[0].function.arguments"),
    ("long arguments", dict(messages=calling(pb.ToolCall(**{**GOOD_CALL, "arguments_json": " " * TOO_LONG}))),
     "messages[1].tool_calls[0].function.arguments"),
    ("tool calls on a user turn", dict(messages=[pb.ChatMessage(role="user", content="x",
                                                                tool_calls=[pb.ToolCall(**GOOD_CALL)])]),
     "messages[0].tool_calls"),
    ("tool turn without a call id", dict(messages=[USER, pb.ChatMessage(role="tool", content="21 C")]),
     "messages[1].tool_call_id"),
    ("call id on a user turn", dict(messages=[pb.ChatMessage(role="user", content="x", tool_call_id="c")]),
     "messages[0].tool_call_id"),
    ("long tool_call_id", dict(messages=[USER, pb.ChatMessage(role="tool", content="x", tool_call_id="c" * 257)]),
     "messages[1].tool_call_id"),
    ("long message name", dict(messages=[pb.ChatMessage(role="user", content="x", name="n" * 65)]),
     "messages[0].name"),
]


# Duplicate tool names and a tool_choice naming no tool are the engine's rules, checked once
# for every caller (tests/unit/test_call_collector.py::test_tool_rules_name_the_field).
@pytest.mark.parametrize("fields, param", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_out_of_bounds_is_invalid_argument_naming_the_field(harness, fields, param):
    error = failure(harness, **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert trailing(error)[limits.PARAM_METADATA_KEY] == param
    assert len(error.details()) < 400  # values are quoted by a short prefix, never whole
    assert harness.engine.calls == []  # refused before the engine


def test_everything_at_its_bound_passes(harness):
    longest = "f" * limits.MAX_FUNCTION_NAME_CHARS
    schema = json.dumps({"type": "object", "description": ""})
    schema = schema.replace('""', '"' + "d" * (limits.MAX_SCHEMA_CHARS - len(schema)) + '"')
    assert len(schema) == limits.MAX_SCHEMA_CHARS
    arguments = '{"a": "' + "x" * (limits.MAX_TOOL_ARGUMENTS_CHARS - 9) + '"}'
    assert len(arguments) == limits.MAX_TOOL_ARGUMENTS_CHARS
    call_id = "c" * limits.MAX_TOOL_CALL_ID_CHARS
    history = [
        USER,
        pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(id=call_id, name=longest, arguments_json=arguments)]),
        pb.ChatMessage(role="tool", content="ok", tool_call_id=call_id, name="n" * limits.MAX_NAME_CHARS),
    ]
    many = [pb.Tool(name=f"Tool_{i}-x") for i in range(limits.MAX_TOOLS - 1)]
    responses = generate(
        harness, messages=history, constraint=pb.Constraint(json_schema=schema),
        tools=[pb.Tool(name=longest, description="d" * limits.MAX_DESCRIPTION_CHARS, parameters_json=schema), *many],
        tool_choice=pb.ToolChoice(mode=FUNCTION, function_name=longest),
    )
    assert [c.name for r in responses for c in r.tool_calls] == [longest]
    request = harness.engine.calls[-1].request
    assert len(request.tools) == limits.MAX_TOOLS and request.constraint.source == schema


def test_the_engines_own_refusals_pass_through(harness):
    """Schema content is the engine's to judge; its InvalidRequest keeps its param."""
    error = failure(harness, "invalid", constraint=pb.Constraint(json_schema=SCHEMA))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- Tokenize takes the same messages -------------------------------------------------------------


def test_tokenize_takes_tool_turns(harness):
    messages = [USER, pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(**GOOD_CALL)]),
                pb.ChatMessage(role="tool", content="ok", tool_call_id="call_1")]
    response = harness.stub.Tokenize(pb.TokenizeRequest(model="fake", messages=messages), timeout=SAFETY)
    assert list(response.tokens) == list("Weather in Paris?ok")


def test_tokenize_checks_the_tool_fields_of_messages(harness):
    messages = [USER, pb.ChatMessage(role="tool", content="ok")]
    with pytest.raises(grpc.RpcError) as info:
        harness.stub.Tokenize(pb.TokenizeRequest(model="fake", messages=messages), timeout=SAFETY)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailing(info.value)[limits.PARAM_METADATA_KEY] == "messages[1].tool_call_id"


def test_echo_of_matches_the_engine_request(harness):
    """The fake's echo is what the engine received (the e2e tests rely on it)."""
    (response,) = generate(harness, "echo-tools", tools=[weather()], parallel_tool_calls=False)
    assert json.loads(response.text) == json.loads(json.dumps(echo_of(harness.engine.calls[-1].request)))
