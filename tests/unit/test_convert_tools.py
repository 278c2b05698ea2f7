"""convert.py for structured outputs and tool calling: GenerateRequest → GenerationRequest
(constraint, tools, tool choice, parallel_tool_calls, the messages' tool fields) and
GenerationChunk → GenerateResponse (tool calls, finish reason "tool_calls").

The other fields are tests/engine/test_convert.py's.
"""

from __future__ import annotations

import pytest

from inference_service import convert
from inference_service.engine.types import (
    ChatMessage,
    Constraint,
    GenerationChunk,
    GenerationRequest,
    Tool,
    ToolCall,
    Usage,
)
from inference_service.errors import InvalidRequest
from inference_service.v1 import inference_pb2 as pb

SCHEMA = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
MESSAGES = [pb.ChatMessage(role="user", content="Weather in Paris?")]


def convert_request(**fields) -> GenerationRequest:
    fields.setdefault("messages", MESSAGES)
    return convert.request_from_proto(pb.GenerateRequest(model="m", **fields))


# --- defaults -----------------------------------------------------------------------------------


def test_absent_tool_fields_take_the_defaults():
    request = convert_request()
    assert request.constraint is None
    assert request.tools == ()
    assert request.tool_choice == "auto" and request.tool_choice_name == ""
    assert request.parallel_tool_calls is True
    assert request.messages == (ChatMessage("user", "Weather in Paris?"),)
    assert request == GenerationRequest(model="m", messages=(ChatMessage("user", "Weather in Paris?"),))


# --- constraint ---------------------------------------------------------------------------------


@pytest.mark.parametrize("constraint, expected", [
    (pb.Constraint(json_schema=SCHEMA), Constraint("json_schema", SCHEMA)),
    (pb.Constraint(json_object=True), Constraint("json_object")),
    (pb.Constraint(regex=r"\d{3}-\d{4}"), Constraint("regex", r"\d{3}-\d{4}")),
    (pb.Constraint(lark='start: "yes" | "no"'), Constraint("lark", 'start: "yes" | "no"')),
    (pb.Constraint(json_object=False), None),  # documented: the same as no constraint
    (pb.Constraint(), None),  # a constraint message with nothing in its oneof
])
def test_each_constraint_kind(constraint, expected):
    assert convert_request(constraint=constraint).constraint == expected


def test_an_empty_schema_string_is_carried_for_the_engine_to_refuse():
    # The oneof is set (to ""): the engine says what is wrong with it, naming response_format.
    assert convert_request(constraint=pb.Constraint(json_schema="")).constraint == Constraint("json_schema", "")


# --- tools and tool choice ----------------------------------------------------------------------


def test_tools_are_carried_in_order():
    request = convert_request(tools=[
        pb.Tool(name="get_weather", description="Weather of a city", parameters_json=SCHEMA),
        pb.Tool(name="now"),
    ])
    assert request.tools == (
        Tool("get_weather", "Weather of a city", SCHEMA),
        Tool("now", "", Tool("x").parameters),  # empty parameters_json: no declared arguments
    )


@pytest.mark.parametrize("mode, expected", [
    (pb.ToolChoice.MODE_UNSPECIFIED, "auto"),
    (pb.ToolChoice.MODE_NONE, "none"),
    (pb.ToolChoice.MODE_AUTO, "auto"),
    (pb.ToolChoice.MODE_REQUIRED, "required"),
])
def test_tool_choice_modes(mode, expected):
    request = convert_request(tools=[pb.Tool(name="f")], tool_choice=pb.ToolChoice(mode=mode, function_name="f"))
    assert request.tool_choice == expected
    assert request.tool_choice_name == ""  # only a forced function carries its name


def test_tool_choice_function_carries_the_name():
    request = convert_request(tools=[pb.Tool(name="f"), pb.Tool(name="g")],
                              tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name="g"))
    assert (request.tool_choice, request.tool_choice_name) == ("function", "g")


def test_every_mode_of_the_proto_is_mapped():
    assert set(convert.TOOL_CHOICE_MODES) == set(pb.ToolChoice.Mode.values())


def test_an_unknown_tool_choice_mode_is_an_invalid_request():
    message = pb.GenerateRequest(model="m", messages=MESSAGES)
    message.tool_choice.mode = 99  # a newer client's value: proto3 enums are open
    with pytest.raises(InvalidRequest) as info:
        convert.request_from_proto(message)
    assert info.value.param == "tool_choice"


@pytest.mark.parametrize("value", [True, False])
def test_parallel_tool_calls_when_set(value):
    assert convert_request(parallel_tool_calls=value).parallel_tool_calls is value


# --- messages -----------------------------------------------------------------------------------


def test_messages_carry_tool_calls_and_tool_results():
    messages = [
        pb.ChatMessage(role="user", content="Weather in Paris and Rome?"),
        pb.ChatMessage(role="assistant", content="", tool_calls=[
            pb.ToolCall(id="call_a", name="get_weather", arguments_json='{"city": "Paris"}'),
            pb.ToolCall(id="call_b", name="get_weather", arguments_json='{"city": "Rome"}'),
        ]),
        pb.ChatMessage(role="tool", content="21 C", tool_call_id="call_a", name="get_weather"),
        pb.ChatMessage(role="tool", content="25 C", tool_call_id="call_b"),
    ]
    assert convert_request(messages=messages).messages == (
        ChatMessage("user", "Weather in Paris and Rome?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
                                                 ToolCall("call_b", "get_weather", '{"city": "Rome"}'))),
        ChatMessage("tool", "21 C", tool_call_id="call_a", name="get_weather"),
        ChatMessage("tool", "25 C", tool_call_id="call_b"),
    )


def test_messages_from_proto_is_what_tokenize_uses_too():
    message = pb.ChatMessage(role="tool", content="ok", tool_call_id="c", name="f")
    assert convert.messages_from_proto([message]) == (ChatMessage("tool", "ok", tool_call_id="c", name="f"),)


def test_everything_at_once():
    message = pb.GenerateRequest(
        model="m", messages=MESSAGES, temperature=0.0, max_tokens=64,
        constraint=pb.Constraint(json_schema=SCHEMA),
        tools=[pb.Tool(name="get_weather", description="d", parameters_json=SCHEMA)],
        tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED),
        parallel_tool_calls=False,
    )
    request = convert.request_from_proto(message)
    assert request.sampling.temperature == 0.0 and request.max_tokens == 64
    assert request.constraint == Constraint("json_schema", SCHEMA)
    assert request.tools == (Tool("get_weather", "d", SCHEMA),)
    assert (request.tool_choice, request.parallel_tool_calls) == ("required", False)


# --- chunks -------------------------------------------------------------------------------------


def test_chunk_with_tool_calls():
    chunk = GenerationChunk(text="", token_ids=(5, 6), tool_calls=(
        ToolCall("call_0", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_1", "now", "{}"),
    ))
    response = convert.chunk_to_proto(chunk, "m")
    assert list(response.tool_calls) == [
        pb.ToolCall(id="call_0", name="get_weather", arguments_json='{"city": "Paris"}'),
        pb.ToolCall(id="call_1", name="now", arguments_json="{}"),
    ]
    assert response.text == "" and list(response.token_ids) == [5, 6]
    assert response.finish_reason == pb.FINISH_REASON_UNSPECIFIED and not response.HasField("usage")


def test_last_chunk_finishing_with_tool_calls():
    chunk = GenerationChunk(text="", tool_calls=(ToolCall("call_0", "f", "{}"),), finish_reason="tool_calls",
                            usage=Usage(prompt_tokens=9, completion_tokens=4))
    response = convert.chunk_to_proto(chunk, "m")
    assert response.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [c.name for c in response.tool_calls] == ["f"]
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (9, 4)


def test_chunk_without_calls_has_none():
    assert list(convert.chunk_to_proto(GenerationChunk(text="hi"), "m").tool_calls) == []
