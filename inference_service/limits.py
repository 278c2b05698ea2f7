"""Limits of a generation request, shared by the REST edge and the inference service.

Both entry points check the same bounds: the edge (``rest_edge.translate``) before anything
reaches gRPC, the engine (``inference_service.engine.validation``) for every gRPC or in-process
caller. Standard library only: the edge imports this module and must stay installable without
the engine's dependencies (``inference_service/__init__.py`` is import-light for that reason).

String fields that name something (a model, a role, a participant) or that the stream has to
hold text back for (stop strings) have no business being long; they are bounded in characters
(Unicode code points, ``len()`` of a Python ``str``). Prompts and message contents are bounded
by the edge's body limit and by the model's context instead. Every string must also be valid
Unicode text: a lone surrogate (:func:`lone_surrogate`) is refused naming the field.

Error messages never echo a client's value unbounded: :func:`quote` gives at most
``QUOTE_CHARS`` characters of it.
"""

from __future__ import annotations

from typing import Optional

# --- string lengths, in characters ----------------------------------------------------------

MAX_MODEL_CHARS = 256  # ``model``: registry names are short ("smollm2:135m")
MAX_ROLE_CHARS = 32  # ``messages[].role``: the longest accepted role is "assistant"/"developer"
MAX_NAME_CHARS = 64  # ``messages[].name`` (the edge accepts and ignores it)
MAX_STOP_CHARS = 256  # each ``stop`` string: a stream holds back up to that much text

# --- counts -----------------------------------------------------------------------------------

MAX_STOP_STRINGS = 4  # ``stop``: a string or a list of at most this many
MAX_TOP_LOGPROBS = 20  # ``top_logprobs`` (chat) / ``logprobs`` (completions)

# --- echoing ----------------------------------------------------------------------------------

QUOTE_CHARS = 64  # characters of a bad value quoted in an error message
MAX_DETAILS_BYTES = 1024  # UTF-8 bytes of a gRPC status message (it travels in a trailer)
MAX_PARAM_CHARS = 128  # characters of the ``error-param`` trailing metadata value

ELLIPSIS = "…"


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """A client's value for an error message: its ``repr``, cut to ``limit`` characters + "…".

    Strings are cut before ``repr`` (so the quotes stay and escapes are whole); lone
    surrogates and control characters come out escaped, never raw. Arrays and objects are
    not printed at all: they can be large or deeply nested.
    """
    if isinstance(value, str):
        return repr(value[:limit]) + (ELLIPSIS if len(value) > limit else "")
    if value is None or isinstance(value, (bool, float)):
        return repr(value)
    if isinstance(value, int):
        try:
            text = repr(value)
        except ValueError:  # more digits than Python converts to text
            return "an integer of more than 4300 digits"
        return text if len(text) <= limit else text[:limit] + ELLIPSIS
    if isinstance(value, (list, tuple)):
        return "[…]"
    if isinstance(value, dict):
        return "{…}"
    return f"<{type(value).__name__}>"


def lone_surrogate(text: str) -> Optional[int]:
    """The index of the first lone surrogate in ``text`` (not valid Unicode text), else None.

    JSON lets a client write one (``"\\ud800"``); UTF-8, protobuf and the tokenizer cannot
    carry it.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def surrogate_message(param: str, text: str, index: int) -> str:
    """The error message for a string with a lone surrogate at ``index``."""
    return (
        f"Invalid '{param}': the string contains a lone surrogate (U+{ord(text[index]):04X}) at index {index}, "
        "which is not valid Unicode text."
    )


def too_long_message(param: str, text: str, limit: int) -> str:
    """The error message for a string longer than ``limit`` characters (it is not quoted)."""
    return f"Invalid '{param}': string too long. Expected a string with maximum length {limit}, but got a string with length {len(text)} instead."


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes on a character boundary, + "…" if cut.

    Lone surrogates (which UTF-8 cannot carry) become backslash escapes.
    """
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    room = max(0, max_bytes - len(ELLIPSIS.encode("utf-8")))
    return data[:room].decode("utf-8", "ignore") + ELLIPSIS
