"""Checks a generation request's fields; each failure names the field.

The contract shared with the REST edge (ranges, counts, lengths, roles) lives in
:mod:`inference_service.limits`; this module applies it to a ``GenerationRequest``. Messages quote
at most a short prefix of a client's value (they travel in gRPC status details).
"""

from __future__ import annotations

from typing import Iterable, Optional

from inference_service import limits
from inference_service.engine.types import GenerationRequest
from inference_service.errors import InvalidRequest, ModelNotFound
from inference_service.limits import LOGIT_BIAS_RANGE, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS, RANGES, ROLES, quote


def _check_text(text: str, param: str, name: str, max_chars: Optional[int] = None) -> None:
    """A string field: at most ``max_chars`` characters, and valid Unicode (no lone surrogate)."""
    if max_chars is not None and len(text) > max_chars:
        raise InvalidRequest(f"{name} must be at most {max_chars} characters, got {len(text)}", param)
    index = limits.lone_surrogate(text)
    if index is not None:
        raise InvalidRequest(
            f"{name} contains a lone surrogate (U+{ord(text[index]):04X}) at index {index}; it is not valid Unicode text",
            param,
        )


def check_model_name(name: str) -> None:
    """A model name a client sent: bounded, valid Unicode (before it is looked up or quoted)."""
    _check_text(name, "model", "model", limits.MAX_MODEL_CHARS)


def unknown_model(name: str, served: Iterable[str]) -> Exception:
    """The error for a model name that is not served: a bad name, else ModelNotFound.

    The name is quoted by a short prefix only: the message becomes the gRPC status details.
    """
    try:
        check_model_name(name)
    except InvalidRequest as error:
        return error
    return ModelNotFound(f"model {quote(name)} not found; served: {', '.join(served) or 'none'}")


def validate_request(request: GenerationRequest, vocab_size: int) -> None:
    check_model_name(request.model)
    if request.prompt is not None and request.messages:
        raise InvalidRequest("set either prompt or messages, not both", "prompt")
    if request.prompt is None and not request.messages:
        raise InvalidRequest("one of prompt or messages is required", "messages")
    if not 1 <= request.n <= limits.MAX_CHOICES:
        raise InvalidRequest(f"n must be between 1 and {limits.MAX_CHOICES}, got {request.n}", "n")
    if request.max_tokens is not None and request.max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, got {request.max_tokens}", "max_tokens")
    if request.prompt is not None:
        _check_text(request.prompt, "prompt", "prompt")
    for i, message in enumerate(request.messages):
        _check_text(message.role, f"messages[{i}].role", f"messages[{i}].role", limits.MAX_ROLE_CHARS)
        if message.role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, not {quote(message.role)}",
                f"messages[{i}].role",
            )
        _check_text(message.content, f"messages[{i}].content", f"messages[{i}].content")
    if len(request.stop) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(request.stop)}", "stop")
    for k, stop in enumerate(request.stop):
        _check_text(stop, "stop", f"stop[{k}]", limits.MAX_STOP_CHARS)
    sampling = request.sampling
    for name, bounds in RANGES.items():
        value = getattr(sampling, name)
        if value not in bounds:
            raise InvalidRequest(f"{name} must be {bounds.describe()}, got {value}", name)
    low, high = limits.PENALTY_LAST_N_RANGE
    if not low <= sampling.penalty_last_n <= high:
        raise InvalidRequest(f"penalty_last_n must be >= -1, got {sampling.penalty_last_n}", "penalty_last_n")
    if sampling.top_k < 0:
        raise InvalidRequest(f"top_k must be >= 0, got {sampling.top_k}", "top_k")
    if not 0 <= sampling.top_logprobs <= MAX_TOP_LOGPROBS:
        raise InvalidRequest(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {sampling.top_logprobs}", "top_logprobs"
        )
    for token_id, bias in sampling.logit_bias.items():
        if not 0 <= token_id < vocab_size:
            raise InvalidRequest(f"logit_bias names token {token_id}, outside the vocabulary (0..{vocab_size - 1})", "logit_bias")
        if bias not in LOGIT_BIAS_RANGE:
            raise InvalidRequest(f"logit_bias values must be {LOGIT_BIAS_RANGE.describe()}, got {bias}", "logit_bias")
