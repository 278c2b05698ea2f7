"""Checks a generation request's fields; each failure names the field."""

from __future__ import annotations

import math

from inference_service.engine.types import GenerationRequest
from inference_service.errors import InvalidRequest

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20

# field: (low, high, low inclusive)
_RANGES = {
    "temperature": (0.0, 2.0, True),
    "top_p": (0.0, 1.0, False),
    "min_p": (0.0, 1.0, True),
    "repetition_penalty": (0.0, 10.0, False),
    "frequency_penalty": (-2.0, 2.0, True),
    "presence_penalty": (-2.0, 2.0, True),
}


def validate_request(request: GenerationRequest, vocab_size: int) -> None:
    if request.prompt is not None and request.messages:
        raise InvalidRequest("set either prompt or messages, not both", "prompt")
    if request.prompt is None and not request.messages:
        raise InvalidRequest("one of prompt or messages is required", "messages")
    if request.max_tokens is not None and request.max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, got {request.max_tokens}", "max_tokens")
    if len(request.stop) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(request.stop)}", "stop")
    sampling = request.sampling
    for name, (low, high, low_inclusive) in _RANGES.items():
        value = getattr(sampling, name)
        ok = math.isfinite(value) and (low <= value if low_inclusive else low < value) and value <= high
        if not ok:
            bracket = "[" if low_inclusive else "("
            raise InvalidRequest(f"{name} must be in {bracket}{low}, {high}], got {value}", name)
    if sampling.top_k < 0:
        raise InvalidRequest(f"top_k must be >= 0, got {sampling.top_k}", "top_k")
    if not 0 <= sampling.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {sampling.top_logprobs}", "top_logprobs"
        )
    for token_id, bias in sampling.logit_bias.items():
        if not 0 <= token_id < vocab_size:
            raise InvalidRequest(f"logit_bias names token {token_id}, outside the vocabulary (0..{vocab_size - 1})", "logit_bias")
        if not (math.isfinite(bias) and -100 <= bias <= 100):
            raise InvalidRequest(f"logit_bias values must be between -100 and 100, got {bias}", "logit_bias")
