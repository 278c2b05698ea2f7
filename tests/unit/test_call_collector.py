"""CallCollector: calls handed out once each, as their closing markers arrive; a repeated call
(same function, same arguments, however the JSON is spaced or ordered) ends the turn. And the
tool rules the engine checks once for every caller (check_tools)."""

from __future__ import annotations

import json

import pytest

from inference_service.engine.tool_calls import CallCollector, check_tools
from inference_service.engine.types import Tool
from inference_service.errors import InvalidRequest

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


@pytest.mark.parametrize("tools, choice, name, param", [
    ([WEATHER, TIME, WEATHER], "auto", "", "tools[2].function.name"),
    ([], "required", "", "tool_choice"),
    ([], "function", "get_time", "tool_choice"),
    ([WEATHER], "function", "other", "tool_choice"),
], ids=["duplicate names", "required without tools", "function without tools", "function not among the tools"])
def test_tool_rules_name_the_field(tools, choice, name, param):
    with pytest.raises(InvalidRequest) as info:
        check_tools(tools, choice, name)
    assert info.value.param == param
    check_tools([WEATHER, TIME], choice if tools else "auto", "get_time")  # the same, well formed: fine
