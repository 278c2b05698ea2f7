"""POST /v1/responses through the real edge and service on the real default model, with the
official openai client unchanged: ``responses.create`` plain and streamed, a function tool
round trip (call, output, answer), ``responses.parse`` with a json_schema format, bad input
(400s in OpenAI's shape, the service serving on), and concurrent users.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.helpers import MODEL

pytestmark = pytest.mark.model

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                          "required": ["city"], "additionalProperties": False}, "strict": True}


def test_create_answers_with_a_message(oai):
    response = oai.responses.create(model=MODEL, instructions="Answer briefly.", input="What is the capital of "
                                    "France?", max_output_tokens=24, temperature=0)
    assert response.id.startswith("resp_") and response.model == MODEL
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    assert response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 24
    if response.status == "incomplete":
        assert response.incomplete_details.reason == "max_output_tokens"


def test_stream_gives_the_event_sequence_and_the_same_text(oai):
    args = dict(model=MODEL, input="Name three colours.", max_output_tokens=24, temperature=0)
    with oai.responses.stream(**args) as stream:
        events = list(stream)
    # A length cut ends with response.incomplete, as OpenAI's does (the helper's
    # get_final_response() then raises): the last event carries the response either way.
    final = events[-1].response
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed" if final.status == "completed" else "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text
    assert final.output_text == oai.responses.create(**args).output_text  # temperature 0: the same text
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_function_tool_round_trip(oai, stream):
    question = [{"role": "user", "content": "What is the weather in Oslo?"}]
    args = dict(model=MODEL, input=question, tools=[WEATHER, {"type": "web_search_preview"}],
                tool_choice="required", parallel_tool_calls=False, temperature=0, max_output_tokens=60)
    if stream:
        with oai.responses.stream(**args) as s:
            kinds = [e.type for e in s]
            first = s.get_final_response()
        assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    else:
        first = oai.responses.create(**args)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])

    history = question + [calls[0].model_dump(exclude_none=True),
                          {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C."}]
    final = oai.responses.create(model=MODEL, input=history, tools=[WEATHER], tool_choice="none", temperature=0,
                                 max_output_tokens=40)
    assert final.output_text and not [i for i in final.output if i.type == "function_call"]


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population: int = Field(ge=0, le=100_000_000)  # unbounded, a small model can loop digits


def test_parse_with_a_json_schema_format(oai):
    response = oai.responses.parse(model=MODEL, input="Tell me about Paris.", text_format=City,
                                   max_output_tokens=120, temperature=0.7)
    if response.status == "incomplete":
        pytest.fail(f"cut by max_output_tokens: {response.output_text!r}")
    assert isinstance(response.output_parsed, City)


def test_json_object_format(oai):
    response = oai.responses.create(model=MODEL, input="Describe a cat in JSON.", text={"format": {"type":
                                    "json_object"}}, max_output_tokens=80, temperature=0)
    if response.status == "completed":
        assert isinstance(json.loads(response.output_text), dict)


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type"),
    ({"model": MODEL, "input": "hi", "tools": [{"type": "function", "name": "f g"}]}, "tools[0].name"),
    ({"model": MODEL, "input": "hi", "max_output_tokens": -1}, "max_output_tokens"),
])
def test_bad_input_is_a_400_and_the_service_serves_on(oai, body, param):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.responses.create(**body)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param
    assert oai.responses.create(model=MODEL, input="Hi", max_output_tokens=2).output


def test_an_unknown_model_is_a_404(oai):
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no-such-model:1b", input="Hi")


def test_concurrent_users_each_get_their_own_answer(oai):
    """Four users at once (two slots, two queue places): each stream and body is whole and
    answers its own question (temperature 0: the same as that question asked alone)."""
    questions = ["Count from 1 to 5.", "Name a fruit.", "Say hello in French.", "What is 2 + 2?"]
    alone = {q: oai.responses.create(model=MODEL, input=q, max_output_tokens=12, temperature=0).output_text
             for q in questions[:2]}

    def ask(i: int) -> tuple[str, str]:
        q = questions[i]
        if i % 2:
            with oai.responses.stream(model=MODEL, input=q, max_output_tokens=12, temperature=0) as s:
                return q, list(s)[-1].response.output_text
        return q, oai.responses.create(model=MODEL, input=q, max_output_tokens=12, temperature=0).output_text

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert all(text for _, text in answers)
    for q, text in answers:
        if q in alone:
            assert text == alone[q]
