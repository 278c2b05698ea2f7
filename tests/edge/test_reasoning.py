"""A thinking model's reasoning on every API (the real app over a scripted client): apart from
the answer, where each API puts it, streamed and whole; the switches that turn thinking off
reach the service; a model that does not think answers exactly as before."""

from __future__ import annotations

import json

import pytest

from inference_service.v1 import inference_pb2 as pb
from tests.edge.fakes import FakeClient, last
from tests.helpers import client_for, json_lines

MODEL = "thinker"
USER = [{"role": "user", "content": "Capital of France?"}]


def thinking(*_args) -> list[pb.GenerateResponse]:
    return [pb.GenerateResponse(reasoning="Let me ", token_ids=[1]),
            pb.GenerateResponse(reasoning="see.", token_ids=[2]),
            pb.GenerateResponse(text="Paris.", token_ids=[3]),
            last()]


@pytest.fixture
def fake():
    return FakeClient(thinking)


def sse(text: str) -> list:
    frames = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    return [f if f == "[DONE]" else json.loads(f) for f in frames]


def test_chat_answers_reasoning_beside_the_content(fake):
    body = client_for(fake).simulate_post("/v1/chat/completions", json={"model": MODEL, "messages": USER}).json
    message = body["choices"][0]["message"]
    assert (message["content"], message["reasoning"]) == ("Paris.", "Let me see.")


def test_chat_streams_reasoning_deltas_then_content(fake):
    text = client_for(fake).simulate_post("/v1/chat/completions",
                                          json={"model": MODEL, "messages": USER, "stream": True}).text
    deltas = [f["choices"][0]["delta"] for f in sse(text) if f != "[DONE]"]
    assert "".join(d.get("reasoning", "") for d in deltas) == "Let me see."
    assert "".join(d["content"] for d in deltas) == "Paris."
    assert all("<think>" not in d["content"] for d in deltas)


def test_reasoning_format_picks_the_field_or_leaves_it_inline(fake):
    app = client_for(fake)
    body = app.simulate_post("/v1/chat/completions", json={"model": MODEL, "messages": USER,
                                                           "reasoning_format": "deepseek"}).json
    assert body["choices"][0]["message"]["reasoning_content"] == "Let me see."
    body = app.simulate_post("/v1/chat/completions", json={"model": MODEL, "messages": USER,
                                                           "reasoning_format": "none"}).json
    assert body["choices"][0]["message"]["content"] == "<think>Let me see.</think>Paris."
    text = app.simulate_post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "stream": True,
                                                           "reasoning_format": "none"}).text
    deltas = [f["choices"][0]["delta"] for f in sse(text) if f != "[DONE]"]
    assert "".join(d["content"] for d in deltas) == "<think>Let me see.</think>Paris."
    bad = app.simulate_post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "reasoning_format": 3})
    assert bad.status_code == 400 and bad.json["error"]["param"] == "reasoning_format"


@pytest.mark.parametrize("fields", [{"reasoning_effort": "none"}, {"reasoning_effort": "minimal"},
                                    {"chat_template_kwargs": {"enable_thinking": False}}])
def test_switches_that_turn_thinking_off_reach_the_service(fake, fields):
    response = client_for(fake).simulate_post("/v1/chat/completions",
                                              json={"model": MODEL, "messages": USER, **fields})
    assert response.status_code == 200
    assert fake.requests[-1].HasField("thinking") and fake.requests[-1].thinking is False


def test_a_high_effort_or_no_switch_leaves_the_template_default(fake):
    app = client_for(fake)
    app.simulate_post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "reasoning_effort": "high"})
    assert not fake.requests[-1].HasField("thinking")
    bad = app.simulate_post("/v1/chat/completions", json={"model": MODEL, "messages": USER,
                                                          "reasoning_effort": "extreme"})
    assert bad.status_code == 400 and bad.json["error"]["param"] == "reasoning_effort"
    bad = app.simulate_post("/v1/chat/completions", json={"model": MODEL, "messages": USER,
                                                          "chat_template_kwargs": {"other": 1}})
    assert bad.status_code == 400 and bad.json["error"]["param"] == "chat_template_kwargs"


def test_responses_gives_a_reasoning_item_before_the_message(fake):
    app = client_for(fake)
    body = app.simulate_post("/v1/responses", json={"model": MODEL, "input": "Capital of France?"}).json
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["reasoning", "message"]
    assert body["output"][0]["content"] == [{"type": "reasoning_text", "text": "Let me see."}]
    assert body["output"][1]["content"][0]["text"] == "Paris."
    app.simulate_post("/v1/responses", json={"model": MODEL, "input": "x", "reasoning": {"effort": "none"}})
    assert fake.requests[-1].thinking is False
    text = app.simulate_post("/v1/responses", json={"model": MODEL, "input": "x", "stream": True}).text
    names = [line[len("event: "):] for line in text.splitlines() if line.startswith("event: ")]
    assert names.index("response.reasoning_text.delta") < names.index("response.reasoning_text.done") \
        < names.index("response.output_text.delta")


def test_messages_gives_a_thinking_block_before_the_text(fake):
    app = client_for(fake)
    body = app.simulate_post("/v1/messages", json={"model": MODEL, "max_tokens": 16, "messages": USER}).json
    assert [b["type"] for b in body["content"]] == ["thinking", "text"]
    assert body["content"][0]["thinking"] == "Let me see." and body["content"][1]["text"] == "Paris."
    app.simulate_post("/v1/messages", json={"model": MODEL, "max_tokens": 16, "messages": USER,
                                            "thinking": {"type": "disabled"}})
    assert fake.requests[-1].thinking is False
    text = app.simulate_post("/v1/messages", json={"model": MODEL, "max_tokens": 16, "messages": USER,
                                                   "stream": True}).text
    assert '"thinking_delta"' in text and text.index('"thinking_delta"') < text.index('"text_delta"')


def test_ollama_gives_thinking_apart_from_the_content(fake):
    app = client_for(fake)
    body = app.simulate_post("/api/chat", json={"model": MODEL, "messages": USER, "stream": False}).json
    assert (body["message"]["content"], body["message"]["thinking"]) == ("Paris.", "Let me see.")
    lines = json_lines(app.simulate_post("/api/generate", json={"model": MODEL, "prompt": "x"}).text, "generate")
    assert "".join(line.get("thinking", "") for line in lines) == "Let me see."
    assert "".join(line["response"] for line in lines) == "Paris."
    app.simulate_post("/api/chat", json={"model": MODEL, "messages": USER, "think": False})
    assert fake.requests[-1].thinking is False


def test_a_model_that_does_not_think_answers_as_before():
    fake = FakeClient([pb.GenerateResponse(text="Hi", token_ids=[1]), last()])
    body = client_for(fake).simulate_post("/v1/chat/completions", json={"model": MODEL, "messages": USER}).json
    assert "reasoning" not in body["choices"][0]["message"]


# --- EDGE_CHAT_STREAM=openai: OpenAI's own stream shapes --------------------------------------

def test_the_openai_stream_sends_the_role_once_and_null_content_beside_calls():
    from tests.edge.fakes import call, calls

    fake = FakeClient([pb.GenerateResponse(text="Hel", token_ids=[1]), pb.GenerateResponse(text="lo", token_ids=[2]),
                       calls(call("get_weather", '{"city": "Paris"}')), last(reason=pb.FINISH_REASON_TOOL_CALLS)])
    body = {"model": MODEL, "messages": USER, "stream": True,
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]}
    strict = [f for f in sse(client_for(fake, chat_stream="openai").simulate_post("/v1/chat/completions",
                                                                                  json=body).text) if f != "[DONE]"]
    deltas = [f["choices"][0]["delta"] for f in strict]
    assert [("role" in d) for d in deltas] == [True] + [False] * (len(deltas) - 1)
    with_calls = [d for d in deltas if "tool_calls" in d]
    assert with_calls and all(d["content"] is None for d in with_calls)
    assert deltas[-1] == {} and strict[-1]["choices"][0]["finish_reason"] == "tool_calls"
    reference = [f for f in sse(client_for(fake).simulate_post("/v1/chat/completions", json=body).text)
                 if f != "[DONE]"]
    assert all(f["choices"][0]["delta"]["role"] == "assistant" for f in reference)  # the default is unchanged


def test_the_sdk_stream_helper_works_with_the_openai_stream():
    """openai-python's chat.completions.stream() joins every chunk's role: with the reference
    stream the message's role came out 'assistantassistant…'."""
    import httpx
    import openai

    fake = FakeClient([pb.GenerateResponse(text="Hel", token_ids=[1]), pb.GenerateResponse(text="lo", token_ids=[2]),
                       last()])
    app = client_for(fake, chat_stream="openai").app
    http = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://edge")
    client = openai.OpenAI(base_url="http://edge/v1", api_key="unused", http_client=http, max_retries=0)
    with client.chat.completions.stream(model=MODEL, messages=USER) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.role == "assistant" and final.choices[0].message.content == "Hello"
