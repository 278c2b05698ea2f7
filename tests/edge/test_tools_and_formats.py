"""Structured outputs and tool calling at the edge (POST /v1/chat/completions).

- Requests: every accepted shape of ``response_format``, ``tools``, ``tool_choice``,
  ``parallel_tool_calls`` and of tool turns in ``messages`` → the GenerateRequest sent; every
  malformed one → 400 naming the field, never reaching the service.
- Responses: tool calls in a body (``content`` null when only calls) and in a stream (each
  call whole in one delta, Ollama's key order), byte for byte for one streamed call.
- End to end: the official openai client against real gunicorn and the real gRPC server over
  the fake engine (``tools/json/echo-tools`` models of tests/service/fake_engine.py).
"""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from inference_service import limits
from inference_service.v1 import inference_pb2 as pb
from rest_edge import requests, responses, streaming
from rest_edge.errors import RequestError
from tests.edge.fake_stack import oai, stack  # noqa: F401  (fixtures)
from tests.edge.fakes import TOOL_CALLS, FakeCall, FakeClient, call, calls, last, piece
from tests.helpers import client_for
from tests.service.fake_engine import JSON_ANSWER, TOOL_ARGUMENTS

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
SAFETY = 30  # seconds: bounds a hang, never a measured limit
USER = {"role": "user", "content": "What is the weather in Paris?"}

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
          "required": ["city", "celsius"], "additionalProperties": False}
SCHEMA_TEXT = '{"type":"object","properties":{"city":{"type":"string"},"celsius":{"type":"number"}},' \
              '"required":["city","celsius"],"additionalProperties":false}'
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}}
WEATHER_PARAMETERS = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
TIME = {"type": "function", "function": {"name": "get_time"}}


def chat(**fields) -> pb.GenerateRequest:
    body = {"model": "m", "messages": [USER], **fields}
    return requests.chat_request(body).request


def refused(**fields) -> RequestError:
    with pytest.raises(RequestError) as info:
        chat(**fields)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


# --- response_format ------------------------------------------------------------------------


def test_text_format_is_no_constraint():
    assert not chat(response_format={"type": "text"}).HasField("constraint")
    assert not chat(response_format=None).HasField("constraint")
    assert not chat().HasField("constraint")


def test_json_object():
    assert chat(response_format={"type": "json_object"}).constraint == pb.Constraint(json_object=True)


def test_json_schema_is_sent_as_compact_json_text_in_the_clients_key_order():
    request = chat(response_format={"type": "json_schema", "json_schema": {
        "name": "weather", "description": "A weather report", "strict": True, "schema": SCHEMA}})
    assert request.constraint == pb.Constraint(json_schema=SCHEMA_TEXT)
    assert request.constraint.WhichOneof("kind") == "json_schema"


def test_json_schema_without_optional_fields():
    request = chat(response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {}}})
    assert request.constraint.json_schema == "{}"


def test_json_schema_keeps_non_ascii_and_nesting():
    schema = {"type": "object", "properties": {"名前": {"type": "string", "enum": ["東京", "🙂"]},
                                               "deep": {"type": "array", "items": {"$ref": "#/$defs/x"}}},
              "$defs": {"x": {"type": "integer"}}}
    text = chat(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
                ).constraint.json_schema
    assert json.loads(text) == schema and "東京" in text and list(json.loads(text)) == list(schema)


class Weather(BaseModel):
    city: str
    celsius: float


def test_the_openai_sdks_pydantic_format_is_accepted_as_is():
    """What ``client.chat.completions.parse(response_format=Weather)`` sends (strict true)."""
    from openai.lib._parsing._completions import type_to_response_format_param

    sent = type_to_response_format_param(Weather)
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    request = chat(response_format=sent)
    assert json.loads(request.constraint.json_schema) == sent["json_schema"]["schema"]


# --- tools ------------------------------------------------------------------------------------


def test_tools_are_sent_in_order():
    request = chat(tools=[WEATHER, TIME])
    assert list(request.tools) == [
        pb.Tool(name="get_weather", description="The weather of a city", parameters_json=WEATHER_PARAMETERS),
        pb.Tool(name="get_time", description="", parameters_json=requests.NO_PARAMETERS),
    ]
    assert json.loads(requests.NO_PARAMETERS) == {"type": "object", "properties": {}}
    assert not request.HasField("tool_choice") and not request.HasField("parallel_tool_calls")


def test_tool_fields_that_change_nothing_are_accepted():
    tool = {"type": "function", "function": {"name": "f-1_X", "strict": True, "description": None,
                                             "parameters": None}}
    assert [t.name for t in chat(tools=[tool]).tools] == ["f-1_X"]
    assert [t.name for t in chat(tools=[{"function": {"name": "f"}}]).tools] == ["f"]  # type absent: function
    assert list(chat(tools=[]).tools) == [] and list(chat(tools=None).tools) == []


@pytest.mark.parametrize("choice, expected", [
    ("none", pb.ToolChoice(mode=pb.ToolChoice.MODE_NONE)),
    ("auto", pb.ToolChoice(mode=pb.ToolChoice.MODE_AUTO)),
    ("required", pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED)),
    ({"type": "function", "function": {"name": "get_time"}},
     pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name="get_time")),
    ({"function": {"name": "get_weather"}}, pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION,
                                                           function_name="get_weather")),
])
def test_tool_choice(choice, expected):
    assert chat(tools=[WEATHER, TIME], tool_choice=choice).tool_choice == expected


@pytest.mark.parametrize("value", [True, False])
def test_parallel_tool_calls(value):
    request = chat(tools=[WEATHER], parallel_tool_calls=value)
    assert request.HasField("parallel_tool_calls") and request.parallel_tool_calls is value


def test_tools_and_a_format_together():
    request = chat(tools=[WEATHER], response_format={"type": "json_object"})
    assert request.constraint.json_object and [t.name for t in request.tools] == ["get_weather"]


# --- messages: tool calls and tool results ----------------------------------------------------


ROUND_TRIP = [
    {"role": "system", "content": "Use the tools."},
    USER,
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]},
    {"role": "tool", "tool_call_id": "call_a", "content": "21 C"},
    {"role": "tool", "tool_call_id": "call_b", "name": "get_time", "content": [{"type": "text", "text": "noon"}]},
]


def test_a_whole_tool_round_trip_history():
    request = chat(messages=ROUND_TRIP, tools=[WEATHER, TIME])
    assert list(request.messages) == [
        pb.ChatMessage(role="system", content="Use the tools."),
        pb.ChatMessage(role="user", content=USER["content"]),
        pb.ChatMessage(role="assistant", content="", tool_calls=[
            pb.ToolCall(id="call_a", name="get_weather", arguments_json='{"city": "Paris"}'),
            pb.ToolCall(id="call_b", name="get_time", arguments_json="{}"),
        ]),
        pb.ChatMessage(role="tool", content="21 C", tool_call_id="call_a"),
        pb.ChatMessage(role="tool", content="noon", tool_call_id="call_b", name="get_time"),
    ]


@pytest.mark.parametrize("assistant", [
    {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},  # no content
    {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
])
def test_assistant_tool_calls_with_or_without_content(assistant):
    (message,) = chat(messages=[assistant]).messages
    assert message.content == assistant.get("content", "")
    assert list(message.tool_calls) == [pb.ToolCall(id="c", name="f", arguments_json="{}")]


def test_names_of_other_roles_and_call_ids_elsewhere_are_not_sent():
    (message,) = chat(messages=[{"role": "user", "name": "ann", "tool_call_id": "x", "content": "hi"}]).messages
    assert message == pb.ChatMessage(role="user", content="hi")
    (message,) = chat(messages=[{"role": "assistant", "content": "a", "tool_calls": []}]).messages
    assert message == pb.ChatMessage(role="assistant", content="a")


# --- malformed → 400 naming the field -----------------------------------------------------------


def tools_named(*names: str) -> list[dict]:
    return [{"type": "function", "function": {"name": n}} for n in names]


def assistant_calling(*tool_calls) -> list[dict]:
    return [USER, {"role": "assistant", "content": None, "tool_calls": list(tool_calls)}]


GOOD_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def with_function(**function) -> dict:
    return {**GOOD_CALL, "function": {**GOOD_CALL["function"], **function}}


MALFORMED = [  # (id, body fields, param)
    # response_format
    ("format not an object", dict(response_format="json_object"), "response_format"),
    ("format type missing", dict(response_format={}), "response_format.type"),
    ("format type unknown", dict(response_format={"type": "xml"}), "response_format.type"),
    ("format type not a string", dict(response_format={"type": 3}), "response_format.type"),
    ("json_schema missing", dict(response_format={"type": "json_schema"}), "response_format.json_schema"),
    ("json_schema not an object", dict(response_format={"type": "json_schema", "json_schema": "x"}),
     "response_format.json_schema"),
    ("schema name missing", dict(response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}}),
     "response_format.json_schema.name"),
    ("schema name empty", dict(response_format={"type": "json_schema", "json_schema": {"name": "",
                                                                                       "schema": SCHEMA}}),
     "response_format.json_schema.name"),
    ("schema name with a space", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "my schema", "schema": SCHEMA}}), "response_format.json_schema.name"),
    ("schema name too long", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "n" * 65, "schema": SCHEMA}}), "response_format.json_schema.name"),
    ("schema missing", dict(response_format={"type": "json_schema", "json_schema": {"name": "n"}}),
     "response_format.json_schema.schema"),
    ("schema not an object", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "n", "schema": '{"type": "object"}'}}), "response_format.json_schema.schema"),
    ("schema an array", dict(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": []}}),
     "response_format.json_schema.schema"),
    ("schema too long", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"description": "d" * limits.MAX_SCHEMA_CHARS}}}), "response_format.json_schema.schema"),
    ("strict not a boolean", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "n", "schema": SCHEMA, "strict": "yes"}}), "response_format.json_schema.strict"),
    ("schema description not a string", dict(response_format={"type": "json_schema", "json_schema": {
        "name": "n", "schema": SCHEMA, "description": 1}}), "response_format.json_schema.description"),
    # tools
    ("tools not an array", dict(tools={"type": "function"}), "tools"),
    ("too many tools", dict(tools=tools_named(*(f"f{i}" for i in range(limits.MAX_TOOLS + 1)))), "tools"),
    ("tool not an object", dict(tools=[WEATHER, "get_time"]), "tools[1]"),
    ("tool type unknown", dict(tools=[{"type": "code_interpreter"}]), "tools[0].type"),
    ("tool type not a string", dict(tools=[{"type": 1, "function": {"name": "f"}}]), "tools[0].type"),
    ("tool function missing", dict(tools=[{"type": "function"}]), "tools[0].function"),
    ("tool function not an object", dict(tools=[{"type": "function", "function": "f"}]), "tools[0].function"),
    ("tool name missing", dict(tools=[WEATHER, {"type": "function", "function": {"description": "d"}}]),
     "tools[1].function.name"),
    ("tool name not a string", dict(tools=[{"type": "function", "function": {"name": 7}}]), "tools[0].function.name"),
    ("tool name empty", dict(tools=tools_named("")), "tools[0].function.name"),
    ("tool name too long", dict(tools=tools_named("f" * 65)), "tools[0].function.name"),
    ("tool name with a dot", dict(tools=tools_named("a", "b", "c.d")), "tools[2].function.name"),
    ("tool name non-ASCII", dict(tools=tools_named("météo")), "tools[0].function.name"),
    ("tool names repeated", dict(tools=tools_named("f", "g", "f")), "tools[2].function.name"),
    ("tool description not a string", dict(tools=[{"type": "function", "function": {"name": "f", "description": 1}}]),
     "tools[0].function.description"),
    ("tool description too long", dict(tools=[{"type": "function", "function": {
        "name": "f", "description": "d" * (limits.MAX_DESCRIPTION_CHARS + 1)}}]), "tools[0].function.description"),
    ("tool parameters not an object", dict(tools=[{"type": "function", "function": {
        "name": "f", "parameters": '{"type": "object"}'}}]), "tools[0].function.parameters"),
    ("tool parameters too long", dict(tools=[{"type": "function", "function": {
        "name": "f", "parameters": {"description": "d" * limits.MAX_SCHEMA_CHARS}}}]), "tools[0].function.parameters"),
    ("tool strict not a boolean", dict(tools=[{"type": "function", "function": {"name": "f", "strict": 1}}]),
     "tools[0].function.strict"),
    ("legacy functions", dict(functions=[{"name": "f"}]), "functions"),
    ("legacy function_call", dict(function_call={"name": "f"}), "function_call"),
    # tool_choice
    ("tool_choice without tools", dict(tool_choice="auto"), "tool_choice"),
    ("tool_choice required without tools", dict(tool_choice="required", tools=[]), "tool_choice"),
    ("tool_choice unknown string", dict(tools=[WEATHER], tool_choice="any"), "tool_choice"),
    ("tool_choice not a string or object", dict(tools=[WEATHER], tool_choice=1), "tool_choice"),
    ("tool_choice names another function", dict(tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "get_time"}}), "tool_choice"),
    ("tool_choice type unknown", dict(tools=[WEATHER], tool_choice={"type": "custom"}), "tool_choice.type"),
    ("tool_choice function missing", dict(tools=[WEATHER], tool_choice={"type": "function"}), "tool_choice.function"),
    ("tool_choice name missing", dict(tools=[WEATHER], tool_choice={"type": "function", "function": {}}),
     "tool_choice.function.name"),
    ("tool_choice name not a string", dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": 1}}),
     "tool_choice.function.name"),
    ("parallel_tool_calls not a boolean", dict(tools=[WEATHER], parallel_tool_calls="yes"), "parallel_tool_calls"),
    # messages
    ("tool turn without tool_call_id", dict(messages=[USER, {"role": "tool", "content": "21 C"}]),
     "messages[1].tool_call_id"),
    ("tool_call_id not a string", dict(messages=[USER, {"role": "tool", "tool_call_id": 5, "content": "x"}]),
     "messages[1].tool_call_id"),
    ("tool_call_id empty", dict(messages=[USER, {"role": "tool", "tool_call_id": "", "content": "x"}]),
     "messages[1].tool_call_id"),
    ("tool_call_id too long", dict(messages=[USER, {"role": "tool", "tool_call_id": "c" * 257, "content": "x"}]),
     "messages[1].tool_call_id"),
    ("tool turn without content", dict(messages=[USER, {"role": "tool", "tool_call_id": "c"}]), "messages[1].content"),
    ("tool turn name too long", dict(messages=[USER, {"role": "tool", "tool_call_id": "c", "name": "n" * 65,
                                                      "content": "x"}]), "messages[1].name"),
    ("tool_calls on a user turn", dict(messages=[{**USER, "tool_calls": [GOOD_CALL]}]), "messages[0].tool_calls"),
    ("tool_calls not an array", dict(messages=assistant_calling(GOOD_CALL)[:1] + [
        {"role": "assistant", "tool_calls": GOOD_CALL}]), "messages[1].tool_calls"),
    ("tool call not an object", dict(messages=assistant_calling(GOOD_CALL, "call")), "messages[1].tool_calls[1]"),
    ("tool call id missing", dict(messages=assistant_calling({k: v for k, v in GOOD_CALL.items() if k != "id"})),
     "messages[1].tool_calls[0].id"),
    ("tool call id too long", dict(messages=assistant_calling({**GOOD_CALL, "id": "c" * 257})),
     "messages[1].tool_calls[0].id"),
    ("tool call type unknown", dict(messages=assistant_calling({**GOOD_CALL, "type": "custom"})),
     "messages[1].tool_calls[0].type"),
    ("tool call function missing", dict(messages=assistant_calling({"id": "c", "type": "function"})),
     "messages[1].tool_calls[0].function"),
    ("tool call name missing", dict(messages=assistant_calling({"id": "c", "function": {"arguments": "{}"}})),
     "messages[1].tool_calls[0].function.name"),
    ("tool call name bad", dict(messages=assistant_calling(with_function(name="get weather"))),
     "messages[1].tool_calls[0].function.name"),
    ("arguments missing", dict(messages=assistant_calling({"id": "c", "function": {"name": "f"}})),
     "messages[1].tool_calls[0].function.arguments"),
    ("arguments an object, not a string", dict(messages=assistant_calling(with_function(arguments={"city": "P"}))),
     "messages[1].tool_calls[0].function.arguments"),
    ("arguments not JSON", dict(messages=assistant_calling(with_function(arguments="{city: Paris}"))),
     "messages[1].tool_calls[0].function.arguments"),
    ("arguments not an object", dict(messages=assistant_calling(GOOD_CALL, with_function(arguments='"Paris"'))),
     "messages[1].tool_calls[1].function.arguments"),
    ("arguments too long", dict(messages=assistant_calling(with_function(
        arguments='{"a":"' + "x" * limits.MAX_TOOL_ARGUMENTS_CHARS + '"}'))), "messages[1].tool_calls[0].function.arguments"),
    ("legacy message function_call", dict(messages=[USER, {"role": "assistant", "content": None,
                                                           "function_call": {"name": "f", "arguments": "{}"}}]),
     "messages[1].function_call"),
    ("legacy function role", dict(messages=[USER, {"role": "function", "name": "f", "content": "x"}]),
     "messages[1].role"),
]


@pytest.mark.parametrize("fields, param", [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_is_400_naming_the_field(fields, param):
    error = refused(**fields)
    assert error.param == param, error.message
    assert len(error.message) < 400  # values are quoted by a short prefix, never whole


@pytest.mark.parametrize("fields, param", [case[1:] for case in MALFORMED[::7]], ids=[case[0] for case in MALFORMED[::7]])
@pytest.mark.parametrize("stream", [False, True])
def test_malformed_over_http_never_reaches_the_service(fields, param, stream):
    fake = FakeClient([last()])
    result = client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": [USER], "stream": stream, **fields})
    assert result.status_code == 400, result.text
    assert result.json["error"]["param"] == param and result.json["error"]["type"] == "invalid_request_error"
    assert fake.requests == []


def test_error_messages_follow_openais_wording():
    assert refused(tool_choice="auto").message == (
        "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.")
    error = refused(tools=tools_named("a b"))
    assert error.message.startswith("Invalid 'tools[0].function.name': string does not match pattern. Expected a "
                                    "string that matches the pattern '^[a-zA-Z0-9_-]+$'")
    assert error.code == "invalid_value"
    assert refused(tools=tools_named("")).code == "empty_string"
    assert refused(tools=tools_named("f" * 65)).code == "string_above_max_length"
    assert refused(tools=[{"function": {"description": "d"}}]).code == "missing_required_parameter"
    assert "use 'tools'" in refused(functions=[{"name": "f"}]).message


def test_limits_are_inclusive():
    longest = "f" * limits.MAX_FUNCTION_NAME_CHARS
    schema = {"description": "d" * (limits.MAX_SCHEMA_CHARS - len('{"description":""}'))}
    request = chat(
        tools=[{"type": "function", "function": {"name": longest, "description": "d" * limits.MAX_DESCRIPTION_CHARS,
                                                 "parameters": schema}},
               *tools_named(*(f"f{i}" for i in range(limits.MAX_TOOLS - 1)))],
        response_format={"type": "json_schema", "json_schema": {"name": longest, "schema": schema}},
        messages=assistant_calling({"id": "c" * limits.MAX_TOOL_CALL_ID_CHARS, "function": {
            "name": longest, "arguments": '{"a":"' + "x" * (limits.MAX_TOOL_ARGUMENTS_CHARS - 8) + '"}'}}),
    )
    assert len(request.tools) == limits.MAX_TOOLS
    assert len(request.constraint.json_schema) == limits.MAX_SCHEMA_CHARS
    assert len(request.messages[1].tool_calls[0].arguments_json) == limits.MAX_TOOL_ARGUMENTS_CHARS


def test_a_lone_surrogate_in_a_tool_field_is_named():
    result = client_for(FakeClient([last()])).simulate_post(
        CHAT, body='{"model":"m","messages":[{"role":"user","content":"x"}],'
                   '"tools":[{"type":"function","function":{"name":"f","description":"\\ud800"}}]}',
        headers={"Content-Type": "application/json"})
    assert result.status_code == 400 and result.json["error"]["param"] == "tools[0].function.description"


def test_completions_still_refuse_tools_and_formats():
    fake = FakeClient([last()])
    for fields, param in [({"tools": [WEATHER]}, "tools"), ({"response_format": {"type": "json_object"}},
                                                            "response_format"),
                          ({"tool_choice": "required"}, "tool_choice")]:
        result = client_for(fake).simulate_post(COMP, json={"model": "m", "prompt": "x", **fields})
        assert result.status_code == 400 and result.json["error"]["param"] == param
        assert result.json["error"]["code"] == "unsupported_parameter"
        assert "/v1/chat/completions" in result.json["error"]["message"]
    assert fake.requests == []


# --- responses ------------------------------------------------------------------------------


def post(script, **fields):
    fake = FakeClient(script)
    result = client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": [USER], "tools": [WEATHER, TIME],
                                                        **fields})
    assert result.status_code == 200, result.text
    return result, fake


def sse(result) -> list:
    parts = result.text.split("\n\n")
    assert parts[-1] == "" and parts[-2] == "data: [DONE]"
    return [json.loads(p[len("data: "):]) for p in parts[:-2]]


PARIS = '{"city":"Paris"}'


def test_body_with_only_calls_has_null_content():
    result, fake = post([calls(call("get_weather", PARIS, "call_a")),
                         last(reason=TOOL_CALLS, tool_calls=[call("get_time", "{}", "call_b")], completion=12)])
    body = result.json
    (choice,) = body["choices"]
    assert list(choice) == ["index", "message", "finish_reason"]
    assert list(choice["message"]) == ["role", "content", "tool_calls"]
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]}
    assert [list(c) for c in choice["message"]["tool_calls"]] == [["id", "type", "function"]] * 2
    assert [list(c["function"]) for c in choice["message"]["tool_calls"]] == [["name", "arguments"]] * 2
    assert choice["finish_reason"] == "tool_calls"
    assert body["usage"]["completion_tokens"] == 12
    assert '"content":null,"tool_calls":[{"id":"call_a","type":"function","function":{"name":"get_weather",' \
           '"arguments":"{\\"city\\":\\"Paris\\"}"}}' in result.text
    assert [t.name for t in fake.requests[0].tools] == ["get_weather", "get_time"]


def test_body_with_text_and_calls_keeps_the_text():
    result, _ = post([piece("Let me check. "), last(reason=TOOL_CALLS, tool_calls=[call("get_weather", PARIS)])])
    message = result.json["choices"][0]["message"]
    assert message["content"] == "Let me check. " and [c["id"] for c in message["tool_calls"]] == ["call_1"]


def test_body_without_calls_is_unchanged():
    result, _ = post([piece("Sunny."), last()])
    assert result.json["choices"][0]["message"] == {"role": "assistant", "content": "Sunny."}
    assert result.json["choices"][0]["finish_reason"] == "stop"


def test_stream_each_call_whole_in_one_delta():
    result, _ = post([piece("Checking"), calls(call("get_weather", PARIS, "call_a")),
                      last(reason=TOOL_CALLS, tool_calls=[call("get_time", "{}", "call_b"),
                                                          call("get_weather", '{"city":"Rome"}', "call_c")])],
                     stream=True, stream_options={"include_usage": True})
    frames = sse(result)
    deltas = [f["choices"][0]["delta"] if f["choices"] else None for f in frames]
    assert deltas == [
        {"role": "assistant", "content": "Checking"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_a", "index": 0, "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_b", "index": 1, "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            {"id": "call_c", "index": 2, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "assistant", "content": ""},
        None,  # the usage frame
    ]
    assert [f["choices"][0]["finish_reason"] for f in frames[:-1]] == [None, None, None, "tool_calls"]
    assert [list(c) for d in deltas[1:3] for c in d["tool_calls"]] == [["id", "index", "type", "function"]] * 3
    assert "usage" in frames[-1] and frames[-1]["choices"] == []


def test_stream_with_logprobs_gives_null_logprobs_on_call_chunks():
    result, _ = post([calls(call("get_weather", PARIS)), last(reason=TOOL_CALLS)], stream=True, logprobs=True)
    frames = sse(result)
    assert list(frames[0]["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]
    assert frames[0]["choices"][0]["logprobs"] is None


# One streamed tool call, byte for byte: Ollama's delta (role, content, tool_calls) and tool call
# (id, index, type, function{name, arguments}) key order, the reference frames around it.
ONE_CALL_STREAM = (
    'data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898282,"model":"qwen2.5:3b",'
    '"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"",'
    '"tool_calls":[{"id":"call_8f2k","index":0,"type":"function","function":{"name":"get_weather",'
    '"arguments":"{\\"city\\":\\"巴黎\\"}"}}]},"finish_reason":null}]}\n\n'
    'data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b",'
    '"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    '"finish_reason":"tool_calls"}]}\n\n'
    'data: [DONE]\n\n'
)


def test_one_streamed_tool_call_byte_for_byte():
    messages = [calls(call("get_weather", '{"city":"巴黎"}', "call_8f2k")), last(reason=TOOL_CALLS)]
    clock = iter([1740898282, 1740898283])
    events = responses.events(FakeCall(messages))
    first = next(events)
    renderer = responses.ChatRenderer("chatcmpl-562", "qwen2.5:3b", clock=lambda: next(clock))
    out = b"".join(streaming.sse_stream(renderer, first, events, FakeCall([])))
    assert out == ONE_CALL_STREAM.encode("utf-8")


def test_the_same_call_at_the_end_of_the_stream_gives_the_same_frames_but_one():
    """Calls carried by the last message come before its finish chunk."""
    messages = [last(reason=TOOL_CALLS, tool_calls=[call("get_weather", '{"city":"巴黎"}', "call_8f2k")])]
    clock = iter([1740898282, 1740898283])
    events = responses.events(FakeCall(messages))
    renderer = responses.ChatRenderer("chatcmpl-562", "qwen2.5:3b", clock=lambda: next(clock))
    out = b"".join(streaming.sse_stream(renderer, next(events), events, FakeCall([])))
    assert out == ONE_CALL_STREAM.encode("utf-8")


def test_events_order_text_then_calls_then_finish():
    message = last("tail", reason=TOOL_CALLS, tool_calls=[call("f")])
    kinds = [type(e).__name__ for e in responses.events([message])]
    assert kinds == ["Text", "ToolCalls", "Finish"]
    assert responses.finish_reason(pb.FINISH_REASON_TOOL_CALLS) == "tool_calls"


# --- end to end: the openai client, real gunicorn, real gRPC, fake engine --------------------------




def test_openai_client_gets_tool_calls(oai, stack):
    reply = oai.chat.completions.create(model="tools", messages=[USER], tools=[WEATHER, TIME])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [(c.id, c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("call_0", "function", "get_weather", TOOL_ARGUMENTS), ("call_1", "function", "get_time", TOOL_ARGUMENTS)]
    request = stack[1].calls[-1].request
    assert [t.name for t in request.tools] == ["get_weather", "get_time"]
    assert request.tools[0].parameters == WEATHER_PARAMETERS and request.tool_choice == "auto"


def test_openai_client_streams_tool_calls(oai):
    chunks = list(oai.chat.completions.create(model="tools", messages=[USER], tools=[WEATHER, TIME],
                                              parallel_tool_calls=False, stream=True))
    with_calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(with_calls) == 1
    (delta_call,) = with_calls[0].choices[0].delta.tool_calls
    assert (delta_call.index, delta_call.id, delta_call.function.name, delta_call.function.arguments) == (
        0, "call_0", "get_weather", TOOL_ARGUMENTS)
    assert all(not (c.choices[0].delta.content or "") for c in chunks if c.choices)  # no call markup as text
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_client_stream_helper_accumulates_the_calls(oai):
    with oai.chat.completions.stream(model="tools", messages=[USER], tools=[WEATHER, TIME]) as stream:
        final = stream.get_final_completion()
    calls_ = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls_] == [
        ("call_0", "get_weather", TOOL_ARGUMENTS), ("call_1", "get_time", TOOL_ARGUMENTS)]


def test_openai_client_forced_function_and_history(oai, stack):
    history = [USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "21 C"}]
    reply = oai.chat.completions.create(model="tools", messages=history, tools=[WEATHER, TIME],
                                        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in reply.choices[0].message.tool_calls] == ["get_time"]
    request = stack[1].calls[-1].request
    assert (request.tool_choice, request.tool_choice_name) == ("function", "get_time")
    assert request.messages[2].role == "tool" and request.messages[2].tool_call_id == "call_0"
    assert request.messages[1].tool_calls[0].arguments == TOOL_ARGUMENTS


class GetWeather(BaseModel):
    city: str
    unit: str


def test_openai_client_parse_gives_pydantic_arguments(oai):
    reply = oai.chat.completions.parse(model="tools", messages=[USER],
                                       tools=[openai.pydantic_function_tool(GetWeather)])
    (tool_call,) = reply.choices[0].message.tool_calls
    assert tool_call.function.parsed_arguments == GetWeather(city="Paris", unit="celsius")


def test_openai_client_parse_gives_the_pydantic_model(oai, stack):
    reply = oai.chat.completions.parse(model="json", messages=[USER], response_format=Weather)
    assert reply.choices[0].message.parsed == Weather(city="Paris", celsius=21.5)
    assert reply.choices[0].message.content == JSON_ANSWER
    constraint = stack[1].calls[-1].request.constraint
    assert constraint.kind == "json_schema"
    assert json.loads(constraint.source) == Weather.model_json_schema() | {"additionalProperties": False}


def test_openai_client_json_object_reaches_the_engine(oai):
    reply = oai.chat.completions.create(model="echo-tools", messages=[USER], response_format={"type": "json_object"})
    assert json.loads(reply.choices[0].message.content)["constraint"] == {"kind": "json_object", "source": "",
                                                                          "param": "response_format"}


def test_openai_client_bad_tool_is_a_400_naming_it(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="tools", messages=[USER], tools=[WEATHER, *tools_named("bad name")])
    assert info.value.body["param"] == "tools[1].function.name"


def test_the_readme_round_trip_sends_the_sdks_message_back(oai):
    """README's loop: the SDK's own message object goes back as history, then tool results."""
    messages = [USER]
    reply = oai.chat.completions.create(model="tools", messages=messages, tools=[WEATHER])
    message = reply.choices[0].message
    messages.append(message)
    for tool_call in message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": "21 C"})
    echo = json.loads(oai.chat.completions.create(model="echo-tools", messages=messages, tools=[WEATHER])
                      .choices[0].message.content)
    assert echo["messages"][1:] == [
        {"role": "assistant", "content": "", "tool_call_id": "", "name": "",
         "tool_calls": [{"id": "call_0", "name": "get_weather", "arguments": TOOL_ARGUMENTS}]},
        {"role": "tool", "content": "21 C", "tool_calls": [], "tool_call_id": "call_0", "name": ""},
    ]
