"""The gRPC contract's checks of request messages, against the shared limits (``limits``).

Errors name the field the way the REST edge's client wrote it (``input[3]``,
``tools[2].function.name``, ``messages[3].tool_calls[0].function.arguments``): the edge passes
``error-param`` on as the API error's ``param``. Bounds and shapes only: what the engine
decides (a model's context, vocabulary, whether a schema compiles, duplicate tool names, a
tool_choice naming no tool) it checks once, for every caller (``engine.validation``,
``engine.tool_calls.check_tools``). Protobuf already refused invalid UTF-8.
"""

from __future__ import annotations

from inference_service import limits
from inference_service.engine.validation import check_model_name
from inference_service.errors import InvalidRequest
from inference_service.v1 import inference_pb2 as pb


def embedding_inputs(request: pb.EmbedRequest) -> list[str | tuple[int, ...]]:
    """An EmbedRequest's inputs for ``engine.embed``, checked against the shared limits.

    Errors name the input the way the REST edge's client wrote it (``input``, ``input[3]``):
    the edge passes ``error-param`` on as the OpenAI error's ``param``. The model's context
    and vocabulary are the engine's to check.
    """
    check_model_name(request.model)
    count = len(request.inputs)
    if count == 0:
        raise InvalidRequest("input must hold at least one text or token array", "input")
    if count > limits.MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(limits.too_many_inputs_message("input", count), "input")
    inputs: list[str | tuple[int, ...]] = []
    for i, item in enumerate(request.inputs):
        param = f"input[{i}]" if count > 1 else "input"
        kind = item.WhichOneof("kind")
        if kind == "text":
            text = item.text
            if not text:
                raise InvalidRequest(f"{param} is an empty string", param)
            if len(text) > limits.MAX_EMBEDDING_INPUT_CHARS:
                raise InvalidRequest(limits.too_long_message(param, text, limits.MAX_EMBEDDING_INPUT_CHARS), param)
            index = limits.lone_surrogate(text)  # protobuf refuses them; in-process callers may not
            if index is not None:
                raise InvalidRequest(limits.surrogate_message(param, text, index), param)
            inputs.append(text)
        elif kind == "tokens":
            ids = tuple(item.tokens.ids)
            if not ids:
                raise InvalidRequest(f"{param} is an empty token array", param)
            if len(ids) > limits.MAX_EMBEDDING_INPUT_TOKENS:
                raise InvalidRequest(limits.too_many_tokens_message(param, len(ids)), param)
            if min(ids) < 0:
                raise InvalidRequest(f"{param} holds a negative token id ({min(ids)})", param)
            inputs.append(ids)
        else:
            raise InvalidRequest(f"{param} sets neither text nor tokens", param)
    return inputs


def _bounded(text: str, limit: int, param: str) -> None:
    if len(text) > limit:
        raise InvalidRequest(limits.too_long_message(param, text, limit), param)


def _function_name(name: str, param: str, what: str) -> None:
    problem = limits.function_name_problem(name)
    if problem is not None:
        raise InvalidRequest(f"{what} {limits.quote(name)} {problem}", param)


def check_tool_fields(request: pb.GenerateRequest) -> None:
    """The bounds of a GenerateRequest's structured-output and tool fields (``limits``).

    Errors name the field the way the REST edge's client wrote it (``tools[2].function.name``,
    ``response_format``, ``tool_choice``, ``messages[3].tool_calls[0].function.arguments``):
    the edge passes ``error-param`` on as the OpenAI error's ``param``. Whether a schema or a
    grammar compiles is the engine's to say. Protobuf already refused invalid UTF-8.
    """
    kind = request.constraint.WhichOneof("kind")
    if kind in ("json_schema", "regex", "lark", "gbnf"):
        _bounded(getattr(request.constraint, kind), limits.MAX_SCHEMA_CHARS,
                 request.constraint.param[:limits.MAX_PARAM_CHARS] or "response_format")
    if len(request.tools) > limits.MAX_TOOLS:
        raise InvalidRequest(f"tools takes at most {limits.MAX_TOOLS} tools, got {len(request.tools)}", "tools")
    for i, tool in enumerate(request.tools):
        param = f"tools[{i}].function"
        _function_name(tool.name, f"{param}.name", f"{param}.name")
        _bounded(tool.description, limits.MAX_DESCRIPTION_CHARS, f"{param}.description")
        _bounded(tool.parameters_json, limits.MAX_SCHEMA_CHARS, f"{param}.parameters")
    if request.tool_choice.mode == pb.ToolChoice.MODE_FUNCTION:
        _function_name(request.tool_choice.function_name, "tool_choice", "tool_choice's function name")
    check_message_tool_fields(request.messages)


def check_message_tool_fields(messages) -> None:
    """The bounds of the ChatMessages' names, tool calls and tool results (Generate, Tokenize)."""
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        _bounded(message.name, limits.MAX_NAME_CHARS, f"{param}.name")
        if message.tool_calls and message.role != "assistant":
            raise InvalidRequest(f"{param} has tool_calls, which only assistant turns have", f"{param}.tool_calls")
        for j, call in enumerate(message.tool_calls):
            call_param = f"{param}.tool_calls[{j}]"
            if not call.id:
                raise InvalidRequest(f"{call_param}.id is required", f"{call_param}.id")
            _bounded(call.id, limits.MAX_TOOL_CALL_ID_CHARS, f"{call_param}.id")
            _function_name(call.name, f"{call_param}.function.name", f"{call_param}.function.name")
            arguments = f"{call_param}.function.arguments"
            _bounded(call.arguments_json, limits.MAX_TOOL_ARGUMENTS_CHARS, arguments)
            problem = limits.json_object_problem(call.arguments_json)
            if problem is not None:
                raise InvalidRequest(f"{arguments} {problem}", arguments)
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(f"{param}.tool_call_id is required on a tool turn", f"{param}.tool_call_id")
        if message.role != "tool" and message.tool_call_id:
            raise InvalidRequest(f"{param} has a tool_call_id, which only tool turns have", f"{param}.tool_call_id")
        _bounded(message.tool_call_id, limits.MAX_TOOL_CALL_ID_CHARS, f"{param}.tool_call_id")
