"""OpenAI's Responses API, stateless: POST /v1/responses.

Request → ``GenerateRequest``:

* ``input``: a string (one user turn) or items: messages (``role`` user, system, developer
  or assistant; ``content`` a string or ``input_text`` / ``output_text`` / ``refusal``
  parts), ``function_call`` and ``function_call_output`` (a tools round trip), and
  ``reasoning`` items (skipped: they are the model's notes, not the conversation).
  ``instructions`` becomes the first system turn.
* ``tools``: function tools. Tools of other types (web search, file search, computer use,
  code interpreter, MCP, custom, shell, ...) are skipped, not refused: a local server cannot
  run them and coding tools send them anyway; forcing one with ``tool_choice`` is a 400.
* ``tool_choice`` (none, auto, required, a function, ``allowed_tools``),
  ``parallel_tool_calls``, ``text.format`` (text, json_object, json_schema),
  ``max_output_tokens``, ``temperature``, ``top_p``, ``stream``.
* Stateless: nothing is stored (``store`` is accepted and answered false), so
  ``previous_response_id`` and ``conversation`` are refused with a 400 naming them, and so
  is an ``item_reference`` input item; send the whole conversation in ``input``.
* ``reasoning.effort`` "none" or "minimal" asks a thinking model's template not to think;
  a model that thinks answers its thinking as a ``reasoning`` item (``reasoning_text``
  content, streamed as ``response.reasoning_text.delta``) before the message.
* Accepted and ignored: the rest of ``reasoning``, ``include``, ``truncation``, ``text.verbosity``, ``metadata`` (echoed), ``user``,
  ``service_tier``, ``safety_identifier``, ``prompt_cache_key``, ``stream_options``.

Answer: a ``response`` object whose ``output`` holds a ``message`` item (``output_text``)
and/or ``function_call`` items; ``status`` is ``incomplete`` (``max_output_tokens``) when
the length limit cut it. A stream is the event sequence ``response.created``,
``response.in_progress``, then per item ``response.output_item.added``, (message)
``response.content_part.added``, ``response.output_text.delta``…, ``response.output_text.done``,
``response.content_part.done``, (call) ``response.function_call_arguments.delta`` and
``.done``, then ``response.output_item.done``; last ``response.completed`` (or
``response.incomplete``) with usage. Every event has its ``sequence_number``. Errors have
OpenAI's shape; an error after the stream started is an ``error`` event.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterable, Optional

from inference_service import limits
from inference_service.limits import quote
from inference_service.v1 import inference_pb2 as pb

from rest_edge import responses
from rest_edge.apis import fields, tools
from rest_edge.apis.fields import (
    UINT32_MAX,
    checked_text,
    missing,
    opt_bool,
    opt_int,
    opt_number,
    required_str,
    type_error,
    unsupported,
)
from rest_edge.apis.generation import ModuleAdapter, Parsed
from rest_edge.apis.sse import named_event
from rest_edge.errors import RequestError, invalid

log = logging.getLogger("rest_edge")

ROUTE = "/v1/responses"

# Stateful or server-side features: refused by name when set.
_STATEFUL = {
    "previous_response_id": "this server is stateless and stores no responses; send the whole conversation in "
                            "'input'",
    "conversation": "this server is stateless and stores no conversations; send the whole conversation in 'input'",
    "background": "background responses are not supported",
    "prompt": "stored prompt templates are not supported; send 'instructions' and 'input'",
    "max_tool_calls": "limiting the number of tool calls is not supported",
}
_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_TEXT_PARTS = ("input_text", "output_text", "text")


# --- request ---------------------------------------------------------------------------

def _check_stateless(body: dict) -> None:
    for name, why in _STATEFUL.items():
        value = body.get(name)
        if value is not None and value is not False:
            raise unsupported(name, f"Unsupported parameter: '{name}': {why}.")
    top_logprobs = body.get("top_logprobs")
    if top_logprobs not in (None, 0):
        raise unsupported("top_logprobs", "Unsupported parameter: 'top_logprobs': log probabilities are served on "
                                          "/v1/chat/completions.")


def _content(value: Any, param: str) -> str:
    return fields.joined_text(value, param, _content_part)


def _content_part(part: dict, param: str) -> str:
    kind = part.get("type")
    key = "refusal" if kind == "refusal" else "text"
    if kind not in _TEXT_PARTS and kind != "refusal":
        raise unsupported(f"{param}.type", f"Unsupported content part type {quote(kind)} in "
                                           f"'{param}': only text parts are supported.")
    return fields.text_at(part, key, param)


class _History(tools.Turns):
    """Input items → chat turns; consecutive function calls join the assistant turn before."""

    def message(self, item: dict, param: str) -> None:
        role = item.get("role")
        if role is None:
            raise missing(f"{param}.role")
        if role not in _ROLES:
            raise invalid(f"Invalid value for '{param}.role': {quote(role)}. Supported values are: 'user', "
                          "'system', 'developer' and 'assistant'.", param=f"{param}.role", code="invalid_value")
        content = item.get("content")
        if content is None:
            raise missing(f"{param}.content")
        self.messages.append(pb.ChatMessage(role=_ROLES[role], content=_content(content, f"{param}.content")))

    def function_call(self, item: dict, param: str) -> None:
        if item.get("call_id") is None:
            raise missing(f"{param}.call_id")
        call_id = fields.call_id(item["call_id"], f"{param}.call_id")
        name = fields.function_name(item.get("name"), f"{param}.name")
        arguments = item.get("arguments")
        if arguments is None:
            raise missing(f"{param}.arguments")
        arguments = fields.arguments_text(arguments, f"{param}.arguments")
        call = self.call(call_id, name, arguments)
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == "assistant":
            last.tool_calls.append(call)
        else:
            self.messages.append(pb.ChatMessage(role="assistant", tool_calls=[call]))

    def function_call_output(self, item: dict, param: str) -> None:
        if item.get("call_id") is None:
            raise missing(f"{param}.call_id")
        call_id = fields.call_id(item.get("call_id"), f"{param}.call_id")
        output = item.get("output")
        if output is None:
            raise missing(f"{param}.output")
        self.add_result(call_id, _content(output, f"{param}.output"))


def _input(body: dict) -> list[pb.ChatMessage]:
    history = _History()
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise type_error("instructions", "a string", instructions)
        if instructions:
            history.messages.append(pb.ChatMessage(role="system", content=checked_text(instructions, "instructions")))
    value = body.get("input")
    if value is None:
        raise missing("input")
    if isinstance(value, str):
        history.messages.append(pb.ChatMessage(role="user", content=checked_text(value, "input")))
        return history.messages
    if not isinstance(value, list):
        raise type_error("input", "a string or an array of input items", value)
    for param, item in fields.objects_in(value, "input"):
        kind = item.get("type", "message")
        if kind == "message":
            history.message(item, param)
        elif kind == "function_call":
            history.function_call(item, param)
        elif kind == "function_call_output":
            history.function_call_output(item, param)
        elif kind == "reasoning":
            continue
        elif kind == "item_reference":
            raise unsupported(param, f"Unsupported input item '{param}': 'item_reference' needs stored items and "
                                     "this server is stateless; send the item itself.")
        elif not isinstance(kind, str):
            raise type_error(f"{param}.type", "a string", kind)
        else:
            raise unsupported(f"{param}.type", f"Unsupported input item type {quote(kind)} in '{param}': supported "
                                               "are 'message', 'function_call', 'function_call_output' and "
                                               "'reasoning'.")
    if not any(m.role != "system" for m in history.messages):
        raise invalid("Invalid 'input': expected at least one message or function call output.", param="input",
                      code="invalid_value")
    return history.messages


def _tools(body: dict) -> tuple[list[pb.Tool], list[dict]]:
    """Function tools, as protobuf and as the response echoes them; other tool types are skipped."""
    taken: dict[str, str] = {}
    functions, echo, skipped = [], [], set()
    for param, tool in tools.tool_objects(body):
        kind = tool.get("type")
        if kind is None:
            raise missing(f"{param}.type")
        if not isinstance(kind, str):
            raise type_error(f"{param}.type", "a string", kind)
        if kind != "function":
            skipped.add(kind)
            continue
        made = tools.function_tool(tool, param, taken=taken)
        functions.append(made)
        echo.append({"type": "function", "name": made.name, "description": made.description or None,
                     "parameters": tool.get("parameters"), "strict": tool.get("strict", True)})
    if skipped:
        log.debug("/v1/responses: skipped tools of types %s (not runnable here)", ", ".join(sorted(skipped)))
    return functions, echo


def _tool_choice(body: dict, functions: list[pb.Tool]) -> tuple[Optional[pb.ToolChoice], list[pb.Tool]]:
    """The choice and the tools to send (``allowed_tools`` narrows them)."""
    value = body.get("tool_choice")
    if value is None:
        return None, functions
    if isinstance(value, str):
        if value not in tools.MODES:
            raise invalid(f"Invalid value for 'tool_choice': {quote(value)}. Supported values are: 'none', 'auto', "
                          "'required' or an object.", param="tool_choice", code="invalid_value")
        if value == "required" and not functions:
            raise invalid("Invalid value for 'tool_choice': 'required' needs at least one function tool.",
                          param="tool_choice", code="invalid_value")
        return (pb.ToolChoice(mode=tools.MODES[value]) if functions else None), functions
    if not isinstance(value, dict):
        raise type_error("tool_choice", "a string or an object", value)
    kind = value.get("type")
    if kind == "function":
        name = tools.check_named(value.get("name"), functions, "tool_choice.name")
        return pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name=name), functions
    if kind == "allowed_tools":
        mode = tools.allowed_tools_mode(value, "tool_choice")
        names = tools.allowed_tool_names(value.get("tools"), "tool_choice.tools", functions, nested=False)
        return pb.ToolChoice(mode=mode), tools.restrict(functions, names)
    if kind is None:
        raise missing("tool_choice.type")
    raise unsupported("tool_choice.type", f"Unsupported value for 'tool_choice.type': {quote(kind)}; this server "
                                          "runs function tools only.")


def _text_format(body: dict) -> tuple[Optional[pb.Constraint], dict]:
    """``text.format`` → a constraint, and the ``text`` object to echo."""
    text = body.get("text")
    if text is None:
        return None, {"format": {"type": "text"}}
    if not isinstance(text, dict):
        raise type_error("text", "an object", text)
    fmt = text.get("format")
    if fmt is None:
        return None, {"format": {"type": "text"}}
    if not isinstance(fmt, dict):
        raise type_error("text.format", "an object", fmt)
    kind = fmt.get("type")
    if kind == "text":
        return None, {"format": {"type": "text"}}
    if kind == "json_object":
        return pb.Constraint(json_object=True), {"format": {"type": "json_object"}}
    if kind == "json_schema":
        name = fields.function_name(fmt.get("name"), "text.format.name")
        fields.opt_str_at(fmt, "description", "text.format.description", limits.MAX_DESCRIPTION_CHARS)
        strict = fields.opt_bool_at(fmt, "strict", "text.format.strict")
        if fmt.get("schema") is None:
            raise missing("text.format.schema")
        schema = fields.schema_text(fmt.get("schema"), "text.format.schema")
        echo = {"type": "json_schema", "name": name, "schema": fmt["schema"], "strict": bool(strict)}
        if fmt.get("description") is not None:
            echo["description"] = fmt["description"]
        return pb.Constraint(json_schema=schema), {"format": echo}
    if kind is None:
        raise missing("text.format.type")
    raise invalid(f"Invalid value for 'text.format.type': {quote(kind)}. Supported values are: 'text', "
                  "'json_object' and 'json_schema'.", param="text.format.type", code="invalid_value")


def parse(body: dict, request_id: str = "") -> Parsed:
    """POST /v1/responses body → GenerateRequest, and what the answer echoes of the request."""
    model = required_str(body, "model", limits.MAX_MODEL_CHARS)
    _check_stateless(body)
    messages = _input(body)
    req = pb.GenerateRequest(model=model, messages=messages, request_id=request_id)
    functions, tools_echo = _tools(body)
    choice, sent = _tool_choice(body, functions)
    req.tools.extend(sent)
    if choice is not None:
        req.tool_choice.CopyFrom(choice)
    constraint, text_echo = _text_format(body)
    if constraint is not None:
        req.constraint.CopyFrom(constraint)
    parallel = opt_bool(body, "parallel_tool_calls")
    if parallel is not None:
        req.parallel_tool_calls = parallel
    max_output = opt_int(body, "max_output_tokens", 1, UINT32_MAX)
    if max_output is not None:
        req.max_tokens = max_output
    for name in ("temperature", "top_p"):
        value = opt_number(body, name)
        if value is not None:
            setattr(req, name, value)
    reasoning = body.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise type_error("reasoning", "an object", reasoning)
        if reasoning.get("effort") in ("none", "minimal"):
            req.thinking = False
    stream = bool(opt_bool(body, "stream"))
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise type_error("metadata", "an object", metadata)
    instructions = body.get("instructions")
    echo = {
        "instructions": instructions,
        "max_output_tokens": max_output,
        "parallel_tool_calls": True if parallel is None else parallel,
        "temperature": float(body["temperature"]) if body.get("temperature") is not None else 1.0,
        "text": text_echo,
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None else "auto",
        "tools": tools_echo,
        "top_p": float(body["top_p"]) if body.get("top_p") is not None else 1.0,
        "user": body.get("user") if isinstance(body.get("user"), str) else None,
        "metadata": metadata or {},
    }
    return Parsed(req, model, stream, echo)


# --- response ----------------------------------------------------------------------------

def usage_object(usage: dict) -> dict:
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def _output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponsesRendering:
    """One response, built item by item from the events; streamed as events, or whole."""

    def __init__(self, parsed: Parsed, response_id: str, clock: Callable[[], float] = time.time):
        self.id = response_id
        self._parsed = parsed
        self._created = int(clock())
        self._counter = 0
        self._output: list[dict] = []
        self._text: Optional[list[str]] = None  # the open message's text pieces
        self._thought: Optional[list[str]] = None  # the open reasoning item's text pieces
        self._sequence = 0

    # --- the response object ---

    def _response(self, status: str, usage: Optional[dict] = None, incomplete: Optional[dict] = None) -> dict:
        echo = self._parsed.echo
        return {
            "id": self.id, "object": "response", "created_at": self._created, "status": status,
            "background": False, "error": None, "incomplete_details": incomplete,
            "instructions": echo["instructions"], "max_output_tokens": echo["max_output_tokens"],
            "max_tool_calls": None, "model": self._parsed.model, "output": list(self._output),
            "parallel_tool_calls": echo["parallel_tool_calls"], "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": False,
            "temperature": echo["temperature"], "text": echo["text"], "tool_choice": echo["tool_choice"],
            "tools": echo["tools"], "top_logprobs": 0, "top_p": echo["top_p"], "truncation": "disabled",
            "usage": usage, "user": echo["user"], "metadata": echo["metadata"],
        }

    def _item_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self.id.removeprefix('resp_')}_{self._counter}"

    def _event(self, kind: str, **fields_: Any) -> bytes:
        obj = {"type": kind, "sequence_number": self._sequence, **fields_}
        self._sequence += 1
        return named_event(kind, obj)

    # --- items ---

    def _open_message(self) -> list[bytes]:
        item = {"id": self._item_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                "content": []}
        self._output.append(item)
        self._text = []
        index = len(self._output) - 1
        return [self._event("response.output_item.added", output_index=index, item=dict(item, content=[])),
                self._event("response.content_part.added", item_id=item["id"], output_index=index,
                            content_index=0, part=_output_text(""))]

    def _close_message(self, status: str = "completed") -> list[bytes]:
        if self._text is None:
            return []
        index = len(self._output) - 1
        item = self._output[index]
        text = "".join(self._text)
        self._text = None
        part = _output_text(text)
        item.update(status=status, content=[part])
        return [self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=text, logprobs=[]),
                self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                            part=part),
                self._event("response.output_item.done", output_index=index, item=item)]

    def _reason(self, text: str) -> list[bytes]:
        """A piece of thinking: in a reasoning item (``reasoning_text`` content), opened at the first."""
        out = []
        if self._thought is None:
            item = {"id": self._item_id("rs"), "type": "reasoning", "summary": [], "content": []}
            self._output.append(item)
            self._thought = []
            out.append(self._event("response.output_item.added", output_index=len(self._output) - 1, item=item))
        self._thought.append(text)
        index = len(self._output) - 1
        out.append(self._event("response.reasoning_text.delta", item_id=self._output[index]["id"],
                               output_index=index, content_index=0, delta=text))
        return out

    def _close_reasoning(self) -> list[bytes]:
        if self._thought is None:
            return []
        index = len(self._output) - 1
        item = self._output[index]
        text = "".join(self._thought)
        self._thought = None
        item["content"] = [{"type": "reasoning_text", "text": text}]
        return [self._event("response.reasoning_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=text),
                self._event("response.output_item.done", output_index=index, item=item)]

    def _call(self, call: pb.ToolCall) -> list[bytes]:
        item = {"id": self._item_id("fc"), "type": "function_call", "status": "completed",
                "arguments": call.arguments_json, "call_id": call.id, "name": call.name}
        self._output.append(item)
        index = len(self._output) - 1
        return [self._event("response.output_item.added", output_index=index,
                            item=dict(item, status="in_progress", arguments="")),
                self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                            delta=call.arguments_json),
                self._event("response.function_call_arguments.done", item_id=item["id"], name=call.name,
                            output_index=index, arguments=call.arguments_json),
                self._event("response.output_item.done", output_index=index, item=item)]

    # --- StreamRendering ---

    def opening(self) -> list[bytes]:
        start = self._response("in_progress")
        return [self._event("response.created", response=start), self._event("response.in_progress", response=start)]

    def frames(self, event: responses.Event) -> list[bytes]:
        if isinstance(event, responses.Reasoning):
            return self._reason(event.text)
        if isinstance(event, responses.Text):
            out = self._close_reasoning()
            out += self._open_message() if self._text is None else []
            self._text.append(event.text)
            index = len(self._output) - 1
            out.append(self._event("response.output_text.delta", item_id=self._output[index]["id"],
                                   output_index=index, content_index=0, delta=event.text, logprobs=[]))
            return out
        if isinstance(event, responses.ToolCalls):
            out = self._close_reasoning() + self._close_message()
            for call in event.calls:
                out += self._call(call)
            return out
        return self._finish(event)

    def _finish(self, event: responses.Finish) -> list[bytes]:
        cut = event.finish_reason == "length"
        out = self._close_reasoning()
        if not any(item["type"] != "reasoning" for item in self._output) and self._text is None:
            out += self._open_message()  # an empty answer
        out += self._close_message("incomplete" if cut else "completed")
        final = self._final(event)
        out.append(self._event("response.incomplete" if cut else "response.completed", response=final))
        return out

    def _final(self, event: responses.Finish) -> dict:
        if event.finish_reason == "length":
            return self._response("incomplete", usage_object(event.usage), {"reason": "max_output_tokens"})
        return self._response("completed", usage_object(event.usage))

    def error_frames(self, err: RequestError) -> list[bytes]:
        return [self._event("error", code=err.code or err.type, message=err.message, param=err.param)]

    def body(self, events: Iterable[responses.Event]) -> dict:
        for event in events:
            self.frames(event)
            if isinstance(event, responses.Finish):
                return self._final(event)
        raise AssertionError("events() ends with a Finish or raises")


class ResponsesAdapter(ModuleAdapter):
    id_prefix = "resp"
    parse = staticmethod(parse)
    rendering_of = ResponsesRendering
