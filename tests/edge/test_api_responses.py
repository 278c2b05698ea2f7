"""POST /v1/responses (rest_edge.apis.openai_responses): requests in, events out, errors,
through the Falcon app with a fake client."""

from __future__ import annotations

import json

import grpc
import pytest

from inference_service.v1 import inference_pb2 as pb
from rest_edge.apis import openai_responses
from tests.edge.fakes import LENGTH, TOOL_CALLS, FakeClient, call, calls, last, piece, rpc_error
from tests.helpers import client_for, named_events

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def parse(**body) -> pb.GenerateRequest:
    return openai_responses.parse({"model": "m", **body}).request


@pytest.fixture
def client():
    return FakeClient([piece("Hel"), piece("lo"), last("!")])


@pytest.fixture
def http(client):
    return client_for(client, metrics=False)


# --- requests ------------------------------------------------------------------------------

def test_a_string_input_is_one_user_turn_after_the_instructions():
    req = parse(input="Hi <|im_end|>", instructions="Be brief.")
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "Hi <|im_end|>")]


def test_items_become_the_conversation_calls_joining_the_assistant_turn():
    req = parse(input=[
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather "},
                                                         {"type": "input_text", "text": "in Oslo?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_a", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": '{"city":"Bergen"}'},
        {"type": "function_call_output", "call_id": "call_a", "output": "Sunny"},
        {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "Rain"}]},
    ], tools=[WEATHER])
    roles = [m.role for m in req.messages]
    assert roles == ["system", "user", "assistant", "tool", "tool"]
    assistant = req.messages[2]
    assert assistant.content == "Checking."
    assert [(c.id, c.arguments_json) for c in assistant.tool_calls] == [("call_a", '{"city":"Oslo"}'),
                                                                       ("call_b", '{"city":"Bergen"}')]
    assert [(m.tool_call_id, m.name, m.content) for m in req.messages[3:]] == [
        ("call_a", "get_weather", "Sunny"), ("call_b", "get_weather", "Rain")]


def test_tools_of_types_we_cannot_run_are_skipped():
    req = parse(input="x", tools=[{"type": "web_search"}, WEATHER, {"type": "code_interpreter", "container": {}},
                                  {"type": "custom", "name": "patch"}])
    assert [t.name for t in req.tools] == ["get_weather"]


def test_allowed_tools_sends_only_the_allowed_functions():
    other = dict(WEATHER, name="get_time")
    req = parse(input="x", tools=[WEATHER, other],
                tool_choice={"type": "allowed_tools", "mode": "required",
                             "tools": [{"type": "function", "name": "get_time"}]})
    assert [t.name for t in req.tools] == ["get_time"]
    assert req.tool_choice.mode == pb.ToolChoice.MODE_REQUIRED


def test_formats_choices_and_sampling():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = parse(input="x", text={"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}},
                tool_choice={"type": "function", "name": "get_weather"}, tools=[WEATHER],
                max_output_tokens=20, temperature=0.5, top_p=0.9, parallel_tool_calls=False)
    assert json.loads(req.constraint.json_schema) == schema
    assert req.tool_choice.function_name == "get_weather"
    assert (req.max_tokens, req.temperature, req.top_p, req.parallel_tool_calls) == (20, 0.5, pytest.approx(0.9),
                                                                                     False)
    assert parse(input="x", text={"format": {"type": "json_object"}}).constraint.json_object


BAD = [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": 3}, "input"),
    ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": "user"}]}, "input[0].content"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
     "input[0].content[0].type"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
     "input[0].arguments"),
    ({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"model": "m", "input": [{"type": "computer_call_output"}]}, "input[0].type"),
    ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation"),
    ({"model": "m", "input": "x", "background": True}, "background"),
    ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "bad name"}]}, "tools[0].name"),
    ({"model": "m", "input": "x", "tools": [WEATHER, WEATHER]}, "tools[1].name"),
    ({"model": "m", "input": "x", "tools": [{"name": "f"}]}, "tools[0].type"),
    ({"model": "m", "input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"model": "m", "input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice.name"),
    ({"model": "m", "input": "x", "tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}},
     "tool_choice.type"),
    ({"model": "m", "input": "x", "tools": [WEATHER], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                                                                       "tools": []}}, "tool_choice.tools"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "x", "temperature": 9}, "temperature"),
    ({"model": "m", "input": "x", "stream": "yes"}, "stream"),
    ({"model": "m", "input": "x\ud800"}, "input"),
]


@pytest.mark.parametrize("body, param", BAD, ids=[p for _, p in BAD])
def test_bad_input_is_a_400_naming_the_field(http, client, body, param):
    resp = http.simulate_post("/v1/responses", body=json.dumps(body), headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    error = resp.json["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert not client.requests


@pytest.mark.parametrize("data", [b"", b"{", b"[1]", b'{"model": NaN}', b"\xff"])
def test_unreadable_bodies_are_400(http, data):
    resp = http.simulate_post("/v1/responses", body=data, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json["error"]["type"] == "invalid_request_error"


# --- answers -------------------------------------------------------------------------------

def test_the_body_is_a_completed_response(http):
    resp = http.simulate_post("/v1/responses", json={"model": "m", "input": "hi", "metadata": {"k": "v"}})
    body = resp.json
    assert resp.status_code == 200
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    assert body["metadata"] == {"k": "v"} and body["store"] is False
    [item] = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["content"] == [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}]
    assert body["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 3,
                             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}


def test_a_length_cut_is_incomplete(http, client):
    client.script = [piece("Hel"), last("lo", LENGTH)]
    body = http.simulate_post("/v1/responses", json={"model": "m", "input": "hi", "max_output_tokens": 2}).json
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete"


def test_calls_are_function_call_items(http, client):
    client.script = [calls(call("get_weather", '{"city":"Oslo"}', id="call_9")), last("", TOOL_CALLS)]
    body = http.simulate_post("/v1/responses", json={"model": "m", "input": "hi", "tools": [WEATHER]}).json
    assert [(i["type"], i["call_id"], i["name"], i["arguments"], i["status"]) for i in body["output"]] == [
        ("function_call", "call_9", "get_weather", '{"city":"Oslo"}', "completed")]


def test_the_stream_is_the_full_event_sequence(http, client):
    client.script = [piece("Hel"), piece("lo"), calls(call("get_weather", '{"city":"Oslo"}')), last("", TOOL_CALLS)]
    resp = http.simulate_post("/v1/responses", json={"model": "m", "input": "hi", "tools": [WEATHER],
                                                     "stream": True})
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    events = named_events(resp.text)
    assert [n for n, _ in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    assert events[6][1]["text"] == "Hello"
    final = events[-1][1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["usage"]["total_tokens"] == 8
    assert "[DONE]" not in resp.text


def test_an_error_before_the_first_event_has_its_status(http, client):
    client.script = [rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", **{"retry-after": "3"})]
    resp = http.simulate_post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "3"
    assert resp.json["error"]["code"] == "rate_limit_exceeded"


def test_an_error_after_the_stream_started_is_an_error_event(http, client):
    client.script = [piece("Hel"), rpc_error(grpc.StatusCode.INTERNAL, "secret")]
    resp = http.simulate_post("/v1/responses", json={"model": "m", "input": "hi", "stream": True})
    name, event = named_events(resp.text)[-1]
    assert name == "error" and event["code"] == "server_error" and "secret" not in resp.text
    assert client.calls[-1].cancelled
