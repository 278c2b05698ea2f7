"""Requests in: OpenAI JSON bodies become ``GenerateRequest`` (and ``EmbedRequest``) messages.

Pure functions, no I/O. A request body (already-decoded JSON object) is checked here for what
only the edge can see: JSON types, the shape of each field, and fields the product does not
support (rejected by name rather than silently ignored). Then the numbers are checked against
the contract both entry points share (:mod:`inference_service.limits`: ranges, counts, string
lengths, roles), which the inference service applies again for every gRPC caller. A failure
raises :class:`RequestError` (400, naming the field in ``param``).

Fields are set on the protobuf only when the client sent them: the optional fields of the
proto stay unset otherwise and the service applies OpenAI's defaults (temperature 1, top_p 1,
no penalties). ``null`` counts as absent, as OpenAI treats it. Unknown fields are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from inference_service import limits
from inference_service.limits import LOGIT_BIAS_RANGE, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS, RANGES, quote
from inference_service.v1 import inference_pb2 as pb

from rest_edge.apis.fields import (  # noqa: F401  (parse_json_body and the bounds are part of this module's API)
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    NO_PARAMETERS,
    UINT32_MAX,
    call_id as _call_id,
    checked_text as _text,
    function_name as _function_name,
    joined_text,
    json_type as _json_type,
    missing as _missing,
    object_at as _object_at,
    objects_in,
    opt_bool as _opt_bool,
    opt_bool_at as _opt_bool_at,
    opt_int as _opt_int,
    opt_number as _opt_number,
    opt_str_at as _opt_str_at,
    parse_json_body,
    range_error as _range_error,
    required_str as _required_str,
    schema_text as _schema_text,
    text_at,
    type_error as _type_error,
    unsupported as _unsupported,
)
from rest_edge import field_tables
from rest_edge.apis import tools as apis_tools
from rest_edge.errors import invalid

_ROLE_NAMES = ", ".join(limits.ROLES[:-1]) + " and " + limits.ROLES[-1]  # "system, user, assistant and tool"


@dataclass
class ParsedRequest:
    """A validated generation request: the protobuf to send and how to answer."""

    request: pb.GenerateRequest
    model: str
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False  # answer with a ``logprobs`` key
    render_options: dict = field(default_factory=dict)  # the renderer's own options (chat: reasoning_field)
    choices: int = 1  # ``n``: answers to the prompt


# --- unsupported fields -------------------------------------------------------------------

def _choices(body: dict) -> int:
    """``n``: how many answers (each in a slot of its own), 1 to ``MAX_CHOICES``."""
    n = _opt_int(body, "n", 1, limits.MAX_CHOICES)
    return 1 if n is None else n


def _check_only_one(body: dict, name: str, why: str) -> None:
    """A count field (``n``, ``best_of``) that may be absent or 1, and nothing else."""
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer", value)
    if value < 1:
        raise _range_error(name, ">= 1", value)
    if value > 1:
        raise _unsupported(name, f"Unsupported value for '{name}': {why}, got {quote(value)}.")


# Fields other servers define that would change the answer and that we do not implement:
# refused by name when present with anything but their neutral value (a field we accept is
# a field we honour). Fields that cannot change the answer (``user``, ``metadata``,
# ``store``, ``service_tier``, ``safety_identifier``, ``prompt_cache_key``, messages'
# ``name`` but on a tool turn) are accepted and ignored on purpose; so is any field nobody
# defines.
_NOT_IMPLEMENTED: dict[str, tuple[object, str]] = {
    # name: (neutral value that is accepted, why it is refused)
    "stop_token_ids": ([], "stopping on token ids is not supported; use 'stop' strings"),
    "include_stop_str_in_output": (False, "stop strings are never included in the output"),
    "skip_special_tokens": (True, "control tokens are never part of the output"),
    "use_beam_search": (False, "beam search is not supported"),
    "length_penalty": (1.0, "beam search is not supported"),
    "prompt_logprobs": (None, "prompt log probabilities are not supported"),
    "truncate_prompt_tokens": (None, "prompts are never truncated; an over-long prompt is refused"),
    "add_generation_prompt": (True, "the assistant's turn is always opened"),
    "continue_final_message": (False, "continuing the final message is not supported"),
    "chat_template": (None, "the model's own chat template is always used"),
    "modalities": (["text"], "only text output is supported"),
    "audio": (None, "audio output is not supported"),
    "prediction": (None, "predicted outputs are not supported"),
    "web_search_options": (None, "web search is not supported"),
}


def check_unsupported(body: dict) -> None:
    """Reject, by name, fields that would change the answer in ways the product cannot honour."""
    for name, (neutral, why) in _NOT_IMPLEMENTED.items():
        value = body.get(name)
        if value is not None and value != neutral:
            raise _unsupported(name, f"Unsupported parameter: '{name}': {why}.")
    # OpenAI's deprecated function calling: its successor, tools, is served (chat).
    if body.get("functions"):
        raise _unsupported("functions", "Unsupported parameter: 'functions' is deprecated and not supported; "
                                        "use 'tools' (on /v1/chat/completions).")
    function_call = body.get("function_call")
    if function_call is not None and function_call not in ("none", "auto"):
        raise _unsupported("function_call", "Unsupported parameter: 'function_call' is deprecated and not supported; "
                                            "use 'tool_choice' with 'tools' (on /v1/chat/completions).")
    suffix = body.get("suffix")
    if suffix is not None and suffix != "":
        raise _unsupported("suffix", "Unsupported parameter: 'suffix'. Insertion (suffix) is not supported.")
    echo = _opt_bool(body, "echo")
    if echo:
        raise _unsupported("echo", "Unsupported parameter: 'echo'. Echoing the prompt is not supported.")
    _check_only_one(body, "best_of", "only 1 is supported")


# --- shared fields ------------------------------------------------------------------------

def _stop(body: dict) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        return [_text(value, "stop", limits.MAX_STOP_CHARS)] if value else []
    if not isinstance(value, list):
        raise _type_error("stop", "a string or an array of strings", value)
    if len(value) > MAX_STOP_STRINGS:
        raise invalid(
            f"Invalid 'stop': expected an array of at most {MAX_STOP_STRINGS} strings, but got {len(value)}.",
            param="stop",
            code="invalid_value",
        )
    for k, item in enumerate(value):
        if not isinstance(item, str):
            raise _type_error("stop", "a string or an array of strings", item)
        _text(item, f"stop[{k}]", limits.MAX_STOP_CHARS)
    return [s for s in value if s]


def _logit_bias(body: dict) -> dict[int, float]:
    value = body.get("logit_bias")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _type_error("logit_bias", "an object mapping token ids to numbers", value)
    bias: dict[int, float] = {}
    for key, b in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            token = -1
        if not 0 <= token <= INT32_MAX or str(key).strip() != str(token):
            raise invalid(
                f"Invalid 'logit_bias': keys must be token ids (non-negative integers as strings), got {quote(key)}.",
                param="logit_bias",
                code="invalid_value",
            )
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise _type_error("logit_bias", "numbers as values", b)
        if b not in LOGIT_BIAS_RANGE:
            raise invalid(
                f"Invalid 'logit_bias': values must be {LOGIT_BIAS_RANGE.describe()}, got {quote(b)} for token {token}.",
                param="logit_bias",
                code="invalid_value",
            )
        bias[token] = float(b)
    return bias


def _common(body: dict, req: pb.GenerateRequest) -> tuple[bool, bool]:
    """Fields shared by both endpoints; returns (stream, include_usage)."""
    stream = bool(_opt_bool(body, "stream"))
    include_usage = False
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise _type_error("stream_options", "an object", opts)
        value = opts.get("include_usage")
        if value is not None and not isinstance(value, bool):
            raise _type_error("stream_options.include_usage", "a boolean", value)
        include_usage = bool(value) and stream

    for name in RANGES:
        value = _opt_number(body, name)
        if value is not None:
            setattr(req, name, value)

    top_k = body.get("top_k")
    if top_k == -1:  # a common spelling of "no limit" (vLLM); the proto's is 0
        req.top_k = 0
    else:
        value = _opt_int(body, "top_k", 0, UINT32_MAX)
        if value is not None:
            req.top_k = value

    seed = _opt_int(body, "seed", INT64_MIN, INT64_MAX)
    if seed is not None:
        req.seed = seed
    # vLLM's extensions that benchmark tools send to fix output lengths (the service checks
    # min_tokens against max_tokens and the context).
    req.ignore_eos = bool(_opt_bool(body, "ignore_eos"))
    min_tokens = _opt_int(body, "min_tokens", 0, UINT32_MAX)
    if min_tokens is not None:
        req.min_tokens = min_tokens
    req.stop.extend(_stop(body))
    for token, b in _logit_bias(body).items():
        req.logit_bias[token] = b
    return stream, include_usage


# --- /v1/completions ----------------------------------------------------------------------

def _prompt(body: dict) -> str:
    value = body.get("prompt")
    if value is None:
        raise invalid("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if isinstance(value, str):
        return _text(value, "prompt")
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], str):
            return _text(value[0], "prompt[0]")
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise invalid("Unsupported 'prompt': token-id prompts are not supported; send a string.",
                          param="prompt", code="unsupported_parameter")
        raise invalid(
            f"Invalid 'prompt': expected a string or an array of exactly one string, got an array of {len(value)}.",
            param="prompt",
            code="invalid_value",
        )
    raise _type_error("prompt", "a string or an array of one string", value)


def _check_no_chat_features(body: dict) -> None:
    """Completions have no tools and no structured outputs (OpenAI's have neither); their
    neutral values (``tools: []``, ``tool_choice: "none"``/``"auto"``, a text format) pass."""
    if body.get("tools"):
        raise _unsupported("tools", "Unsupported parameter: 'tools' on /v1/completions; tool calling is served on "
                                    "/v1/chat/completions.")
    for name in ("reasoning_effort", "reasoning_format", "chat_template_kwargs"):
        if body.get(name) is not None:
            raise _unsupported(name, f"Unsupported parameter: '{name}' on /v1/completions: a completion has no chat "
                                     "template, so no thinking to switch or separate; use /v1/chat/completions.")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and tool_choice not in ("none", "auto"):
        raise _unsupported("tool_choice", "Unsupported parameter: 'tool_choice' on /v1/completions; tool calling is "
                                          "served on /v1/chat/completions.")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise _unsupported(
            "response_format",
            f"Unsupported value for 'response_format' on /v1/completions: only {{\"type\": \"text\"}}, got "
            f"{quote(kind)}; structured outputs are served on /v1/chat/completions.",
        )


def completion_request(body: dict, request_id: str = "") -> ParsedRequest:
    """POST /v1/completions body → GenerateRequest (``request_id`` names it in the service's logs)."""
    model = _required_str(body, "model", limits.MAX_MODEL_CHARS)
    prompt = _prompt(body)
    check_unsupported(body)
    _check_no_chat_features(body)
    req = pb.GenerateRequest(model=model, prompt=prompt, request_id=request_id)
    raw = _opt_bool(body, "raw")
    if raw:
        req.raw = True
    max_tokens = _opt_int(body, "max_tokens", 1, UINT32_MAX)
    if max_tokens is not None:
        req.max_tokens = max_tokens
    # Completions: ``logprobs`` is the number of most likely alternatives per token.
    logprobs = _opt_int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    if logprobs is not None:
        req.logprobs = True
        req.top_logprobs = logprobs
    stream, include_usage = _common(body, req)
    _other_fields(body, req, field_tables.COMPLETIONS, chat=False)
    req.n = _choices(body)
    return ParsedRequest(req, model, stream, include_usage, logprobs=logprobs is not None or req.logprobs,
                         choices=req.n)


# --- /v1/chat/completions -----------------------------------------------------------------

def _content(value: Any, param: str) -> str:
    return joined_text(value, param, lambda part, part_param: _text_part(part, part_param, param))


def _text_part(part: dict, param: str, content_param: str) -> str:
    kind = part.get("type")
    if kind != "text":
        raise invalid(f"Unsupported content part type {quote(kind)} in '{param}': only 'text' parts are supported.",
                      param=content_param, code="unsupported_parameter")
    return text_at(part, "text", param)


def _messages(body: dict) -> list[pb.ChatMessage]:
    value = body.get("messages")
    if value is None:
        raise invalid("Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not isinstance(value, list):
        raise _type_error("messages", "an array", value)
    if not value:
        raise invalid("Invalid 'messages': expected a non-empty array.", param="messages", code="invalid_value")
    out = []
    for param, msg in objects_in(value, "messages"):
        role = msg.get("role")
        if not isinstance(role, str):
            if role is None:
                raise invalid(f"Missing required parameter: '{param}.role'.", param=f"{param}.role",
                              code="missing_required_parameter")
            raise _type_error(f"{param}.role", "a string", role)
        _text(role, f"{param}.role", limits.MAX_ROLE_CHARS)
        role = limits.ROLE_ALIASES.get(role, role)
        if role not in limits.ROLES:
            raise invalid(
                f"Unsupported value for '{param}.role': {quote(role)}; supported roles are {_ROLE_NAMES}.",
                param=f"{param}.role",
                code="unsupported_parameter",
            )
        # A participant's name: accepted, checked, not used; on a tool turn, the function's name.
        name = _opt_str_at(msg, "name", f"{param}.name", limits.MAX_NAME_CHARS)
        if msg.get("function_call"):
            raise _unsupported(f"{param}.function_call", f"Unsupported parameter: '{param}.function_call' is "
                                                         "deprecated and not supported; use 'tool_calls'.")
        message = pb.ChatMessage(role=role)
        calls = msg.get("tool_calls")
        if calls is not None and calls != []:
            if role != "assistant":
                raise invalid(f"Invalid '{param}.tool_calls': only assistant messages have tool calls.",
                              param=f"{param}.tool_calls", code="invalid_value")
            message.tool_calls.extend(_tool_calls(calls, f"{param}.tool_calls"))
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if call_id is None:
                raise _missing(f"{param}.tool_call_id")
            message.tool_call_id = _call_id(call_id, f"{param}.tool_call_id")
            message.name = name or ""
        content = msg.get("content")
        if content is None:
            if role != "assistant":
                raise _missing(f"{param}.content")
            content = ""  # an assistant turn that only called tools, or an empty one
        message.content = _content(content, f"{param}.content")
        out.append(message)
    return out



def _check_function_type(obj: dict, param: str) -> None:
    """``type`` of a tool, a tool call or a named tool choice: "function", or absent (the same)."""
    kind = obj.get("type")
    if kind is None or kind == "function":
        return
    if not isinstance(kind, str):
        raise _type_error(f"{param}.type", "a string", kind)
    raise _unsupported(f"{param}.type",
                       f"Unsupported value for '{param}.type': {quote(kind)}; only 'function' is supported.")



def _tool_calls(value: Any, param: str) -> list[pb.ToolCall]:
    """An assistant message's ``tool_calls``: ``[{"id", "type": "function", "function": {"name", "arguments"}}]``."""
    if not isinstance(value, list):
        raise _type_error(param, "an array", value)
    calls = []
    for call_param, call in objects_in(value, param):
        call_id = call.get("id")
        if call_id is None:
            raise _missing(f"{call_param}.id")
        call_id = _call_id(call_id, f"{call_param}.id")
        _check_function_type(call, call_param)
        function = _object_at(call, "function", f"{call_param}.function")
        name = _function_name(function.get("name"), f"{call_param}.function.name")
        arguments_param = f"{call_param}.function.arguments"
        arguments = function.get("arguments")
        if arguments is None:
            raise _missing(arguments_param)
        if not isinstance(arguments, str):
            raise _type_error(arguments_param, "a string (the arguments as JSON text)", arguments)
        _text(arguments, arguments_param, limits.MAX_TOOL_ARGUMENTS_CHARS)
        problem = limits.json_object_problem(arguments)
        if problem is not None:
            raise invalid(f"Invalid '{arguments_param}': the arguments {problem}.", param=arguments_param,
                          code="invalid_value")
        calls.append(pb.ToolCall(id=call_id, name=name, arguments_json=arguments))
    return calls


# --- structured outputs and tools (chat) ----------------------------------------------------


def _constraint(body: dict) -> Optional[pb.Constraint]:
    """``response_format``: text (no constraint), ``json_object`` or ``json_schema``.

    ``json_schema.name`` is required and checked (OpenAI's rule), ``description`` and
    ``strict`` are checked; only the schema constrains the answer, and it always does
    (``strict`` false gets the same guarantee as true).
    """
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _type_error("response_format", "an object", fmt)
    kind = fmt.get("type")
    if kind is None:
        raise _missing("response_format.type")
    if kind == "text":
        return None
    if kind == "json_object":
        return field_tables.json_object_schema(fmt) or pb.Constraint(json_object=True)
    if kind == "json_schema":
        spec = _object_at(fmt, "json_schema", "response_format.json_schema")
        _function_name(spec.get("name"), "response_format.json_schema.name")
        _opt_str_at(spec, "description", "response_format.json_schema.description", limits.MAX_DESCRIPTION_CHARS)
        _opt_bool_at(spec, "strict", "response_format.json_schema.strict")
        schema = spec.get("schema")
        if schema is None:
            raise _missing("response_format.json_schema.schema")
        return pb.Constraint(json_schema=_schema_text(schema, "response_format.json_schema.schema"))
    if not isinstance(kind, str):
        raise _type_error("response_format.type", "a string", kind)
    raise invalid(f"Invalid value for 'response_format.type': {quote(kind)}. Supported values are: 'text', "
                  "'json_object' and 'json_schema'.", param="response_format.type", code="invalid_value")


def _tools(body: dict) -> list[pb.Tool]:
    """``tools``: ``[{"type": "function", "function": {"name", "description", "parameters", "strict"}}]``.

    ``parameters`` absent is a function without arguments; ``strict`` is checked, and the
    arguments of a call are always valid for ``parameters`` (the engine constrains them).
    """
    tools: list[pb.Tool] = []
    first: dict[str, int] = {}
    for i, (param, tool) in enumerate(apis_tools.tool_objects(body)):
        _check_function_type(tool, param)
        function = _object_at(tool, "function", f"{param}.function")
        name = _function_name(function.get("name"), f"{param}.function.name")
        if name in first:
            raise invalid(f"Invalid '{param}.function.name': {quote(name)} is also the name of "
                          f"tools[{first[name]}]; the names of the tools must differ.",
                          param=f"{param}.function.name", code="invalid_value")
        first[name] = i
        description = _opt_str_at(function, "description", f"{param}.function.description",
                                  limits.MAX_DESCRIPTION_CHARS)
        _opt_bool_at(function, "strict", f"{param}.function.strict")
        parameters = function.get("parameters")
        parameters_json = NO_PARAMETERS if parameters is None else _schema_text(parameters, f"{param}.function.parameters")
        tools.append(pb.Tool(name=name, description=description or "", parameters_json=parameters_json))
    return tools



def _tool_choice(body: dict, tools: list[pb.Tool]) -> Optional[pb.ToolChoice]:
    """``tool_choice``: "none", "auto", "required" or ``{"type": "function", "function": {"name"}}``
    naming one of ``tools``; only with tools, as OpenAI has it (``allowed_tools``: :func:`_allowed_tools`)."""
    value = body.get("tool_choice")
    if value is None:
        return None
    if not tools:
        raise invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                      param="tool_choice", code="invalid_value")
    if isinstance(value, str):
        if value not in apis_tools.MODES:
            raise invalid(f"Invalid value for 'tool_choice': {quote(value)}. Supported values are: 'none', 'auto', "
                          "'required' or an object naming a function.", param="tool_choice", code="invalid_value")
        return pb.ToolChoice(mode=apis_tools.MODES[value])
    if not isinstance(value, dict):
        raise _type_error("tool_choice", "a string or an object", value)
    _check_function_type(value, "tool_choice")
    function = _object_at(value, "function", "tool_choice.function")
    name = function.get("name")
    if name is None:
        raise _missing("tool_choice.function.name")
    if not isinstance(name, str):
        raise _type_error("tool_choice.function.name", "a string", name)
    if name not in {t.name for t in tools}:
        raise invalid(f"Invalid value for 'tool_choice': it names the function {quote(name)}, which is not one of "
                      "'tools'.", param="tool_choice", code="invalid_value")
    return pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name=name)


def _allowed_tools(value: dict, tools: list[pb.Tool]) -> tuple[pb.ToolChoice, list[pb.Tool]]:
    """``{"type": "allowed_tools", "allowed_tools": {"mode": "auto" | "required", "tools":
    [{"type": "function", "function": {"name"}}]}}``: the model may (must) call one of these
    tools only. Only they are sent to the service, which constrains calls to the tools it gets."""
    if not tools:
        raise invalid("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
                      param="tool_choice", code="invalid_value")
    spec = _object_at(value, "allowed_tools", "tool_choice.allowed_tools")
    mode = apis_tools.allowed_tools_mode(spec, "tool_choice.allowed_tools")
    names = apis_tools.allowed_tool_names(spec.get("tools"), "tool_choice.allowed_tools.tools", tools, nested=True)
    return pb.ToolChoice(mode=mode), apis_tools.restrict(tools, names)


def _tool_fields(body: dict, req: pb.GenerateRequest) -> None:
    """``response_format``, ``tools``, ``tool_choice`` and ``parallel_tool_calls`` onto ``req``."""
    constraint = _constraint(body)
    if constraint is not None:
        req.constraint.CopyFrom(constraint)
    tools = _tools(body)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        tool_choice, tools = _allowed_tools(choice, tools)
    else:
        tool_choice = _tool_choice(body, tools)
    req.tools.extend(tools)
    if tool_choice is not None:
        req.tool_choice.CopyFrom(tool_choice)
    parallel = _opt_bool(body, "parallel_tool_calls")
    if parallel is not None:
        req.parallel_tool_calls = parallel


def chat_request(body: dict, request_id: str = "") -> ParsedRequest:
    """POST /v1/chat/completions body → GenerateRequest (``request_id`` names it in the service's logs)."""
    model = _required_str(body, "model", limits.MAX_MODEL_CHARS)
    messages = _messages(body)
    check_unsupported(body)
    req = pb.GenerateRequest(model=model, messages=messages, request_id=request_id)
    _tool_fields(body, req)
    if body.get("max_completion_tokens") is not None:
        max_tokens = _opt_int(body, "max_completion_tokens", 1, UINT32_MAX)
    else:
        max_tokens = _opt_int(body, "max_tokens", 1, UINT32_MAX)
    if max_tokens is not None:
        req.max_tokens = max_tokens
    logprobs = bool(_opt_bool(body, "logprobs"))
    top_logprobs = _opt_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top_logprobs is not None and not logprobs:
        raise invalid("Invalid 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set.",
                      param="top_logprobs", code="invalid_value")
    if logprobs:
        req.logprobs = True
        req.top_logprobs = top_logprobs or 0
    stream, include_usage = _common(body, req)
    _other_fields(body, req, field_tables.CHAT, chat=True)
    req.n = _choices(body)
    return ParsedRequest(req, model, stream, include_usage, logprobs=logprobs or req.logprobs,
                         render_options={"reasoning_field": _reasoning_fields(body, req)}, choices=req.n)


# Where a chat answer's thinking goes, by llama.cpp's ``reasoning_format``.
REASONING_FORMATS = {"auto": "reasoning_content", "deepseek": "reasoning_content",
                     "deepseek-legacy": "reasoning_content", "none": ""}
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")


def _reasoning_fields(body: dict, req: pb.GenerateRequest) -> str:
    """Thinking models: whether to think (``reasoning_effort`` "none"/"minimal", or
    ``chat_template_kwargs.enable_thinking`` false, switch it off where the template can) and
    where the thinking goes (``reasoning_format``; Ollama's ``reasoning`` field by default)."""
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in REASONING_EFFORTS:
            raise invalid(f"Invalid value for 'reasoning_effort': expected one of {', '.join(REASONING_EFFORTS)}, "
                          f"got {limits.quote(effort)}.", param="reasoning_effort", code="invalid_value")
        if effort in ("none", "minimal"):
            req.thinking = False
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict) or set(kwargs) - {"enable_thinking"}:
            raise _unsupported("chat_template_kwargs", "Unsupported parameter: 'chat_template_kwargs': only "
                               "'enable_thinking' is honoured; the model's own chat template is always used.")
        if "enable_thinking" in kwargs:
            enable = kwargs["enable_thinking"]
            if not isinstance(enable, bool):
                raise _type_error("chat_template_kwargs.enable_thinking", "a boolean", enable)
            req.thinking = enable
    reasoning_format = body.get("reasoning_format")
    if reasoning_format is None:
        return "reasoning"  # Ollama's name
    if reasoning_format not in REASONING_FORMATS:
        raise invalid(f"Invalid value for 'reasoning_format': expected one of {', '.join(REASONING_FORMATS)}, "
                      f"got {limits.quote(reasoning_format)}.", param="reasoning_format", code="invalid_value")
    return REASONING_FORMATS[reasoning_format]


def _other_fields(body: dict, req: pb.GenerateRequest, table: dict, *, chat: bool) -> None:
    """The route's field table (rest_edge.field_tables): unknown fields, OpenAI's inert ones,
    llama.cpp's and vLLM's."""
    field_tables.check_known(body, table)
    field_tables.check_inert(body)
    field_tables.apply_generation_fields(body, req, chat=chat)


# --- /v1/embeddings -----------------------------------------------------------------------

ENCODING_FORMATS = ("float", "base64")
_INPUT_SHAPES = "a string, an array of strings, an array of token ids or an array of token id arrays"


@dataclass
class ParsedEmbedding:
    """A validated embedding request: the protobuf to send and how to answer."""

    request: pb.EmbedRequest
    model: str
    encoding_format: str = "float"
    dimensions: Optional[int] = None  # asked for; the resource checks it against the model's


def _is_token_id(value: Any) -> bool:
    """A JSON number that can be a token id's: an integer (``3.0`` counts, as elsewhere)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _token_ids(values: list, param: str) -> pb.EmbedInput:
    """One token array, ``param`` its JSON path: non-empty, bounded, ids in the int32 range."""
    if not values:
        raise invalid(f"Invalid '{param}': expected a non-empty array of token ids.", param=param,
                      code="invalid_value")
    if len(values) > limits.MAX_EMBEDDING_INPUT_TOKENS:
        raise invalid(limits.too_many_tokens_message(param, len(values)), param=param, code="invalid_value")
    ids = []
    for k, value in enumerate(values):
        if not _is_token_id(value):
            raise _type_error(f"{param}[{k}]", "a token id (a non-negative integer)", value)
        value = int(value)
        if not 0 <= value <= limits.MAX_TOKEN_ID:
            raise _range_error(f"{param}[{k}]", f">= 0 and <= {limits.MAX_TOKEN_ID}", value)
        ids.append(value)
    return pb.EmbedInput(tokens=pb.TokenIds(ids=ids))


def _embedding_text(value: str, param: str) -> pb.EmbedInput:
    if not value:
        raise invalid(f"Invalid '{param}': must not be an empty string.", param=param, code="invalid_value")
    return pb.EmbedInput(text=_text(value, param, limits.MAX_EMBEDDING_INPUT_CHARS))


def _embedding_inputs(body: dict) -> list[pb.EmbedInput]:
    """``input``: a string, a list of strings, one token array, or a list of token arrays.

    A list may mix strings and token arrays (each is embedded on its own); at most
    ``MAX_EMBEDDING_INPUTS`` of them, none empty.
    """
    value = body.get("input")
    if value is None:
        raise invalid("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    if isinstance(value, str):
        return [_embedding_text(value, "input")]
    if not isinstance(value, list):
        raise _type_error("input", _INPUT_SHAPES, value)
    if not value:
        raise invalid("Invalid 'input': expected a non-empty array.", param="input", code="invalid_value")
    if _is_token_id(value[0]):
        return [_token_ids(value, "input")]  # one token array
    if len(value) > limits.MAX_EMBEDDING_INPUTS:
        raise invalid(limits.too_many_inputs_message("input", len(value)), param="input", code="invalid_value")
    inputs = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if isinstance(item, str):
            inputs.append(_embedding_text(item, param))
        elif isinstance(item, list):
            inputs.append(_token_ids(item, param))
        else:
            raise _type_error(param, "a string or an array of token ids", item)
    return inputs


def embedding_request(body: dict, request_id: str = "") -> ParsedEmbedding:
    """POST /v1/embeddings body → EmbedRequest.

    ``user`` is accepted and ignored on purpose, like any field nobody defines. ``dimensions``
    is accepted only when it equals the model's own dimension (the resource checks that):
    this server never shortens vectors.
    """
    model = _required_str(body, "model", limits.MAX_MODEL_CHARS)
    inputs = _embedding_inputs(body)
    field_tables.check_known(body, field_tables.EMBEDDINGS)
    field_tables.check_inert(body)
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    elif not isinstance(encoding_format, str):
        raise _type_error("encoding_format", "a string", encoding_format)
    elif encoding_format not in ENCODING_FORMATS:
        raise invalid(
            f"Invalid 'encoding_format': expected 'float' or 'base64', but got {quote(encoding_format)}.",
            param="encoding_format", code="invalid_value",
        )
    dimensions = _opt_int(body, "dimensions", 1, UINT32_MAX)
    request = pb.EmbedRequest(model=model, inputs=inputs, request_id=request_id)
    return ParsedEmbedding(request, model, encoding_format, dimensions)
