"""openai-agents in its default setup (the Responses API) against the real edge and service on
the real default model: an agent with one function tool, run and streamed, and a streamed
text answer.

The default setup is the API the SDK picks itself; only the client's base URL and key are
ours (tracing is off: it would upload to OpenAI). A 135M model does not reliably choose a
tool, nor stop calling it, so the tool agent must call it once and the run ends with the
tool's result (``stop_on_first_tool``); the Responses tool round trip with the output sent
back is tests/e2e/test_responses_openai.py's.
"""

from __future__ import annotations

import asyncio
import json

import agents
import pytest
from agents import Agent, ModelSettings, Runner, function_tool
from openai import AsyncOpenAI

from tests.e2e.helpers import MODEL

pytestmark = pytest.mark.model

CITIES: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Get the current weather of a city."""
    CITIES.append(city)
    return f"Sunny and 21 degrees in {city}."


def weather_agent() -> Agent:
    return Agent(name="Weather", instructions="You answer questions about the weather.", model=MODEL,
                 tools=[get_weather], tool_use_behavior="stop_on_first_tool",
                 model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False, temperature=0,
                                              max_tokens=60))


def in_default_setup(edge, run):
    """Runs ``run()`` (a coroutine function) with the SDK's default client pointed at the edge."""
    async def main():
        client = AsyncOpenAI(base_url=edge.base_url + "/v1", api_key="unused", max_retries=0, timeout=300.0)
        agents.set_default_openai_client(client, use_for_tracing=False)
        agents.set_tracing_disabled(True)
        try:
            return await run()
        finally:
            await client.close()

    return asyncio.run(main())


def test_run_with_one_function_tool(edge):
    CITIES.clear()
    result = in_default_setup(edge, lambda: Runner.run(weather_agent(), "What is the weather in Oslo?"))
    calls = [i for i in result.new_items if i.type == "tool_call_item"]
    assert len(calls) == 1 and CITIES
    assert json.loads(calls[0].raw_item.arguments)["city"] == CITIES[0]
    assert result.final_output == f"Sunny and 21 degrees in {CITIES[0]}."


def test_streamed_run_with_one_function_tool(edge):
    CITIES.clear()

    async def run():
        streamed = Runner.run_streamed(weather_agent(), "What is the weather in Bergen?")
        raw = [e.data.type async for e in streamed.stream_events() if e.type == "raw_response_event"]
        return streamed, raw

    streamed, raw = in_default_setup(edge, run)
    assert raw[0] == "response.created" and raw[-1] == "response.completed"
    assert "response.function_call_arguments.done" in raw
    assert streamed.final_output == f"Sunny and 21 degrees in {CITIES[0]}."


def test_streamed_text_answer(edge):
    agent = Agent(name="Plain", instructions="Answer in one short sentence.", model=MODEL,
                  model_settings=ModelSettings(temperature=0, max_tokens=30))

    async def run():
        streamed = Runner.run_streamed(agent, "What colour is the sky?")
        deltas = [e.data.delta async for e in streamed.stream_events()
                  if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"]
        return streamed, deltas

    streamed, deltas = in_default_setup(edge, run)
    assert deltas and "".join(deltas) == streamed.final_output
