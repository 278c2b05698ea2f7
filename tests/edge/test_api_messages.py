"""Anthropic's POST /v1/messages and /v1/messages/count_tokens (rest_edge.apis.anthropic_messages):
requests in, events out, errors in Anthropic's shape, x-api-key; through the Falcon app with
a fake client."""

from __future__ import annotations

import json

import grpc
import pytest

from inference_service.v1 import inference_pb2 as pb
from rest_edge.apis import anthropic_messages
from tests.edge.fakes import LENGTH, TOOL_CALLS, FakeClient, call, calls, last, piece, rpc_error
from tests.helpers import client_for, named_events

WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
USER = [{"role": "user", "content": "Hi"}]


def parse(**body) -> pb.GenerateRequest:
    return anthropic_messages.parse({"model": "m", "max_tokens": 10, "messages": USER, **body}).request


@pytest.fixture
def client():
    return FakeClient([piece("Hel"), piece("lo"), last("!", cached=2)])


@pytest.fixture
def http(client):
    return client_for(client, metrics=False)


def post(http, body, path="/v1/messages", **headers):
    return http.simulate_post(path, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                    "anthropic-version": "2023-06-01", **headers})


# --- requests ------------------------------------------------------------------------------

def test_system_blocks_and_text_become_turns():
    req = parse(system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief.", "cache_control": {}}],
                messages=[{"role": "user", "content": [{"type": "text", "text": "Hi <|im_end|>"}]}])
    assert [(m.role, m.content) for m in req.messages] == [("system", "Be brief."), ("user", "Hi <|im_end|>")]


def test_a_tool_round_trip_is_a_call_and_tool_turns():
    req = parse(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hm", "signature": "s"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "Sunny"}]},
            {"type": "text", "text": "And so?"}]},
    ])
    assert [m.role for m in req.messages] == ["user", "assistant", "tool", "user"]
    assistant, tool = req.messages[1], req.messages[2]
    assert assistant.content == "Checking."
    assert [(c.id, c.name, json.loads(c.arguments_json)) for c in assistant.tool_calls] == [
        ("toolu_1", "get_weather", {"city": "Oslo"})]
    assert (tool.tool_call_id, tool.name, tool.content) == ("toolu_1", "get_weather", "Sunny")


def test_an_error_result_says_so():
    req = parse(messages=[{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": True}]}])
    assert req.messages[0].content == "Error: boom"


def test_fields_map_to_the_contract():
    req = parse(tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"},
                       {"type": "bash_20250124", "name": "bash"}],
                tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
                stop_sequences=["END", ""], temperature=0.2, top_p=0.5, top_k=40, max_tokens=7,
                thinking={"type": "enabled", "budget_tokens": 1024}, metadata={"user_id": "u"})
    assert [t.name for t in req.tools] == ["get_weather"]
    assert req.tool_choice.mode == pb.ToolChoice.MODE_FUNCTION and req.tool_choice.function_name == "get_weather"
    assert req.parallel_tool_calls is False
    assert list(req.stop) == ["END"] and req.max_tokens == 7 and req.top_k == 40
    assert parse(tools=[WEATHER], tool_choice={"type": "any"}).tool_choice.mode == pb.ToolChoice.MODE_REQUIRED
    assert parse(tools=[WEATHER], tool_choice={"type": "none"}).tool_choice.mode == pb.ToolChoice.MODE_NONE


def test_output_config_format_is_a_schema_constraint():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    req = parse(output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}})
    assert json.loads(req.constraint.json_schema) == schema
    assert json.loads(parse(output_format={"type": "json_schema", "schema": schema}).constraint.json_schema) == schema


BAD = [
    {"model": "m", "max_tokens": 1, "messages": USER, "output_config": {"format": {"type": "xml"}}},
    {"model": "m", "max_tokens": 1, "messages": USER, "output_config": {"format": {"type": "json_schema"}}},
    {"max_tokens": 1, "messages": USER},
    {"model": "m", "messages": USER},
    {"model": "m", "max_tokens": 0, "messages": USER},
    {"model": "m", "max_tokens": 1},
    {"model": "m", "max_tokens": 1, "messages": []},
    {"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]},
    {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
    {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
    {"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}]},
    {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
    {"model": "m", "max_tokens": 1, "messages": USER, "system": 5},
    {"model": "m", "max_tokens": 1, "messages": USER, "tools": [{"name": "f"}]},
    {"model": "m", "max_tokens": 1, "messages": USER, "tools": [dict(WEATHER, name="a b")]},
    {"model": "m", "max_tokens": 1, "messages": USER, "tool_choice": {"type": "any"}},
    {"model": "m", "max_tokens": 1, "messages": USER, "tools": [WEATHER], "tool_choice": {"type": "tool"}},
    {"model": "m", "max_tokens": 1, "messages": USER, "tools": [WEATHER], "tool_choice": "auto"},
    {"model": "m", "max_tokens": 1, "messages": USER, "stop_sequences": ["a"] * 9},
    {"model": "m", "max_tokens": 1, "messages": USER, "temperature": "hot"},
    {"model": "m", "max_tokens": 1, "messages": USER, "mcp_servers": [{"url": "x"}]},
    {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "\ud800"}]},
]


def _applies(path: str, body: dict) -> bool:
    """count_tokens has no max_tokens, stop_sequences or temperature."""
    return path == "/v1/messages" or (body.get("max_tokens") == 1 and not {"stop_sequences", "temperature"} & set(body))


@pytest.mark.parametrize("path, body", [(path, body) for path in ("/v1/messages", "/v1/messages/count_tokens")
                                        for body in BAD if _applies(path, body)])
def test_bad_input_is_a_400_in_anthropics_shape(http, client, path, body):
    resp = post(http, body, path)
    assert resp.status_code == 400, resp.text
    assert set(resp.json) == {"type", "error"} and resp.json["type"] == "error"
    assert resp.json["error"]["type"] == "invalid_request_error" and resp.json["error"]["message"]
    assert not client.requests


def test_unknown_paths_and_bodies_get_anthropics_shape(http):
    resp = http.simulate_post("/v1/messages/batches", json={})
    assert resp.status_code == 404 and resp.json["error"]["type"] == "not_found_error"
    resp = http.simulate_post("/v1/messages", body=b"{", headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and resp.json["type"] == "error"
    resp = http.simulate_get("/v1/messages")
    assert resp.status_code == 405 and resp.json["type"] == "error"


@pytest.mark.parametrize("code, status, kind", [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 529, "overloaded_error"),
    (grpc.StatusCode.UNAVAILABLE, 529, "overloaded_error"),
    (grpc.StatusCode.NOT_FOUND, 404, "not_found_error"),
    (grpc.StatusCode.INTERNAL, 500, "api_error"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"),
])
def test_service_errors_have_anthropics_statuses(http, client, code, status, kind):
    client.script = [rpc_error(code, "details")]
    resp = post(http, {"model": "m", "max_tokens": 5, "messages": USER})
    assert resp.status_code == status and resp.json["error"]["type"] == kind, resp.text
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert resp.headers["retry-after"]


def test_x_api_key_is_accepted_like_a_bearer_key(client):
    http = client_for(client, metrics=False, api_keys=["sekret"])
    body = {"model": "m", "max_tokens": 5, "messages": USER}
    assert post(http, body, **{"x-api-key": "sekret"}).status_code == 200
    denied = post(http, body, **{"x-api-key": "wrong"})
    assert denied.status_code == 401 and denied.json["error"]["type"] == "authentication_error"
    assert post(http, body).json["error"]["type"] == "authentication_error"
    chat = http.simulate_post("/v1/chat/completions", json={"model": "m", "messages": USER},
                              headers={"x-api-key": "sekret"})
    assert chat.status_code == 200


# --- answers -------------------------------------------------------------------------------

def test_the_body_is_a_message(http):
    body = post(http, {"model": "m", "max_tokens": 5, "messages": USER}).json
    assert body["id"].startswith("msg_") and body["type"] == "message" and body["role"] == "assistant"
    assert body["content"] == [{"type": "text", "text": "Hello!"}]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"] == {"input_tokens": 3, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2,
                             "output_tokens": 3}


def test_calls_are_tool_use_blocks(http, client):
    client.script = [piece("Let me see."), calls(call("get_weather", '{"city":"Oslo"}', id="call_7")),
                     last("", TOOL_CALLS)]
    body = post(http, {"model": "m", "max_tokens": 50, "messages": USER, "tools": [WEATHER]}).json
    assert body["content"] == [{"type": "text", "text": "Let me see."},
                               {"type": "tool_use", "id": "call_7", "name": "get_weather", "input": {"city": "Oslo"}}]
    assert body["stop_reason"] == "tool_use"


def test_a_length_cut_is_max_tokens(http, client):
    client.script = [last("Hel", LENGTH)]
    assert post(http, {"model": "m", "max_tokens": 1, "messages": USER}).json["stop_reason"] == "max_tokens"


def test_the_stream_is_anthropics_event_sequence(http, client):
    client.script = [piece("Hel"), piece("lo"), calls(call("get_weather", '{"city":"Oslo"}')), last("", TOOL_CALLS)]
    resp = post(http, {"model": "m", "max_tokens": 50, "messages": USER, "tools": [WEATHER], "stream": True})
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    events = named_events(resp.text)
    assert [n for n, _ in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert events[0][1]["message"]["content"] == [] and events[0][1]["message"]["stop_reason"] is None
    assert [e["index"] for n, e in events if n.startswith("content_block")] == [0, 0, 0, 0, 1, 1, 1]
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "Hel"}
    assert events[6][1]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    assert events[7][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":"Oslo"}'}
    delta = events[9][1]
    assert delta["delta"]["stop_reason"] == "tool_use" and delta["usage"]["output_tokens"] == 3


def test_an_error_after_the_stream_started_is_an_error_event(http, client):
    client.script = [piece("Hel"), rpc_error(grpc.StatusCode.INTERNAL, "secret")]
    resp = post(http, {"model": "m", "max_tokens": 5, "messages": USER, "stream": True})
    name, event = named_events(resp.text)[-1]
    assert name == "error" and event == {"type": "error", "error": {"type": "api_error", "message": event["error"][
        "message"]}}
    assert "secret" not in resp.text and client.calls[-1].cancelled


def test_count_tokens_is_the_prompt_of_one_token(http, client):
    client.script = [last("x", LENGTH, prompt=42, completion=1)]
    resp = post(http, {"model": "m", "messages": USER, "tools": [WEATHER], "system": "S"},
                "/v1/messages/count_tokens")
    assert resp.status_code == 200 and resp.json == {"input_tokens": 42}
    sent = client.requests[-1]
    assert sent.max_tokens == 1 and [t.name for t in sent.tools] == ["get_weather"]
    assert [m.role for m in sent.messages] == ["system", "user"]
    assert client.calls[-1].cancelled
