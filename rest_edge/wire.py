"""The reference wire format: response shapes with their key order, and SSE framing.

Pure functions building plain dicts. Python dicts keep insertion order and ``json.dumps``
writes keys in that order, so each builder below *is* the key order of its shape
(see ``wire-format.md``):

* completion chunk:  id, object, created, choices[text, index, finish_reason], model,
  system_fingerprint
* chat chunk:        id, object, created, model, system_fingerprint,
  choices[index, delta{role, content[, tool_calls]}, finish_reason]
* non-stream bodies: id, object, created, model, system_fingerprint, choices, usage
* tool calls:        a chat message's ``tool_calls`` after ``content`` (which is null when
  the answer is only calls), each ``{id, type: "function", function{name, arguments}}``; in
  a stream delta ``{id, index, type, function{name, arguments}}``, each call whole in one
  delta with ``"content":""``. The order of Ollama's ``openai`` package (its ``Message`` and
  ``ToolCall`` structs), the server the reference capture comes from.
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


def _envelope(object_: str, id: str, created: int, model: str, choices: list, usage: Any = ABSENT) -> dict:  # noqa: A002
    """The reference's outer shape of chat chunks and of every non-stream body: id, object,
    created, model, system_fingerprint, choices, then usage (when given)."""
    body = {"id": id, "object": object_, "created": created, "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices}
    if usage is not ABSENT:
        body["usage"] = usage
    return body


def _ending(choice: dict, finish_reason: Optional[str], logprobs: Any) -> dict:
    """A choice's last keys: logprobs (only when asked for), then finish_reason."""
    if logprobs is not ABSENT:
        choice["logprobs"] = logprobs
    choice["finish_reason"] = finish_reason
    return choice


# --- /v1/completions ---------------------------------------------------------------------

def _completion_choice(text: str, finish_reason: Optional[str], logprobs: Any) -> dict:
    return _ending({"text": text, "index": 0}, finish_reason, logprobs)


def _completion_stream_frame(id: str, created: int, model: str, choices: list, usage: Any = ABSENT) -> dict:  # noqa: A002
    """A completions stream chunk: its choices come before model (the reference's order)."""
    frame = {"id": id, "object": COMPLETION_OBJECT, "created": created, "choices": choices, "model": model,
             "system_fingerprint": SYSTEM_FINGERPRINT}
    if usage is not ABSENT:
        frame["usage"] = usage
    return frame


def completion_chunk(
    id: str,  # noqa: A002
    created: int,
    model: str,
    text: str,
    finish_reason: Optional[str] = None,
    logprobs: Any = ABSENT,
) -> dict:
    return _completion_stream_frame(id, created, model, [_completion_choice(text, finish_reason, logprobs)])


def completion_usage_chunk(id: str, created: int, model: str, usage: dict) -> dict:  # noqa: A002
    """The ``stream_options.include_usage`` frame: same shape, no choices, usage last."""
    return _completion_stream_frame(id, created, model, [], usage)


def completion_response(
    id: str,  # noqa: A002
    created: int,
    model: str,
    text: str,
    finish_reason: Optional[str],
    usage: dict,
    logprobs: Any = ABSENT,
) -> dict:
    return _envelope(COMPLETION_OBJECT, id, created, model, [_completion_choice(text, finish_reason, logprobs)],
                     usage)


# --- /v1/chat/completions ----------------------------------------------------------------

FUNCTION = "function"


def tool_call_object(id: str, name: str, arguments: str) -> dict:  # noqa: A002
    """A call in a chat response's ``message.tool_calls`` (``arguments`` is JSON text)."""
    return {"id": id, "type": FUNCTION, "function": {"name": name, "arguments": arguments}}


def tool_call_delta(index: int, id: str, name: str, arguments: str) -> dict:  # noqa: A002
    """A whole call in a stream delta's ``tool_calls``; ``index`` counts the calls of the answer."""
    return {"id": id, "index": index, "type": FUNCTION, "function": {"name": name, "arguments": arguments}}


def _chat_choice(key: str, content: Optional[str], finish_reason: Optional[str], logprobs: Any, tool_calls: Any,
                 reasoning: Any) -> dict:
    """A chat choice whose ``key`` ("delta" in a chunk, "message" in a body) holds the
    assistant's turn: role, content, the thinking (field name, text), then the tool calls."""
    turn: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not ABSENT:
        turn[reasoning[0]] = reasoning[1]
    if tool_calls is not ABSENT:
        turn["tool_calls"] = tool_calls
    return _ending({"index": 0, key: turn}, finish_reason, logprobs)


def chat_chunk(
    id: str,  # noqa: A002
    created: int,
    model: str,
    content: str,
    finish_reason: Optional[str] = None,
    logprobs: Any = ABSENT,
    tool_calls: Any = ABSENT,
    reasoning: Any = ABSENT,
) -> dict:
    """A chat stream chunk; ``tool_calls`` (a list of :func:`tool_call_delta`) when it carries calls,
    ``reasoning`` (field name, text) when it carries the model's thinking."""
    choice = _chat_choice("delta", content, finish_reason, logprobs, tool_calls, reasoning)
    return _envelope(CHAT_CHUNK_OBJECT, id, created, model, [choice])


def chat_usage_chunk(id: str, created: int, model: str, usage: dict) -> dict:  # noqa: A002
    return _envelope(CHAT_CHUNK_OBJECT, id, created, model, [], usage)


def chat_response(
    id: str,  # noqa: A002
    created: int,
    model: str,
    content: Optional[str],
    finish_reason: Optional[str],
    usage: dict,
    logprobs: Any = ABSENT,
    tool_calls: Any = ABSENT,
    reasoning: Any = ABSENT,
) -> dict:
    """A chat body; ``tool_calls`` (a list of :func:`tool_call_object`) when the model called
    tools, ``content`` then None unless it also wrote text; ``reasoning`` (field name, text)
    when it thought."""
    choice = _chat_choice("message", content, finish_reason, logprobs, tool_calls, reasoning)
    return _envelope(CHAT_OBJECT, id, created, model, [choice], usage)


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
