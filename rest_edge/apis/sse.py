"""Named server-sent events, the frames of the adapters' streams.

OpenAI's Responses and Anthropic's Messages name each event (``event: <type>`` before its
``data:`` line) and end without ``[DONE]``. Their renderings are ``streaming.StreamRendering``s,
run by ``streaming.rendered_stream`` as the chat completions stream is: the first event taken
by the resource (so that errors known before the first token get their real HTTP status), the
gRPC call cancelled when the stream ends or its response iterable closes.
"""

from __future__ import annotations

from typing import Any

from rest_edge import wire


def named_event(name: str, obj: Any) -> bytes:
    """One SSE frame: ``event: <name>\\ndata: <compact json>\\n\\n``."""
    return b"event: " + name.encode("ascii") + b"\n" + wire.sse(obj)
