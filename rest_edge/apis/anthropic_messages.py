"""Anthropic's Messages API: POST /v1/messages and POST /v1/messages/count_tokens.

Request → ``GenerateRequest``:

* ``model``, ``max_tokens`` (required), ``messages`` (``user`` / ``assistant`` turns whose
  ``content`` is a string or blocks: ``text``, ``tool_use`` on assistant turns,
  ``tool_result`` on user turns; ``thinking`` / ``redacted_thinking`` blocks of earlier
  turns are skipped), ``system`` (a string or text blocks), ``stop_sequences``,
  ``temperature``, ``top_p``, ``top_k``, ``stream``.
* ``tools``: client tools (``name``, ``description``, ``input_schema``). Anthropic's server
  and built-in tools (web search, bash, text editor, computer use, code execution, ...) are
  skipped, not refused: a local server cannot run them. ``tool_choice``: ``auto``, ``any``,
  ``tool`` (by ``name``), ``none``, with ``disable_parallel_tool_use``.
* ``output_config.format`` (structured outputs: ``{"type": "json_schema", "schema"}``; also
  the earlier top-level ``output_format``) constrains the text to the schema.
* ``thinking``: ``{"type": "disabled"}`` asks a thinking model's template not to think; a
  model that thinks answers its thinking in a ``thinking`` block (``signature`` empty: it is
  not Anthropic's) before its text; ``budget_tokens`` is not enforced.
* Accepted and ignored: ``metadata``, ``service_tier``, ``cache_control``, ``speed``,
  ``inference_geo``, ``output_config.effort``.
  ``mcp_servers`` and ``container`` are refused by name.

Answer: a ``message`` with ``text`` and ``tool_use`` blocks, ``stop_reason`` ``end_turn``,
``max_tokens`` or ``tool_use`` (a stop sequence also ends with ``end_turn``:
the service does not say which stop ended a turn; ``stop_sequence`` is always null), usage
with ``input_tokens`` (uncached prompt tokens), ``cache_read_input_tokens`` and
``output_tokens``. A stream is ``message_start``, ``ping``, per block
``content_block_start`` / ``content_block_delta`` (``text_delta``, ``input_json_delta``) /
``content_block_stop``, then ``message_delta`` (``stop_reason``, usage, the input tokens
included since they are known only at the end) and ``message_stop``.

Errors have Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``, for every
path under /v1/messages (bad input, authentication, unknown routes); an overloaded service
(no free slot or queue place, no serving replica) is Anthropic's ``529 overloaded_error``,
with ``Retry-After``. ``x-api-key`` is accepted like a bearer key (``rest_edge.auth``);
``anthropic-version`` and ``anthropic-beta`` headers are tolerated.

count_tokens evaluates the prompt exactly as /v1/messages would send it (chat template,
tools and all): it asks the service for one token and answers with the prompt's count.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

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

ROUTE = "/v1/messages"

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error",
                529: "overloaded_error"}
OVERLOADED = 529


def error_shape(err: RequestError) -> tuple[int, dict]:
    """A RequestError in Anthropic's terms: its status (overload is 529) and body."""
    status = err.status
    if status == 503 or (status == 429 and err.code == "rate_limit_exceeded"):
        status = OVERLOADED  # the service has no room now: Anthropic's "retry later"
    kind = _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return status, {"type": "error", "error": {"type": kind, "message": err.message}}


# --- request ---------------------------------------------------------------------------

def _text_blocks(value: Any, param: str) -> str:
    """A string, or ``text`` blocks joined (``system``, a tool result's content)."""
    return fields.joined_text(value, param, _text_block, expected="a string or an array of text blocks",
                              part="an object")


def _text_block(block: dict, param: str) -> str:
    if block.get("type") != "text":
        raise unsupported(f"{param}.type", f"Unsupported block type {quote(block.get('type'))} in "
                                           f"'{param}': only text blocks are supported here.")
    return fields.text_at(block, "text", param)


class _Conversation(tools.Turns):
    def add(self, msg: Any, param: str) -> None:
        if not isinstance(msg, dict):
            raise type_error(param, "an object", msg)
        role = msg.get("role")
        if role is None:
            raise missing(f"{param}.role")
        if role not in ("user", "assistant"):
            raise invalid(f"Invalid value for '{param}.role': {quote(role)}. Supported values are: 'user' and "
                          "'assistant' (the system prompt goes in 'system').", param=f"{param}.role",
                          code="invalid_value")
        content = msg.get("content")
        if content is None:
            raise missing(f"{param}.content")
        if isinstance(content, str):
            self.messages.append(pb.ChatMessage(role=role, content=checked_text(content, f"{param}.content")))
            return
        if not isinstance(content, list):
            raise type_error(f"{param}.content", "a string or an array of content blocks", content)
        texts: list[str] = []
        turn = pb.ChatMessage(role=role)
        for j, block in enumerate(content):
            self._block(block, f"{param}.content[{j}]", role, texts, turn)
        turn.content = "".join(texts)
        if role == "assistant" or texts:
            self.messages.append(turn)

    def _block(self, block: Any, param: str, role: str, texts: list[str], turn: pb.ChatMessage) -> None:
        if not isinstance(block, dict):
            raise type_error(param, "an object", block)
        kind = block.get("type")
        if kind == "text":
            texts.append(fields.text_at(block, "text", param))
        elif kind == "tool_use" and role == "assistant":
            if block.get("id") is None:
                raise missing(f"{param}.id")
            call_id = fields.call_id(block.get("id"), f"{param}.id")
            name = fields.function_name(block.get("name"), f"{param}.name")
            arguments = fields.object_json(block.get("input", {}), f"{param}.input")
            turn.tool_calls.append(self.call(call_id, name, arguments))
        elif kind == "tool_result" and role == "user":
            if block.get("tool_use_id") is None:
                raise missing(f"{param}.tool_use_id")
            call_id = fields.call_id(block.get("tool_use_id"), f"{param}.tool_use_id")
            result = block.get("content", "")
            text = _text_blocks(result, f"{param}.content") if result is not None else ""
            is_error = fields.opt_bool_at(block, "is_error", f"{param}.is_error")
            if is_error:
                text = f"Error: {text}"
            self.add_result(call_id, text)
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            return
        elif kind in ("tool_use", "tool_result"):
            raise invalid(f"Invalid '{param}': '{kind}' blocks belong to "
                          f"{'assistant' if kind == 'tool_use' else 'user'} turns.", param=param,
                          code="invalid_value")
        elif kind is None:
            raise missing(f"{param}.type")
        else:
            raise unsupported(f"{param}.type", f"Unsupported content block type {quote(kind)} in '{param}': "
                                               "supported are 'text', 'tool_use' and 'tool_result'.")


def _messages(body: dict) -> list[pb.ChatMessage]:
    conversation = _Conversation()
    system = body.get("system")
    if system is not None:
        text = _text_blocks(system, "system")
        if text:
            conversation.messages.append(pb.ChatMessage(role="system", content=text))
    value = body.get("messages")
    if value is None:
        raise missing("messages")
    if not isinstance(value, list):
        raise type_error("messages", "an array", value)
    if not value:
        raise invalid("Invalid 'messages': expected a non-empty array.", param="messages", code="invalid_value")
    for i, msg in enumerate(value):
        conversation.add(msg, f"messages[{i}]")
    return conversation.messages


def _tools(body: dict) -> list[pb.Tool]:
    taken: dict[str, str] = {}
    out = []
    for param, tool in tools.tool_objects(body):
        kind = tool.get("type")
        if kind not in (None, "custom"):
            continue  # a server or built-in tool (web_search_20250305, bash_20250124, ...): skipped
        if tool.get("input_schema") is None:
            raise missing(f"{param}.input_schema")
        out.append(tools.function_tool(tool, param, schema_key="input_schema", taken=taken))
    return out


def _tool_choice(body: dict, functions: list[pb.Tool], req: pb.GenerateRequest) -> None:
    value = body.get("tool_choice")
    if value is None:
        return
    if not isinstance(value, dict):
        raise type_error("tool_choice", "an object", value)
    kind = value.get("type")
    disable_parallel = fields.opt_bool_at(value, "disable_parallel_tool_use", "tool_choice.disable_parallel_tool_use")
    if kind == "auto" or kind == "none":
        mode = pb.ToolChoice.MODE_AUTO if kind == "auto" else pb.ToolChoice.MODE_NONE
        choice = pb.ToolChoice(mode=mode)
    elif kind == "any":
        choice = pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED)
    elif kind == "tool":
        name = tools.check_named(value.get("name"), functions, "tool_choice.name")
        choice = pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name=name)
    elif kind is None:
        raise missing("tool_choice.type")
    else:
        raise invalid(f"Invalid value for 'tool_choice.type': {quote(kind)}. Supported values are: 'auto', 'any', "
                      "'tool' and 'none'.", param="tool_choice.type", code="invalid_value")
    if not functions:
        if kind in ("any", "tool"):
            raise invalid(f"Invalid value for 'tool_choice': {quote(kind)} needs at least one tool.",
                          param="tool_choice", code="invalid_value")
        return
    req.tool_choice.CopyFrom(choice)
    if disable_parallel:
        req.parallel_tool_calls = False


def _output_format(body: dict, req: pb.GenerateRequest) -> None:
    """``output_config.format`` (or the earlier top-level ``output_format``): a JSON schema the
    text answer follows."""
    param, fmt = "output_format", body.get("output_format")
    config = body.get("output_config")
    if config is not None:
        if not isinstance(config, dict):
            raise type_error("output_config", "an object", config)
        if config.get("format") is not None:
            param, fmt = "output_config.format", config["format"]
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise type_error(param, "an object", fmt)
    if fmt.get("type") != "json_schema":
        raise invalid(f"Invalid value for '{param}.type': {quote(fmt.get('type'))}. Supported values are: "
                      "'json_schema'.", param=f"{param}.type", code="invalid_value")
    if fmt.get("schema") is None:
        raise missing(f"{param}.schema")
    req.constraint.CopyFrom(pb.Constraint(json_schema=fields.schema_text(fmt["schema"], f"{param}.schema")))


def _check_unsupported(body: dict) -> None:
    for name, why in (("mcp_servers", "MCP servers are not supported"),
                      ("container", "code execution containers are not supported")):
        if body.get(name):
            raise unsupported(name, f"Unsupported parameter: '{name}': {why}.")
    thinking = body.get("thinking")
    if thinking is not None and not isinstance(thinking, dict):
        raise type_error("thinking", "an object", thinking)


def _prompt(body: dict, request_id: str) -> tuple[str, pb.GenerateRequest, list[pb.Tool]]:
    """The fields /v1/messages and count_tokens share: model, conversation, tools."""
    model = required_str(body, "model", limits.MAX_MODEL_CHARS)
    _check_unsupported(body)
    req = pb.GenerateRequest(model=model, messages=_messages(body), request_id=request_id)
    if (body.get("thinking") or {}).get("type") == "disabled":
        req.thinking = False
    functions = _tools(body)
    req.tools.extend(functions)
    return model, req, functions


def parse(body: dict, request_id: str = "") -> Parsed:
    """POST /v1/messages body → GenerateRequest."""
    model, req, functions = _prompt(body, request_id)
    if body.get("max_tokens") is None:
        raise missing("max_tokens")
    req.max_tokens = opt_int(body, "max_tokens", 1, UINT32_MAX)
    _tool_choice(body, functions, req)
    _output_format(body, req)
    req.stop.extend(s for s in fields.opt_str_list(body, "stop_sequences", "stop_sequences", limits.MAX_STOP_STRINGS,
                                                   limits.MAX_STOP_CHARS) if s)
    for name in ("temperature", "top_p"):
        value = opt_number(body, name)
        if value is not None:
            setattr(req, name, value)
    top_k = opt_int(body, "top_k", 0, UINT32_MAX)
    if top_k is not None:
        req.top_k = top_k
    return Parsed(req, model, bool(opt_bool(body, "stream")))


def count_request(body: dict, request_id: str = "") -> pb.GenerateRequest:
    """POST /v1/messages/count_tokens body → the GenerateRequest whose prompt is counted (one token)."""
    _model, req, functions = _prompt(body, request_id)
    scratch = pb.GenerateRequest()  # checked; the prompt is the same whatever the choice and format
    _tool_choice(body, functions, scratch)
    _output_format(body, scratch)
    req.max_tokens = 1
    return req


def count_body(usage: dict) -> dict:
    return {"input_tokens": usage["prompt_tokens"]}


# --- response ----------------------------------------------------------------------------

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def usage_object(usage: dict) -> dict:
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return {"input_tokens": usage["prompt_tokens"] - cached, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached, "output_tokens": usage["completion_tokens"]}


def _tool_use(call: pb.ToolCall) -> dict:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": json.loads(call.arguments_json or "{}")}


class MessagesRendering:
    def __init__(self, parsed: Parsed, response_id: str):
        self.id = response_id
        self._model = parsed.model
        self._blocks: list[dict] = []
        self._text_open = False
        self._thinking_open = False

    def _message(self, stop_reason: Optional[str], usage: dict) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self._model,
                "content": list(self._blocks), "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}

    def opening(self) -> list[bytes]:
        start = self._message(None, {"input_tokens": 0, "cache_creation_input_tokens": 0,
                                     "cache_read_input_tokens": 0, "output_tokens": 0})
        return [named_event("message_start", {"type": "message_start", "message": start}),
                named_event("ping", {"type": "ping"})]

    def _close_text(self) -> list[bytes]:
        if not self._text_open:
            return []
        self._text_open = False
        return [named_event("content_block_stop", {"type": "content_block_stop", "index": len(self._blocks) - 1})]

    def _close_thinking(self) -> list[bytes]:
        if not self._thinking_open:
            return []
        self._thinking_open = False
        return [named_event("content_block_stop", {"type": "content_block_stop", "index": len(self._blocks) - 1})]

    def _thinking(self, text: str) -> list[bytes]:
        out = []
        if not self._thinking_open:
            self._blocks.append({"type": "thinking", "thinking": "", "signature": ""})
            self._thinking_open = True
            out.append(named_event("content_block_start", {"type": "content_block_start",
                                                           "index": len(self._blocks) - 1,
                                                           "content_block": dict(self._blocks[-1])}))
        self._blocks[-1]["thinking"] += text
        out.append(named_event("content_block_delta", {"type": "content_block_delta", "index": len(self._blocks) - 1,
                                                       "delta": {"type": "thinking_delta", "thinking": text}}))
        return out

    def frames(self, event: responses.Event) -> list[bytes]:
        if isinstance(event, responses.Reasoning):
            return self._close_text() + self._thinking(event.text)
        out = self._close_thinking()
        return out + self._frames(event)

    def _frames(self, event: responses.Event) -> list[bytes]:
        if isinstance(event, responses.Text):
            out = []
            if not self._text_open:
                self._blocks.append({"type": "text", "text": ""})
                self._text_open = True
                out.append(named_event("content_block_start", {"type": "content_block_start",
                                                               "index": len(self._blocks) - 1,
                                                               "content_block": {"type": "text", "text": ""}}))
            self._blocks[-1]["text"] += event.text
            delta = {"type": "content_block_delta", "index": len(self._blocks) - 1,
                     "delta": {"type": "text_delta", "text": event.text}}
            out.append(named_event("content_block_delta", delta))
            return out
        if isinstance(event, responses.ToolCalls):
            out = self._close_text()
            for call in event.calls:
                block = _tool_use(call)
                self._blocks.append(block)
                index = len(self._blocks) - 1
                out += [named_event("content_block_start", {"type": "content_block_start", "index": index,
                                                            "content_block": dict(block, input={})}),
                        named_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                            "delta": {"type": "input_json_delta",
                                                                      "partial_json": call.arguments_json}}),
                        named_event("content_block_stop", {"type": "content_block_stop", "index": index})]
            return out
        out = self._close_text()
        out.append(named_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP_REASONS.get(event.finish_reason, "end_turn"), "stop_sequence": None},
            "usage": usage_object(event.usage)}))
        out.append(named_event("message_stop", {"type": "message_stop"}))
        return out

    def error_frames(self, err: RequestError) -> list[bytes]:
        return [named_event("error", error_shape(err)[1])]

    def body(self, events: Iterable[responses.Event]) -> dict:
        for event in events:
            if isinstance(event, responses.Finish):
                return self._message(_STOP_REASONS.get(event.finish_reason, "end_turn"), usage_object(event.usage))
            self.frames(event)
        raise AssertionError("events() ends with a Finish or raises")


class MessagesAdapter(ModuleAdapter):
    id_prefix = "msg"
    parse = staticmethod(parse)
    rendering_of = MessagesRendering
