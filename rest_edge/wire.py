"""The reference wire format: response shapes with their key order, and SSE framing.

Pure functions building plain dicts. Python dicts keep insertion order and ``json.dumps``
writes keys in that order, so each builder below *is* the key order of its shape
(see ``wire-format.md``):

* completion chunk:  id, object, created, choices[text, index, finish_reason], model,
  system_fingerprint
* chat chunk:        id, object, created, model, system_fingerprint,
  choices[index, delta{role, content}, finish_reason]
* non-stream bodies: id, object, created, model, system_fingerprint, choices, usage
* embeddings:        object "list", data[object "embedding", index, embedding], model,
  usage{prompt_tokens, total_tokens} (OpenAI's shape; not part of the reference capture)

``logprobs`` keys are only added when the client asked for log probabilities (the reference
shapes have none); they sit where OpenAI puts them, just before ``finish_reason``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

SYSTEM_FINGERPRINT = "fp_ollama"

COMPLETION_OBJECT = "text_completion"
CHAT_CHUNK_OBJECT = "chat.completion.chunk"
CHAT_OBJECT = "chat.completion"

DONE = b"data: [DONE]\n\n"

# Marks "no logprobs key at all" (as opposed to ``"logprobs": null``).
ABSENT: Any = object()


def dumps(obj: Any) -> str:
    """Compact JSON with raw UTF-8; NaN/Infinity are refused (they are not JSON)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sse(obj: Any) -> bytes:
    """One server-sent event frame: ``data: <compact json>\\n\\n``."""
    return b"data: " + dumps(obj).encode("utf-8") + b"\n\n"


def usage_object(prompt_tokens: int, completion_tokens: int, cached_tokens: Optional[int] = None) -> dict:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return usage


def error_body(message: str, type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:  # noqa: A002
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# --- /v1/completions ---------------------------------------------------------------------

def _completion_choice(text: str, finish_reason: Optional[str], logprobs: Any) -> dict:
    choice: dict[str, Any] = {"text": text, "index": 0}
    if logprobs is not ABSENT:
        choice["logprobs"] = logprobs
    choice["finish_reason"] = finish_reason
    return choice


def completion_chunk(
    id: str,  # noqa: A002
    created: int,
    model: str,
    text: str,
    finish_reason: Optional[str] = None,
    logprobs: Any = ABSENT,
) -> dict:
    return {
        "id": id,
        "object": COMPLETION_OBJECT,
        "created": created,
        "choices": [_completion_choice(text, finish_reason, logprobs)],
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def completion_usage_chunk(id: str, created: int, model: str, usage: dict) -> dict:  # noqa: A002
    """The ``stream_options.include_usage`` frame: same shape, no choices, usage last."""
    return {
        "id": id,
        "object": COMPLETION_OBJECT,
        "created": created,
        "choices": [],
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": usage,
    }


def completion_response(
    id: str,  # noqa: A002
    created: int,
    model: str,
    text: str,
    finish_reason: Optional[str],
    usage: dict,
    logprobs: Any = ABSENT,
) -> dict:
    return {
        "id": id,
        "object": COMPLETION_OBJECT,
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [_completion_choice(text, finish_reason, logprobs)],
        "usage": usage,
    }


# --- /v1/chat/completions ----------------------------------------------------------------

def _chat_chunk_choice(content: str, finish_reason: Optional[str], logprobs: Any) -> dict:
    choice: dict[str, Any] = {"index": 0, "delta": {"role": "assistant", "content": content}}
    if logprobs is not ABSENT:
        choice["logprobs"] = logprobs
    choice["finish_reason"] = finish_reason
    return choice


def chat_chunk(
    id: str,  # noqa: A002
    created: int,
    model: str,
    content: str,
    finish_reason: Optional[str] = None,
    logprobs: Any = ABSENT,
) -> dict:
    return {
        "id": id,
        "object": CHAT_CHUNK_OBJECT,
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [_chat_chunk_choice(content, finish_reason, logprobs)],
    }


def chat_usage_chunk(id: str, created: int, model: str, usage: dict) -> dict:  # noqa: A002
    return {
        "id": id,
        "object": CHAT_CHUNK_OBJECT,
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [],
        "usage": usage,
    }


def chat_response(
    id: str,  # noqa: A002
    created: int,
    model: str,
    content: str,
    finish_reason: Optional[str],
    usage: dict,
    logprobs: Any = ABSENT,
) -> dict:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content}}
    if logprobs is not ABSENT:
        choice["logprobs"] = logprobs
    choice["finish_reason"] = finish_reason
    return {
        "id": id,
        "object": CHAT_OBJECT,
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
        "usage": usage,
    }


# --- /v1/models --------------------------------------------------------------------------

def model_object(name: str, created: int, owned_by: str) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def model_list(models: list[dict]) -> dict:
    return {"object": "list", "data": list(models)}


# --- /v1/embeddings ----------------------------------------------------------------------

EMBEDDING_OBJECT = "embedding"


def embedding_object(index: int, embedding: Any) -> dict:
    """One input's vector: a list of floats, or a base64 string (``encoding_format``)."""
    return {"object": EMBEDDING_OBJECT, "index": index, "embedding": embedding}


def embedding_list(data: list[dict], model: str, prompt_tokens: int) -> dict:
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
