"""Anthropic's Messages API through the real edge and service on the real default model, with
the official anthropic client unchanged: ``messages.create``, ``messages.stream``, a tool
round trip (tool_use, tool_result, answer), ``messages.count_tokens``, errors in Anthropic's
shape, ``x-api-key`` auth on an edge with keys, and concurrent users.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import anthropic
import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.conftest import start_edge, stop_process
from tests.e2e.helpers import MODEL

pytestmark = pytest.mark.model

WEATHER = {"name": "get_weather", "description": "Get the weather of a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                            "required": ["city"], "additionalProperties": False}}
QUESTION = [{"role": "user", "content": "What is the weather in Oslo?"}]
# The SDK no longer has sampling arguments (newer Claude models ignore them); the API has
# ``temperature`` and the edge honours it.
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture
def claude(edge) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=edge.base_url, api_key="unused", max_retries=0, timeout=300.0)
    yield client
    client.close()


def test_create_answers_with_a_text_block(claude):
    message = claude.messages.create(model=MODEL, max_tokens=24, system="Answer briefly.", **GREEDY,
                                     messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert message.id.startswith("msg_") and message.role == "assistant" and message.model == MODEL
    assert message.stop_reason in ("end_turn", "max_tokens")
    [block] = message.content
    assert block.type == "text" and block.text
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens > 0
    assert 0 < message.usage.output_tokens <= 24


def test_stream_gives_the_same_message(claude):
    args = dict(model=MODEL, max_tokens=24, messages=[{"role": "user", "content": "Name a colour."}], **GREEDY)
    with claude.messages.stream(**args) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    created = claude.messages.create(**args)
    assert final.content[0].text == created.content[0].text  # temperature 0
    assert final.stop_reason == created.stop_reason and final.usage.output_tokens == created.usage.output_tokens
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == \
        created.usage.input_tokens + created.usage.cache_read_input_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_tool_round_trip(claude, stream):
    args = dict(model=MODEL, max_tokens=60, messages=QUESTION, **GREEDY,
                tools=[WEATHER, {"type": "web_search_20250305", "name": "web_search"}],
                tool_choice={"type": "any", "disable_parallel_tool_use": True})
    if stream:
        with claude.messages.stream(**args) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(**args)
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    jsonschema.validate(use.input, WEATHER["input_schema"])

    history = QUESTION + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C."}]},
    ]
    final = claude.messages.create(model=MODEL, max_tokens=40, messages=history, tools=[WEATHER], **GREEDY,
                                   tool_choice={"type": "none"})
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.content and all(b.type == "text" for b in final.content)


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)


def test_parse_with_an_output_format(claude):
    # The SDK moves maxLength into the description, so at temperature 1 a 135M model can
    # ramble past max_tokens inside a string; greedy decoding gives one short, whole answer.
    message = claude.messages.parse(model=MODEL, max_tokens=80, output_format=City,
                                    extra_body={"temperature": 0},  # parse() has no temperature argument
                                    messages=[{"role": "user", "content": "Tell me about Paris."}])
    assert message.stop_reason == "end_turn", message.content
    assert isinstance(message.parsed_output, City)


def test_count_tokens_is_the_prompt_of_the_message(claude):
    prompt = dict(model=MODEL, system="You are terse.", messages=QUESTION, tools=[WEATHER])
    count = claude.messages.count_tokens(**prompt).input_tokens
    message = claude.messages.create(max_tokens=1, **prompt)
    assert count == message.usage.input_tokens + message.usage.cache_read_input_tokens
    assert count > claude.messages.count_tokens(model=MODEL, messages=QUESTION).input_tokens  # tools count


@pytest.mark.parametrize("body", [
    {"model": MODEL, "messages": QUESTION},  # no max_tokens
    {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
    {"model": MODEL, "max_tokens": 5, "messages": QUESTION, "tools": [{"name": "no spaces"}]},
    {"model": MODEL, "max_tokens": 5, "messages": QUESTION, "tool_choice": {"type": "any"}},
])
def test_bad_input_is_a_400_in_anthropics_shape(claude, body):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.post("/v1/messages", body=body, cast_to=object)
    assert caught.value.status_code == 400
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "invalid_request_error"
    assert claude.messages.create(model=MODEL, max_tokens=2, messages=QUESTION).content is not None


def test_an_unknown_model_is_not_found(claude):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model:1b", max_tokens=2, messages=QUESTION)
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_x_api_key_on_an_edge_with_keys(service, tmp_path):
    keyed = start_edge(service.address, tmp_path / "gunicorn.log", EDGE_API_KEYS="sk-one,sk-two")
    try:
        ok = anthropic.Anthropic(base_url=keyed.base_url, api_key="sk-two", max_retries=0, timeout=300.0)
        assert ok.messages.count_tokens(model=MODEL, messages=QUESTION).input_tokens > 0
        wrong = anthropic.Anthropic(base_url=keyed.base_url, api_key="sk-three", max_retries=0, timeout=300.0)
        with pytest.raises(anthropic.AuthenticationError) as caught:
            wrong.messages.create(model=MODEL, max_tokens=2, messages=QUESTION)
        assert caught.value.body["error"]["type"] == "authentication_error"
    finally:
        stop_process(keyed.process)


def test_concurrent_users_each_get_their_own_answer(claude):
    """Four users at once (two slots, two queue places), streams and bodies: each answer is
    whole and the same as its question asked alone (temperature 0)."""
    questions = ["Count from 1 to 5.", "Name a fruit.", "Say hello in French.", "What is 2 + 2?"]

    def args(q):
        return dict(model=MODEL, max_tokens=12, messages=[{"role": "user", "content": q}], **GREEDY)

    alone = {q: claude.messages.create(**args(q)).content[0].text for q in questions[:2]}

    def ask(i: int) -> tuple[str, str]:
        q = questions[i]
        if i % 2:
            with claude.messages.stream(**args(q)) as s:
                return q, s.get_final_message().content[0].text
        return q, claude.messages.create(**args(q)).content[0].text

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert all(text for _, text in answers)
    for q, text in answers:
        if q in alone:
            assert text == alone[q], json.dumps(answers)
