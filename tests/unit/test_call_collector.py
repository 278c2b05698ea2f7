"""CallCollector: calls handed out once each, as their closing markers arrive; a repeated call
(same function, same arguments, however the JSON is spaced or ordered) ends the turn."""

from __future__ import annotations

import json

from inference_service.engine.tool_calls import CallCollector
from inference_service.engine.types import Tool

WEATHER = Tool(name="get_weather", description="", parameters=json.dumps({"type": "object"}))
TIME = Tool(name="get_time", description="", parameters=json.dumps({"type": "object"}))


def call(name: str, arguments: str) -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def test_calls_come_out_once_as_they_close():
    collector = CallCollector([WEATHER, TIME])
    first = call("get_weather", '{"city": "Paris"}')
    assert collector.update(first[:-3]) == []
    out = collector.update(first)
    assert [(c.name, json.loads(c.arguments)) for c in out] == [("get_weather", {"city": "Paris"})]
    assert collector.update(first + "\n") == []
    second = first + "\n" + call("get_time", '{"zone": "CET"}')
    assert [c.name for c in collector.update(second)] == ["get_time"]
    assert not collector.repeated and len(collector.calls) == 2


def test_a_repeated_call_is_dropped_and_ends_the_turn():
    collector = CallCollector([WEATHER])
    text = call("get_weather", '{"city": "Paris", "unit": "C"}')
    assert len(collector.update(text)) == 1
    text += "\n" + call("get_weather", '{"unit":"C","city":"Paris"}')
    assert collector.update(text) == []
    assert collector.repeated and len(collector.calls) == 1


def test_different_arguments_are_not_a_repeat():
    collector = CallCollector([WEATHER])
    text = call("get_weather", '{"city": "Paris"}') + "\n" + call("get_weather", '{"city": "Rome"}')
    assert len(collector.update(text)) == 2
    assert not collector.repeated
