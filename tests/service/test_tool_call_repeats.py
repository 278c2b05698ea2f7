"""The default model with parallel tool calls allowed: it used to write the same call again and
again until max_tokens (finish "length", so SDKs ran no tool); a repeat now ends the turn with
the calls so far."""

from __future__ import annotations

import json

import pytest

from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams, Tool
from tests.engines import SMOLLM2, each_engine, run, smollm2_engines  # noqa: F401  (fixtures)

pytestmark = pytest.mark.model

WEATHER = Tool(name="get_weather", description="The current weather of a city",
               parameters=json.dumps({"type": "object", "properties": {"city": {"type": "string"}},
                                      "required": ["city"]}))


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_a_repeated_call_ends_the_turn_with_tool_calls(each_engine, temperature):
    request = GenerationRequest(
        model=SMOLLM2, messages=(ChatMessage("user", "What's the weather in Paris?"),), tools=(WEATHER,),
        tool_choice="required", parallel_tool_calls=True, max_tokens=300,
        sampling=SamplingParams(temperature=temperature, seed=1))
    result = run(each_engine, request)
    calls = [c for chunk in result.chunks for c in chunk.tool_calls]
    assert result.last.finish_reason == "tool_calls"
    assert result.last.usage.completion_tokens < 300
    assert calls and len({(c.name, c.arguments) for c in calls}) == len(calls)
