"""Protobuf ↔ engine types. Pure functions: the servicer only calls these and the engine."""

from __future__ import annotations

from inference_service.engine.types import (
    ChatMessage,
    EngineStatus,
    GenerationChunk,
    GenerationRequest,
    ModelDescription,
    SamplingParams,
    TokenLogprob,
)
from inference_service.v1 import inference_pb2 as pb

_FINISH_REASONS = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
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
        frequency_penalty=_optional(message, "frequency_penalty", defaults.frequency_penalty),
        presence_penalty=_optional(message, "presence_penalty", defaults.presence_penalty),
        seed=_optional(message, "seed", None),
        logit_bias=dict(message.logit_bias),
        logprobs=message.logprobs or message.top_logprobs > 0,
        top_logprobs=message.top_logprobs,
    )
    return GenerationRequest(
        model=message.model,
        prompt=message.prompt if not message.messages else (message.prompt or None),
        messages=tuple(ChatMessage(m.role, m.content) for m in message.messages),
        raw=message.raw,
        max_tokens=_optional(message, "max_tokens", None),
        stop=tuple(s for s in message.stop if s),
        sampling=sampling,
        request_id=message.request_id,
        ignore_eos=message.ignore_eos,
        min_tokens=message.min_tokens,
    )


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
    )
    if chunk.logprobs:
        response.logprobs.extend(_logprob_to_proto(lp) for lp in chunk.logprobs)
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
    )


def status_to_proto(status: EngineStatus, in_flight: int) -> pb.GetStatusResponse:
    return pb.GetStatusResponse(
        models=[
            pb.ModelStatus(name=m.name, slots=m.slots, busy_slots=m.busy_slots, waiting=m.waiting,
                           max_waiting=m.max_waiting)
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
