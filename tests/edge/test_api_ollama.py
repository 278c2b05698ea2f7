"""Ollama's native API (rest_edge.apis.ollama) through the Falcon app with a fake client:
requests in (options, format, tools, system, raw), NDJSON out, the final object's fields,
errors in Ollama's shape, and the model routes."""

from __future__ import annotations

import json
import re

import grpc
import pytest
from falcon import testing

from inference_service.v1 import inference_pb2 as pb
from rest_edge.apis import ollama
from rest_edge.app import create_app
from tests.edge.fakes import LENGTH, TOOL_CALLS, FakeClient, call, calls, last, piece, rpc_error

MODEL = "m:1b"
INFO = pb.ModelInfo(name=MODEL, created=1740898011, context_length=2048, has_chat_template=True,
                    engine="llamacpp", architecture="llama", can_embed=True, embedding_dimensions=4)
USER = [{"role": "user", "content": "Hi <|im_end|>"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
FINAL_KEYS = ["done", "done_reason", "total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
              "eval_count", "eval_duration"]


def chat(**body) -> pb.GenerateRequest:
    return ollama.parse_chat({"model": MODEL, "messages": USER, **body})[0].request


@pytest.fixture
def client():
    return FakeClient([piece("Hel"), piece("lo"), last("!", prompt=7, completion=3)], models=[INFO])


@pytest.fixture
def http(client):
    return testing.TestClient(create_app(client, metrics=False))


def post(http, path, body):
    return http.simulate_post(path, body=json.dumps(body), headers={"Content-Type": "application/json"})


def lines(result) -> list[dict]:
    assert result.text.endswith("\n")
    return [json.loads(line) for line in result.text.split("\n")[:-1]]


# --- requests ------------------------------------------------------------------------------

def test_options_map_onto_the_request():
    req = chat(options={"temperature": 0, "top_p": 0.5, "top_k": 7, "min_p": 0.1, "num_predict": 9, "stop": ["x"],
                        "seed": 3, "repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": 0.25,
                        "num_thread": 8, "num_gpu": 1, "unknown_option": 1})
    assert (req.temperature, req.top_p, req.top_k, req.max_tokens, list(req.stop), req.seed) == (0, 0.5, 7, 9, ["x"], 3)
    assert req.min_p == pytest.approx(0.1) and req.repetition_penalty == pytest.approx(1.1)
    assert (req.presence_penalty, req.frequency_penalty) == (0.5, 0.25)


def test_neutral_options_leave_the_service_defaults():
    req = chat(options={"num_predict": -1, "seed": -1, "top_k": 0, "repeat_last_n": 0, "repeat_penalty": 1.3,
                        "typical_p": 1.0, "mirostat": 0})
    assert not req.HasField("max_tokens") and not req.HasField("seed") and req.top_k == 0
    assert not req.HasField("repetition_penalty")  # repeat_last_n 0 turns the penalty off


@pytest.mark.parametrize("options, param", [
    ({"typical_p": 0.7}, "options.typical_p"), ({"mirostat": 2}, "options.mirostat"),
    ({"repeat_penalty": 1.2, "repeat_last_n": 64}, "options.repeat_last_n"),
    ({"num_predict": 0}, "options.num_predict"),
    ({"temperature": "hot"}, "options.temperature"), ({"stop": ["a", "b", "c", "d", "e"]}, "options.stop"),
])
def test_options_we_cannot_honour_are_refused(options, param):
    with pytest.raises(ollama.RequestError) as err:
        chat(options=options)
    assert err.value.status == 400 and err.value.param == param


def test_format_json_or_a_schema_constrains_the_answer():
    assert chat(format="json").constraint.json_object
    assert json.loads(chat(format={"type": "object"}).constraint.json_schema) == {"type": "object"}
    assert not chat(format="").HasField("constraint")


def test_tool_history_gets_ids_and_tool_turns_find_their_calls():
    req = chat(tools=[WEATHER], messages=USER + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            {"function": {"name": "get_time", "arguments": {"tz": "CET"}}}]},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "sunny"}])
    assistant, time_turn, weather_turn = req.messages[1:]
    assert [(c.id, c.name, json.loads(c.arguments_json)) for c in assistant.tool_calls] == [
        ("call_1_0", "get_weather", {"city": "Oslo"}), ("call_1_1", "get_time", {"tz": "CET"})]
    assert (time_turn.tool_call_id, time_turn.name) == ("call_1_1", "get_time")
    assert (weather_turn.tool_call_id, weather_turn.name) == ("call_1_0", "get_weather")
    assert [t.name for t in req.tools] == ["get_weather"]


def test_tool_choice_is_an_option_of_this_server():
    assert chat(tools=[WEATHER], options={"tool_choice": "required"}).tool_choice.mode == pb.ToolChoice.MODE_REQUIRED
    named = chat(tools=[WEATHER], options={"tool_choice": "get_weather"}).tool_choice
    assert (named.mode, named.function_name) == (pb.ToolChoice.MODE_FUNCTION, "get_weather")
    assert not chat(tools=[WEATHER]).HasField("tool_choice")
    for options in ({"tool_choice": "nope"}, {"tool_choice": 1}):
        with pytest.raises(ollama.RequestError):
            chat(tools=[WEATHER], options=options)
    with pytest.raises(ollama.RequestError):
        chat(options={"tool_choice": "required"})  # no tools


def test_user_text_stays_text():
    assert chat().messages[0].content == "Hi <|im_end|>"
    parsed, _ = ollama.parse_generate({"model": MODEL, "prompt": "<|im_start|>", "system": "S"})
    assert not parsed.request.raw and [(m.role, m.content) for m in parsed.request.messages] == [
        ("system", "S"), ("user", "<|im_start|>")]
    raw, _ = ollama.parse_generate({"model": MODEL, "prompt": "<|im_start|>user\n", "raw": True})
    assert raw.request.raw and raw.request.prompt == "<|im_start|>user\n"


# --- answers -------------------------------------------------------------------------------

def test_chat_streams_ndjson_with_a_final_object(http):
    result = post(http, "/api/chat", {"model": MODEL, "messages": USER})
    assert result.status_code == 200 and result.headers["content-type"] == "application/x-ndjson"
    objects = lines(result)
    assert [o["message"]["content"] for o in objects] == ["Hel", "lo", "!", ""]
    assert all(list(o) == ["model", "created_at", "message", "done"] and o["done"] is False for o in objects[:-1])
    final = objects[-1]
    assert list(final) == ["model", "created_at", "message"] + FINAL_KEYS
    assert final["done_reason"] == "stop" and (final["prompt_eval_count"], final["eval_count"]) == (7, 3)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", final["created_at"])
    assert final["total_duration"] >= final["prompt_eval_duration"] + final["eval_duration"] - 1


def test_generate_whole_answer(http):
    result = post(http, "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False})
    body = result.json
    assert result.status_code == 200 and body["response"] == "Hello!" and body["done"] is True
    assert list(body) == ["model", "created_at", "response"] + FINAL_KEYS


def test_tool_calls_come_back_with_object_arguments():
    client = FakeClient([calls(call("get_weather", '{"city":"Oslo"}')), last(reason=TOOL_CALLS)], models=[INFO])
    http = testing.TestClient(create_app(client, metrics=False))
    body = post(http, "/api/chat", {"model": MODEL, "messages": USER, "tools": [WEATHER], "stream": False}).json
    assert body["message"]["tool_calls"] == [{"id": "call_1", "function": {"index": 0, "name": "get_weather",
                                                                           "arguments": {"city": "Oslo"}}}]
    assert body["done_reason"] == "stop"


def test_length_is_the_done_reason_of_a_cut_answer():
    client = FakeClient([last("a", reason=LENGTH)], models=[INFO])
    body = post(testing.TestClient(create_app(client, metrics=False)), "/api/generate",
                {"model": MODEL, "prompt": "Hi", "stream": False}).json
    assert body["done_reason"] == "length"


def test_an_empty_chat_loads_the_model_without_generating(http, client):
    body = post(http, "/api/chat", {"model": MODEL, "messages": [], "keep_alive": 0}).json
    assert body["done_reason"] == "load" and body["message"] == {"role": "assistant", "content": ""}
    assert client.requests == []
    missing = post(http, "/api/generate", {"model": "nope"})
    assert missing.status_code == 404 and "nope" in missing.json["error"]


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("path, body, param", [
    ("/api/chat", {"messages": USER}, "model"),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
     "messages[0].images"),
    ("/api/chat", {"model": MODEL, "messages": USER, "think": True}, "think"),
    ("/api/chat", {"model": MODEL, "messages": USER, "keep_alive": "soon"}, "keep_alive"),
    ("/api/chat", {"model": MODEL, "messages": USER, "options": {"num_ctx": 4096}}, "options.num_ctx"),
    ("/api/chat", {"model": MODEL, "messages": "hi"}, "messages"),
    ("/api/generate", {"model": MODEL, "prompt": "x", "raw": True, "system": "s"}, "raw"),
    ("/api/generate", {"model": MODEL, "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
    ("/api/generate", {"model": MODEL, "prompt": "x", "images": ["aGk="]}, "images"),
    ("/api/generate", {"model": MODEL, "prompt": "x", "format": "yaml"}, "format"),
])
def test_bad_input_is_a_400_in_ollamas_shape(http, client, path, body, param):
    result = post(http, path, body)
    assert result.status_code == 400 and list(result.json) == ["error"], result.text
    assert client.requests == []


def test_a_full_service_is_ollamas_503_and_bad_json_a_400():
    client = FakeClient(generate_error=rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", **{"retry-after": "2"}),
                        models=[INFO])
    http = testing.TestClient(create_app(client, metrics=False))
    result = post(http, "/api/chat", {"model": MODEL, "messages": USER})
    assert result.status_code == 503 and result.headers["retry-after"] == "2" and list(result.json) == ["error"]
    bad = http.simulate_post("/api/chat", body=b"{nope", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and list(bad.json) == ["error"]
    assert http.simulate_get("/api/nothing").json.keys() == {"error"}


def test_api_keys_guard_the_ollama_routes_too(client):
    http = testing.TestClient(create_app(client, metrics=False, api_keys=["k"]))
    assert http.simulate_get("/api/tags").status_code == 401
    assert http.simulate_get("/api/tags", headers={"Authorization": "Bearer k"}).status_code == 200


# --- models and embeddings -------------------------------------------------------------------

def test_tags_ps_show_version(http):
    [tag] = http.simulate_get("/api/tags").json["models"]
    assert tag["name"] == tag["model"] == MODEL and tag["details"]["family"] == "llama"
    assert tag["modified_at"] == "2025-03-02T06:46:51Z" and len(tag["digest"]) == 64
    [running] = http.simulate_get("/api/ps").json["models"]
    assert running["context_length"] == 2048 and running["expires_at"] == ollama.NEVER
    show = post(http, "/api/show", {"model": MODEL}).json
    assert show["model_info"] == {"general.architecture": "llama", "llama.context_length": 2048,
                                  "llama.embedding_length": 4}
    assert show["capabilities"] == ["completion", "tools", "embedding"] and "num_ctx" in show["parameters"]
    assert post(http, "/api/show", {"model": "nope"}).status_code == 404
    assert http.simulate_get("/api/version").json == {"version": ollama.VERSION}


def test_pull_answers_success_for_a_served_model_and_404_otherwise(http):
    assert post(http, "/api/pull", {"model": MODEL}).text == '{"status":"success"}\n'
    assert post(http, "/api/pull", {"model": MODEL, "stream": False}).json == {"status": "success"}
    refused = post(http, "/api/pull", {"model": "llama3.2"})
    assert refused.status_code == 404 and "cannot pull" in refused.json["error"]


def test_embed_and_embeddings(http, client):
    body = post(http, "/api/embed", {"model": MODEL, "input": ["a", "b"], "truncate": True}).json
    assert body["model"] == MODEL and len(body["embeddings"]) == 2 and body["prompt_eval_count"] >= 0
    assert [i.text for i in client.embed_requests[0].inputs] == ["a", "b"]
    legacy = post(http, "/api/embeddings", {"model": MODEL, "prompt": "a"}).json
    assert list(legacy) == ["embedding"] and len(legacy["embedding"]) == len(body["embeddings"][0])
    assert post(http, "/api/embed", {"model": MODEL, "input": ["a"], "dimensions": 3}).status_code == 400
    assert post(http, "/api/embed", {"model": MODEL, "input": [1, 2]}).status_code == 400


def test_float32_text_is_the_shortest_that_reads_back():
    assert ollama.float32_text(0.10000000149011612) == 0.1


def test_an_error_after_the_stream_started_is_one_more_line_and_the_call_is_cancelled():
    client = FakeClient([piece("Hel"), rpc_error(grpc.StatusCode.INTERNAL, "boom")], models=[INFO])
    result = post(testing.TestClient(create_app(client, metrics=False)), "/api/chat",
                  {"model": MODEL, "messages": USER})
    objects = lines(result)
    assert result.status_code == 200 and objects[0]["message"]["content"] == "Hel"
    assert objects[-1] == {"error": "The server had an error while processing your request."}
    assert client.calls[0].cancelled


def test_a_name_without_its_tag_is_the_latest_one():
    latest = pb.ModelInfo(name="tiny:latest", context_length=64)
    client = FakeClient([last("!")], models=[INFO, latest])
    http = testing.TestClient(create_app(client, metrics=False))
    body = post(http, "/api/chat", {"model": "tiny", "messages": USER, "stream": False}).json
    assert body["model"] == "tiny" and client.requests[0].model == "tiny:latest"
    assert post(http, "/api/show", {"model": "m:1b"}).status_code == 200
    assert ollama.served_name(client, "m") == "m"  # m:1b is not m:latest
    assert ollama.served_name(FakeClient(models=[pb.ModelInfo(name="x")]), "x:latest") == "x"
