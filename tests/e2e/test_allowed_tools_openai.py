"""``tool_choice`` ``allowed_tools`` on /v1/chat/completions with the official openai client and the
real default model: the call is always one of the allowed tools, whichever the model would pick."""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import MODEL

pytestmark = pytest.mark.model


def function(name: str, description: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"],
        "additionalProperties": False}}}


TOOLS = [function("get_weather", "Get the weather of a city"), function("get_time", "Get the local time of a city")]


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_the_call_is_one_of_the_allowed_tools(oai, stream):
    choice = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "get_time"}}]}}
    args = dict(model=MODEL, messages=[{"role": "user", "content": "What is the weather in Oslo?"}], tools=TOOLS,
                tool_choice=choice, parallel_tool_calls=False, temperature=0, max_tokens=60)
    if stream:
        calls = [c for chunk in oai.chat.completions.create(stream=True, **args) if chunk.choices
                 for c in chunk.choices[0].delta.tool_calls or []]
    else:
        calls = oai.chat.completions.create(**args).choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    assert set(json.loads(calls[0].function.arguments)) == {"city"}
