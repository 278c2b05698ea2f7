"""Readers of function tools and tool choices, whatever JSON shape an API gives them.

Every API describes a function by a name, a description and a JSON schema of its arguments
(OpenAI chat: ``{"type": "function", "function": {...}}``; Responses: flat; Anthropic:
``input_schema``); each adapter finds the three and calls :func:`function_tool` with their
JSON paths. :func:`restrict` serves "allowed tools" (a subset the model may call now).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

from inference_service import limits
from inference_service.limits import quote
from inference_service.v1 import inference_pb2 as pb

from rest_edge.apis.fields import (
    NO_PARAMETERS,
    checked_text,
    function_name,
    missing,
    objects_in,
    schema_text,
    type_error,
)
from rest_edge.errors import invalid

MODES = {"none": pb.ToolChoice.MODE_NONE, "auto": pb.ToolChoice.MODE_AUTO, "required": pb.ToolChoice.MODE_REQUIRED}


def tool_list(value: Any, param: str) -> list:
    """A ``tools`` array (absent: empty), at most ``limits.MAX_TOOLS`` long."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise type_error(param, "an array", value)
    if len(value) > limits.MAX_TOOLS:
        raise invalid(f"Invalid '{param}': expected an array with maximum length {limits.MAX_TOOLS}, but got an "
                      f"array with length {len(value)} instead.", param=param, code="array_above_max_length")
    return value


class Turns:
    """The chat turns a conversation of an API becomes, and the names of the calls made in it:
    a tool's result is sent with the name of the function whose call it answers."""

    def __init__(self) -> None:
        self.messages: list[pb.ChatMessage] = []
        self._call_names: dict[str, str] = {}

    def call(self, call_id: str, name: str, arguments_json: str) -> pb.ToolCall:
        self._call_names[call_id] = name
        return pb.ToolCall(id=call_id, name=name, arguments_json=arguments_json)

    def add_result(self, call_id: str, content: str) -> None:
        self.messages.append(pb.ChatMessage(role="tool", tool_call_id=call_id, name=self._call_names.get(call_id, ""),
                                            content=content))


def tool_objects(body: dict) -> Iterator[tuple[str, dict]]:
    """The request's ``tools`` (:func:`tool_list`), each an object, with its path (``tools[i]``)."""
    return objects_in(tool_list(body.get("tools"), "tools"), "tools")


def function_tool(obj: dict, param: str, *, name_key: str = "name", schema_key: str = "parameters",
                  taken: Optional[dict[str, str]] = None) -> pb.Tool:
    """The function described by ``obj`` (at JSON path ``param``): its name (unique among
    ``taken``, names to their paths), description and arguments' schema (absent: none)."""
    name_param = f"{param}.{name_key}"
    name = function_name(obj.get(name_key), name_param)
    if taken is not None:
        if name in taken:
            raise invalid(f"Invalid '{name_param}': {quote(name)} is also the name of {taken[name]}; the names of "
                          "the tools must differ.", param=name_param, code="invalid_value")
        taken[name] = param
    description = obj.get("description")
    if description is not None:
        if not isinstance(description, str):
            raise type_error(f"{param}.description", "a string", description)
        checked_text(description, f"{param}.description", limits.MAX_DESCRIPTION_CHARS)
    strict = obj.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise type_error(f"{param}.strict", "a boolean", strict)
    schema = obj.get(schema_key)
    parameters = NO_PARAMETERS if schema is None else schema_text(schema, f"{param}.{schema_key}")
    return pb.Tool(name=name, description=description or "", parameters_json=parameters)


def check_named(name: Any, tools: Sequence[pb.Tool], param: str) -> str:
    """A tool choice's function name: a string naming one of ``tools``."""
    if not isinstance(name, str):
        raise type_error(param, "a string", name)
    if name not in {t.name for t in tools}:
        raise invalid(f"Invalid value for '{param}': {quote(name)} is not the name of one of the function tools.",
                      param=param, code="invalid_value")
    return name


def restrict(tools: Sequence[pb.Tool], names: Sequence[str]) -> list[pb.Tool]:
    """The tools the model may call now, in the request's order.

    Only these are sent to the model: calls can only be made to them (the engine constrains
    calls to the tools it is given), at the cost of the prompt not describing the others.
    """
    allowed = set(names)
    return [t for t in tools if t.name in allowed]


def allowed_tools_mode(spec: dict, param: str) -> int:
    """The contract's mode of the ``allowed_tools`` choice at ``param``: its ``mode``, "auto" or
    "required"."""
    mode = spec.get("mode")
    if mode is None:
        raise missing(f"{param}.mode")
    if mode not in ("auto", "required"):
        raise invalid(f"Invalid value for '{param}.mode': {quote(mode)}. Supported values are: 'auto' and "
                      "'required'.", param=f"{param}.mode", code="invalid_value")
    return MODES[mode]


def allowed_tool_names(value: Any, param: str, tools: Sequence[pb.Tool], *, nested: bool) -> list[str]:
    """The function names of an ``allowed_tools`` list at ``param``: ``{"type": "function",
    "name"}`` (Responses) or ``{"type": "function", "function": {"name"}}`` (``nested``, chat)."""
    if not isinstance(value, list):
        raise type_error(param, "an array", value)
    if not value:
        raise invalid(f"Invalid '{param}': expected a non-empty array.", param=param, code="invalid_value")
    names = []
    for item_param, item in objects_in(value, param):
        kind = item.get("type")
        if kind not in (None, "function"):
            raise invalid(f"Unsupported value for '{item_param}.type': {quote(kind)}; only function tools can be "
                          "allowed here.", param=f"{item_param}.type", code="unsupported_parameter")
        holder, holder_param = item, item_param
        if nested:
            holder_param = f"{item_param}.function"
            holder = item.get("function")
            if not isinstance(holder, dict):
                raise type_error(holder_param, "an object", holder)
        names.append(check_named(holder.get("name"), tools, f"{holder_param}.name"))
    return names
