"""Structured outputs and tool calling through the real edge and service on the real default
model, with the official openai client unchanged: ``chat.completions.parse`` with a
pydantic model, JSON schemas at temperature 1 (stream and not), and a tools round trip
(call, tool result, final answer), stream and not.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.helpers import MODEL

pytestmark = pytest.mark.model


class City(BaseModel):
    name: str = Field(max_length=24)
    country: str = Field(max_length=24)
    population: int = Field(ge=0)


def test_parse_returns_the_pydantic_object(oai):
    completion = oai.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about Paris."}],
        response_format=City, max_tokens=120, temperature=0.7, seed=1)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)
    assert City.model_validate_json(choice.message.content) == choice.message.parsed


SCHEMAS = [
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "count": {"type": "integer", "minimum": 1,
                                                                            "maximum": 9}},
     "required": ["ok", "count"], "additionalProperties": False},
    {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                                               "maxItems": 3}},
     "required": ["colour", "tags"], "additionalProperties": False},
    {"type": "object", "properties": {"point": {"type": "object", "properties": {
        "x": {"type": "number", "minimum": -10, "maximum": 10}, "y": {"type": "number"}},
        "required": ["x", "y"], "additionalProperties": False}}, "required": ["point"]},
]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
@pytest.mark.parametrize("schema", SCHEMAS, ids=["bool-int", "enum-array", "nested"])
def test_json_schema_at_temperature_one(oai, schema, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    for seed in range(3):
        args = dict(model=MODEL, messages=[{"role": "user", "content": "Answer in JSON."}], max_tokens=150,
                    temperature=1.0, seed=seed, response_format=fmt)
        if stream:
            text, finish = "", None
            for chunk in oai.chat.completions.create(stream=True, **args):
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
        else:
            choice = oai.chat.completions.create(**args).choices[0]
            text, finish = choice.message.content, choice.finish_reason
        if finish == "length":
            continue  # max_tokens cut it: the caller's limit
        assert finish == "stop"
        jsonschema.validate(json.loads(text), schema)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                   "required": ["city"], "additionalProperties": False}}}


def first_turn(oai, stream: bool):
    """A call forced with tool_choice "required": (the assistant message as a dict, the call)."""
    args = dict(model=MODEL, messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
                tools=[WEATHER], tool_choice="required", parallel_tool_calls=False, temperature=0.0,
                max_tokens=60)
    if not stream:
        choice = oai.chat.completions.create(**args).choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        call = choice.message.tool_calls[0]
        return call.id, call.function.name, call.function.arguments
    calls, finish, content = [], None, ""
    for chunk in oai.chat.completions.create(stream=True, **args):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        calls += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert "<tool_call>" not in content and content == ""
    assert len(calls) == 1  # the whole call in one delta (Ollama's classic format)
    call = calls[0]
    assert call.index == 0 and call.type == "function"
    return call.id, call.function.name, call.function.arguments


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_tools_round_trip(oai, stream):
    call_id, name, arguments = first_turn(oai, stream)
    assert call_id.startswith("call_") and name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])

    history = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "Sunny, 21 degrees."},
    ]
    final = oai.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], tool_choice="none",
                                        temperature=0.0, max_tokens=40)
    choice = final.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content and not choice.message.tool_calls


def test_unknown_tool_choice_and_bad_schema_are_400s_naming_the_field(oai):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[WEATHER],
                                    tool_choice={"type": "function", "function": {"name": "nope"}})
    assert refused.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}})
    assert refused.value.body["param"].startswith("response_format")
    bad_tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[bad_tool],
                                    tool_choice="required")
    assert refused.value.body["param"] == "tools[0].function.parameters"
