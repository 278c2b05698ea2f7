"""Protobuf ↔ engine types. Pure functions: the servicer only calls these and the engine."""

from __future__ import annotations

from typing import Iterable, Optional

from inference_service.engine.types import (
    ChatMessage,
    Constraint,
    EngineStatus,
    GenerationChunk,
    GenerationRequest,
    ModelDescription,
    SamplingParams,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolChoiceMode,
)
from inference_service.errors import InvalidRequest
from inference_service.v1 import inference_pb2 as pb

_FINISH_REASONS = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
}

# ToolChoice.Mode → GenerationRequest.tool_choice; UNSPECIFIED (absent) is "auto".
TOOL_CHOICE_MODES: dict[int, ToolChoiceMode] = {
    pb.ToolChoice.MODE_UNSPECIFIED: "auto",
    pb.ToolChoice.MODE_NONE: "none",
    pb.ToolChoice.MODE_AUTO: "auto",
    pb.ToolChoice.MODE_REQUIRED: "required",
    pb.ToolChoice.MODE_FUNCTION: "function",
}


def _optional(message, name: str, default):
    return getattr(message, name) if message.HasField(name) else default


def request_from_proto(message: pb.GenerateRequest) -> GenerationRequest:
    defaults = SamplingParams()
    sampling = SamplingParams(
        temperature=_optional(message, "temperature", defaults.temperature),
        top_p=_optional(message, "top_p", defaults.top_p),
        top_k=_optional(message, "top_k", defaults.top_k),
        min_p=_optional(message, "min_p", defaults.min_p),
        repetition_penalty=_optional(message, "repetition_penalty", defaults.repetition_penalty),
        penalty_last_n=_optional(message, "penalty_last_n", defaults.penalty_last_n),
        typical_p=_optional(message, "typical_p", defaults.typical_p),
        frequency_penalty=_optional(message, "frequency_penalty", defaults.frequency_penalty),
        presence_penalty=_optional(message, "presence_penalty", defaults.presence_penalty),
        seed=_optional(message, "seed", None),
        logit_bias=dict(message.logit_bias),
        logprobs=message.logprobs or message.top_logprobs > 0,
        top_logprobs=message.top_logprobs,
    )
    mode = message.tool_choice.mode
    if mode not in TOOL_CHOICE_MODES:  # a value of a newer proto
        raise InvalidRequest(f"tool_choice has an unknown mode ({mode})", "tool_choice")
    tool_choice = TOOL_CHOICE_MODES[mode]
    return GenerationRequest(
        model=message.model,
        prompt=message.prompt if not message.messages else (message.prompt or None),
        messages=messages_from_proto(message.messages),
        raw=message.raw,
        max_tokens=_optional(message, "max_tokens", None),
        stop=tuple(s for s in message.stop if s),
        sampling=sampling,
        request_id=message.request_id,
        ignore_eos=message.ignore_eos,
        min_tokens=message.min_tokens,
        constraint=constraint_from_proto(message.constraint),
        tools=tuple(tool_from_proto(t) for t in message.tools),
        tool_choice=tool_choice,
        tool_choice_name=message.tool_choice.function_name if tool_choice == "function" else "",
        parallel_tool_calls=_optional(message, "parallel_tool_calls", True),
        thinking=_optional(message, "thinking", None),
        n=message.n or 1,
    )


def tool_call_from_proto(call: pb.ToolCall) -> ToolCall:
    return ToolCall(id=call.id, name=call.name, arguments=call.arguments_json)


def tool_call_to_proto(call: ToolCall) -> pb.ToolCall:
    return pb.ToolCall(id=call.id, name=call.name, arguments_json=call.arguments)


def messages_from_proto(messages: Iterable[pb.ChatMessage]) -> tuple[ChatMessage, ...]:
    """Chat turns, tool calls and tool results included (Generate and Tokenize)."""
    return tuple(
        ChatMessage(m.role, m.content, tool_calls=tuple(tool_call_from_proto(c) for c in m.tool_calls),
                    tool_call_id=m.tool_call_id, name=m.name)
        for m in messages
    )


def constraint_from_proto(message: pb.Constraint) -> Optional[Constraint]:
    """The oneof's member; ``json_object: false`` and an unset oneof are no constraint."""
    kind = message.WhichOneof("kind")
    if kind is None or (kind == "json_object" and not message.json_object):
        return None
    param = message.param or "response_format"
    if kind == "json_object":
        return Constraint("json_object", param=param)
    return Constraint(kind, getattr(message, kind), param=param)


def tool_from_proto(message: pb.Tool) -> Tool:
    """Empty ``parameters_json`` means an object with no declared properties (Tool's default)."""
    if message.parameters_json:
        return Tool(message.name, message.description, message.parameters_json)
    return Tool(message.name, message.description)


def _logprob_to_proto(lp: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token_id=lp.token_id,
        token=lp.token,
        logprob=lp.logprob,
        token_bytes=lp.token_bytes,
        top_logprobs=[
            pb.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob, token_bytes=t.token_bytes)
            for t in lp.top_logprobs
        ],
    )


def chunk_to_proto(chunk: GenerationChunk, model: str) -> pb.GenerateResponse:
    response = pb.GenerateResponse(
        text=chunk.text,
        token_ids=chunk.token_ids,
        finish_reason=_FINISH_REASONS[chunk.finish_reason],
        model=model,
        reasoning=chunk.reasoning,
        index=chunk.index,
    )
    if chunk.logprobs:
        response.logprobs.extend(_logprob_to_proto(lp) for lp in chunk.logprobs)
    if chunk.tool_calls:
        response.tool_calls.extend(tool_call_to_proto(call) for call in chunk.tool_calls)
    if chunk.usage is not None:
        response.usage.prompt_tokens = chunk.usage.prompt_tokens
        response.usage.completion_tokens = chunk.usage.completion_tokens
        response.usage.cached_prompt_tokens = chunk.usage.cached_prompt_tokens
    return response


def model_to_proto(model: ModelDescription) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=model.name,
        created=model.created,
        owned_by=model.owned_by,
        context_length=model.context_length,
        has_chat_template=model.has_chat_template,
        engine=model.engine,
        architecture=model.architecture,
        can_embed=model.can_embed,
        embedding_dimensions=model.embedding_dimensions if model.can_embed else 0,
    )


def status_to_proto(status: EngineStatus, in_flight: int) -> pb.GetStatusResponse:
    return pb.GetStatusResponse(
        models=[
            pb.ModelStatus(name=m.name, slots=m.slots, busy_slots=m.busy_slots, waiting=m.waiting,
                           max_waiting=m.max_waiting,
                           slot_states=[pb.SlotState(index=s.index, busy=s.busy, cached_tokens=s.cached_tokens,
                                                     idle_seconds=round(s.idle_seconds, 3))
                                        for s in m.slot_states])
            for m in status.models
        ],
        generations_started=status.generations_started,
        generations_finished=status.generations_finished,
        generations_cancelled=status.generations_cancelled,
        generations_failed=status.generations_failed,
        prompt_tokens_evaluated=status.prompt_tokens_evaluated,
        tokens_generated=status.tokens_generated,
        in_flight=in_flight,
    )
