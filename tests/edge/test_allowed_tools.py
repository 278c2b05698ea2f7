"""``tool_choice: {"type": "allowed_tools", ...}`` on /v1/chat/completions (pydantic-ai sends it
whenever a call may use a subset of the tools): only the allowed functions reach the service,
with the mode asked; malformed choices are 400s naming the field."""

from __future__ import annotations

import pytest

from inference_service.v1 import inference_pb2 as pb
from rest_edge import requests
from rest_edge.errors import RequestError


def function(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


TOOLS = [function("get_weather"), function("get_time"), function("get_news")]


def allowed(mode="auto", *names) -> dict:
    return {"type": "allowed_tools", "allowed_tools": {
        "mode": mode, "tools": [{"type": "function", "function": {"name": n}} for n in names]}}


def chat(**fields) -> pb.GenerateRequest:
    return requests.chat_request({"model": "m", "messages": [{"role": "user", "content": "Hi"}], **fields}).request


@pytest.mark.parametrize("mode, expected", [("auto", pb.ToolChoice.MODE_AUTO),
                                            ("required", pb.ToolChoice.MODE_REQUIRED)])
def test_only_the_allowed_tools_are_sent_in_the_request_order(mode, expected):
    req = chat(tools=TOOLS, tool_choice=allowed(mode, "get_news", "get_weather"))
    assert [t.name for t in req.tools] == ["get_weather", "get_news"]
    assert req.tool_choice.mode == expected


@pytest.mark.parametrize("choice, param", [
    ({"type": "allowed_tools"}, "tool_choice.allowed_tools"),
    ({"type": "allowed_tools", "allowed_tools": {"tools": []}}, "tool_choice.allowed_tools.mode"),
    (allowed("none", "get_time"), "tool_choice.allowed_tools.mode"),
    (allowed("auto"), "tool_choice.allowed_tools.tools"),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": "get_time"}},
     "tool_choice.allowed_tools.tools"),
    (allowed("auto", "get_date"), "tool_choice.allowed_tools.tools[0].function.name"),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function"}]}},
     "tool_choice.allowed_tools.tools[0].function"),
    ({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "web_search"}]}},
     "tool_choice.allowed_tools.tools[0].type"),
])
def test_malformed_allowed_tools_are_400_naming_the_field(choice, param):
    with pytest.raises(RequestError) as caught:
        chat(tools=TOOLS, tool_choice=choice)
    assert caught.value.status == 400 and caught.value.param == param


def test_allowed_tools_need_tools():
    with pytest.raises(RequestError) as caught:
        chat(tool_choice=allowed("auto", "get_time"))
    assert caught.value.param == "tool_choice"
