"""Tool calling: how tools reach the prompt, the grammar a call must follow, and calls parsed
back out of the model's text.

The call format is Hermes/Qwen's, which most current chat templates use:
``<tool_call>{"name": "...", "arguments": {...}}</tool_call>``. A model whose template
renders ``tools`` itself gets them that way (as transformers' ``apply_chat_template(tools=)``
does); for one whose template does not (SmolLM2-135M's), the tools and the call format are
described in a preamble added to the system message, like llama.cpp's "generic" format.

``required`` and a named function force a call from the first token with a grammar whose
call JSON validates against the function's parameters. ``auto`` lets the model write text;
once it writes the opening marker, the rest is constrained by the same grammar. History
turns carrying ``tool_calls`` are rendered back in the same markup.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Sequence

from inference_service.engine.grammar import JSON_LAYOUT
from inference_service.engine.types import ChatMessage, Tool, ToolCall
from inference_service.errors import InvalidRequest
from inference_service.limits import quote

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
_CALL = re.compile(re.escape(CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(CALL_CLOSE), re.DOTALL)

PREAMBLE = (
    "You can call functions. To call one, answer with exactly\n"
    f'{CALL_OPEN}{{"name": <function name>, "arguments": <arguments as a JSON object>}}{CALL_CLOSE}\n'
    "and nothing else (one such line per call). The functions:\n"
)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def tool_specs(tools: Sequence[Tool]) -> list[dict]:
    """Tools as OpenAI and chat templates spell them."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description,
                                          "parameters": json.loads(t.parameters)}}
        for t in tools
    ]


def with_preamble(messages: Sequence[ChatMessage], tools: Sequence[Tool]) -> tuple[ChatMessage, ...]:
    """The chat with the tools described in its system message (added when it has none)."""
    text = PREAMBLE + "\n".join(json.dumps(spec["function"], ensure_ascii=False) for spec in tool_specs(tools))
    if messages and messages[0].role == "system":
        first = messages[0]
        return (ChatMessage("system", f"{first.content}\n\n{text}"), *messages[1:])
    return (ChatMessage("system", text), *messages)


def call_markup(call: ToolCall) -> str:
    arguments = call.arguments.strip() or "{}"
    return f'{CALL_OPEN}{{"name": {json.dumps(call.name)}, "arguments": {arguments}}}{CALL_CLOSE}'


def history_as_text(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """Assistant turns' tool calls written back as the markup the model produces."""
    out = []
    for m in messages:
        if m.tool_calls:
            calls = "\n".join(call_markup(c) for c in m.tool_calls)
            out.append(ChatMessage(m.role, f"{m.content}\n{calls}" if m.content else calls))
        else:
            out.append(m)
    return tuple(out)


def call_grammar(tools: Sequence[Tool], only: str = "", parallel: bool = True, opened: bool = False) -> str:
    """Lark grammar (llguidance's dialect) of one call or more, each
    ``<tool_call>{"name": N, "arguments": A}</tool_call>`` with A valid for N's parameters.

    ``only``: the one function allowed. ``opened``: the opening marker is already written.
    """
    chosen = [t for t in tools if not only or t.name == only]
    alternatives = [
        {"type": "object",
         "properties": {"name": {"const": t.name}, "arguments": json.loads(t.parameters)},
         "required": ["name", "arguments"], "additionalProperties": False}
        for t in chosen
    ]
    schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    # One layout, the one the preamble shows (json.dumps's): no whitespace to wander in.
    schema = {**schema, "x-guidance": JSON_LAYOUT}
    first = f"{'' if opened else _lark_string(CALL_OPEN) + ' '}call {_lark_string(CALL_CLOSE)}"
    more = f' ("\\n" {_lark_string(CALL_OPEN)} call {_lark_string(CALL_CLOSE)})*' if parallel else ""
    return f"start: {first}{more}\ncall: %json {json.dumps(schema)}\n"


def _lark_string(text: str) -> str:
    return json.dumps(text)


def parse_calls(text: str, tools: Sequence[Tool]) -> tuple[list[ToolCall], str]:
    """The calls in ``text`` (Hermes markup, or a bare JSON call as the generic format
    writes it) to functions in ``tools``, and the text around them."""
    names = {t.name for t in tools}
    calls: list[ToolCall] = []
    for body in _CALL.findall(text):
        call = _call_from_json(body, names)
        if call is not None:
            calls.append(call)
    if calls:
        return calls, _CALL.sub("", text).strip()
    stripped = text.strip()
    if stripped.startswith("{"):
        call = _call_from_json(stripped, names)
        if call is not None:
            return [call], ""
    return [], text


def _call_from_json(body: str, names: set[str]) -> ToolCall | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("tool_call"), dict):
        value = value["tool_call"]  # llama.cpp's generic {"tool_call": {...}}
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(id=new_call_id(), name=value["name"], arguments=json.dumps(arguments, ensure_ascii=False))


def check_tools(tools: Sequence[Tool], choice: str, name: str) -> None:
    """Tool definitions and choice that no request may carry (the grammar checks the rest)."""
    seen = set()
    for i, tool in enumerate(tools):
        param = f"tools[{i}].function.parameters"
        try:
            parameters = json.loads(tool.parameters)
        except ValueError as exc:
            raise InvalidRequest(f"{param} is not valid JSON: {exc}", param) from None
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"{param} must be a JSON schema object", param)
        if tool.name in seen:
            raise InvalidRequest(f"two tools are named {quote(tool.name)}", f"tools[{i}].function.name")
        seen.add(tool.name)
    if choice in ("required", "function") and not tools:
        raise InvalidRequest(f"tool_choice {choice!r} needs tools", "tool_choice")
    if choice == "function" and name not in seen:
        raise InvalidRequest(f"tool_choice names {quote(name)}, which is not one of the tools", "tool_choice")


class CallCollector:
    """The text of the call region as it is generated; hands out each call once complete.

    A call identical to one already made (same function, same arguments) is dropped and sets
    ``repeated``: small models allowed parallel calls tend to write the same call again until
    ``max_tokens``, and then finish with ``length``, which SDKs take as "run no tool". The turn
    ends instead with the calls so far."""

    def __init__(self, tools: Sequence[Tool], prefix: str = ""):
        self._tools = tools
        self._prefix = prefix
        self._closed = 0  # closing markers already parsed
        self._parsed = 0  # calls parsed so far, repeats included
        self.calls: list[ToolCall] = []
        self.repeated = False

    def update(self, text_since_prefix: str) -> list[ToolCall]:
        """The calls completed by the text so far that were not handed out yet (parsed only
        when a new closing marker appears)."""
        text = self._prefix + text_since_prefix
        closed = text.count(CALL_CLOSE)
        if closed == self._closed:
            return []
        self._closed = closed
        parsed, _ = parse_calls(text[: text.rfind(CALL_CLOSE) + len(CALL_CLOSE)], self._tools)
        new = []
        for call in parsed[self._parsed:]:
            if any(_same_call(call, made) for made in (*self.calls, *new)):
                self.repeated = True
                break
            new.append(call)
        self._parsed = len(parsed)
        self.calls.extend(new)
        return new


def _same_call(a: ToolCall, b: ToolCall) -> bool:
    return a.name == b.name and json.loads(a.arguments) == json.loads(b.arguments)
