"""The request contract, shared by the REST edge and the inference service.

Both entry points check the same bounds from this one module: the edge (``rest_edge.requests``)
before anything reaches gRPC, the engine (``inference_service.engine.validation``) for every gRPC
or in-process caller; the sampler only asserts them. Numeric ranges (:data:`RANGES`), counts,
string lengths, the chat roles (:data:`ROLES`, :data:`ROLE_ALIASES`), the ``logit_bias`` bound
and the keys of the trailing metadata of a failed RPC all live here.

Standard library only: the edge imports this module and must stay installable without the
engine's dependencies (``inference_service/__init__.py`` is import-light for that reason).

String fields that name something (a model, a role, a participant) or that the stream has to
hold text back for (stop strings) have no business being long; they are bounded in characters
(Unicode code points, ``len()`` of a Python ``str``). Prompts and message contents are bounded
by the edge's body limit and by the model's context instead; so are texts to embed, which also
have a generous bound of their own (see "embeddings" below). Every string must also be valid
Unicode text: a lone surrogate (:func:`lone_surrogate`) is refused naming the field.

Error messages never echo a client's value unbounded: :func:`quote` gives at most
``QUOTE_CHARS`` characters of it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Optional

# --- numeric ranges -------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """An interval of a number field: ``low`` (exclusive when ``low_open``) to ``high``, inclusive.

    ``value in RANGES[name]`` is the check; NaN and infinities are never in a range.
    """

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range (JSON has no size limit)
            return False
        if not math.isfinite(value):
            return False
        above_low = value > self.low if self.low_open else value >= self.low
        return above_low and value <= self.high

    def describe(self) -> str:
        """The range in words for an error message: ``">= 0 and <= 2"``, ``"> 0 and <= 10"``."""
        low = ">" if self.low_open else ">="
        return f"{low} {_number(self.low)} and <= {_number(self.high)}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# The sampling parameters that are numbers, by their field name (the same in the OpenAI JSON,
# the proto and ``SamplingParams``). Absent means OpenAI's default: temperature 1, top_p 1,
# min_p 0, repetition_penalty 1, frequency/presence penalties 0.
RANGES: dict[str, Range] = {
    "temperature": Range(0.0, 2.0),  # 0 is greedy (argmax)
    # 0 keeps only the most likely token (greedy over the top token), as OpenAI accepts it and
    # llama.cpp does (its top_p keeps at least one token).
    "top_p": Range(0.0, 1.0),
    "min_p": Range(0.0, 1.0),
    # Other servers (llama.cpp, vLLM, TGI) only require > 0; 10 bounds nonsense while keeping
    # every value either entry point accepted before the two were unified.
    "repetition_penalty": Range(0.0, 10.0, low_open=True),
    "frequency_penalty": Range(-2.0, 2.0),  # OpenAI's range
    "presence_penalty": Range(-2.0, 2.0),  # OpenAI's range
    # Locally typical sampling (llama.cpp's typical_p, Hugging Face's typical_p); 1 is off.
    "typical_p": Range(0.0, 1.0, low_open=True),
}
# ``penalty_last_n``: the window of the repetition penalty (llama.cpp's); -1 all tokens, 0 off.
PENALTY_LAST_N_RANGE = (-1, 2**31 - 1)

LOGIT_BIAS_LIMIT = 100.0  # ``logit_bias`` values: -100 to 100 (OpenAI's bound)
LOGIT_BIAS_RANGE = Range(-LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT)

# --- chat roles -------------------------------------------------------------------------------

# ``messages[].role`` over gRPC (and in the chat template); a "tool" turn holds a call's result.
ROLES = ("system", "user", "assistant", "tool")
# Other names of a supported role the REST edge accepts: OpenAI's newer name for system.
ROLE_ALIASES = {"developer": "system"}

# --- trailing metadata of a failed RPC (documented in the proto, above ChatMessage) -----------

PARAM_METADATA_KEY = "error-param"  # the request field at fault
RETRY_AFTER_METADATA_KEY = "retry-after"  # seconds to wait before retrying (RESOURCE_EXHAUSTED)

# --- string lengths, in characters ----------------------------------------------------------

MAX_MODEL_CHARS = 256  # ``model``: registry names are short ("smollm2:135m")
MAX_ROLE_CHARS = 32  # ``messages[].role``: the longest accepted role is "assistant"/"developer"
MAX_NAME_CHARS = 64  # ``messages[].name`` (the edge accepts and ignores it)
MAX_STOP_CHARS = 256  # each ``stop`` string: a stream holds back up to that much text

# --- counts -----------------------------------------------------------------------------------

MAX_STOP_STRINGS = 4  # ``stop``: a string or a list of at most this many
MAX_CHOICES = 16  # ``n``: answers to one prompt (each takes a slot of its own)
MAX_TOP_LOGPROBS = 20  # ``top_logprobs`` (chat) / ``logprobs`` (completions)

# --- embeddings (/v1/embeddings, ``Embed``) ------------------------------------------------
#
# ``input`` is one text or token array, or a list of them: at most MAX_EMBEDDING_INPUTS (OpenAI's
# own cap on the array), none of them empty (OpenAI refuses empty strings too). The model's
# context bounds each input once tokenized (a longer one is refused, never truncated); the
# bounds below only stop absurd inputs before any tokenizer runs. They are generous on purpose:
# 32768 tokens is more than the context of any embedding model we know of (the long ones,
# nomic-embed and bge-m3, stop at 8192) and than the ``--context-length`` we run with; 131072
# characters is 32768 tokens at 4 characters a token, about what English prose averages. A
# request also travels whole through the edge's body limit (1 MiB by default), which bounds the
# sum of its inputs, and gRPC's message limit (below).

MAX_EMBEDDING_INPUTS = 2048  # texts or token arrays in one request
MAX_EMBEDDING_INPUT_CHARS = 131_072  # characters of one text
MAX_EMBEDDING_INPUT_TOKENS = 32_768  # token ids of one token array
MAX_TOKEN_ID = 2**31 - 1  # token ids travel as int32; the model's vocabulary bounds them further

# --- gRPC messages ----------------------------------------------------------------------------
#
# Every size the API allows must pass between the edge and the service: the biggest message is
# the answer to the most inputs an embedding request may have, each a vector of the longest
# dimension a model we serve has (float32, 4 bytes a value, plus a few bytes of framing per
# vector). gRPC's default receive limit (4 MiB) held 2048 vectors of only 512 dimensions. The
# service's server and every channel of the edge use GRPC_MESSAGE_OPTIONS; a request whose
# answer would still not fit (a model with more dimensions) is refused before any work
# (:func:`embedding_answer_problem`). Requests are far smaller: the edge's body limit bounds
# them, and a prompt is bounded by the model's context.

MAX_EMBEDDING_DIMENSIONS = 8192  # the widest vectors served at 2048 inputs (llama-70B-sized models)
_VECTOR_FRAMING_BYTES = 16  # an Embedding's tag and lengths, generously
_MESSAGE_FRAMING_BYTES = 4096  # the rest of an EmbedResponse (prompt_tokens, model name)


def embedding_answer_bytes(inputs: int, dimensions: int) -> int:
    """An upper bound of the bytes of the EmbedResponse of ``inputs`` vectors of ``dimensions``."""
    return inputs * (4 * dimensions + _VECTOR_FRAMING_BYTES) + _MESSAGE_FRAMING_BYTES


MAX_MESSAGE_BYTES = embedding_answer_bytes(MAX_EMBEDDING_INPUTS, MAX_EMBEDDING_DIMENSIONS)  # 64.0 MiB + framing
# Channel/server options for every gRPC channel of the edge and the service's server.
GRPC_MESSAGE_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)


def embedding_answer_problem(inputs: int, dimensions: int) -> Optional[str]:
    """Why the answer to ``inputs`` vectors of ``dimensions`` cannot be sent, else None."""
    size = embedding_answer_bytes(inputs, dimensions)
    if size <= MAX_MESSAGE_BYTES:
        return None
    most = max(1, (MAX_MESSAGE_BYTES - _MESSAGE_FRAMING_BYTES) // (4 * dimensions + _VECTOR_FRAMING_BYTES))
    return (f"Invalid 'input': {inputs} vectors of {dimensions} dimensions would be a {size}-byte answer, more than "
            f"the {MAX_MESSAGE_BYTES} bytes one answer may have; send at most {most} inputs per request.")


# --- structured outputs and tool calling -----------------------------------------------------
#
# ``response_format`` becomes a constraint (a JSON schema, any JSON object, or over gRPC also a
# regex or a Lark grammar); ``tools`` are functions the model may call. Names follow OpenAI's
# rule for function names (and for ``response_format.json_schema.name``): 1 to 64 characters,
# letters, digits, underscores and dashes. Schemas and grammars are compiled for every request,
# so they are bounded well below the body limit (1 MiB): 64 Ki characters is far beyond a
# hand-written or pydantic-generated schema. Descriptions go into the prompt, which the
# context bounds anyway; their bound only stops absurd ones.

MAX_TOOLS = 128  # ``tools``: OpenAI's cap
MAX_FUNCTION_NAME_CHARS = 64  # ``tools[].function.name``, ``tool_choice``, ``json_schema.name``
FUNCTION_NAME_PATTERN = "^[a-zA-Z0-9_-]+$"  # as OpenAI's error messages write it
FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]+")  # the whole name matches (``fullmatch``)
MAX_DESCRIPTION_CHARS = 8192  # ``tools[].function.description``, ``json_schema.description``
MAX_SCHEMA_CHARS = 65_536  # a JSON schema as JSON text, a regex, a Lark grammar
MAX_TOOL_CALL_ID_CHARS = 256  # ``messages[].tool_calls[].id``, ``messages[].tool_call_id``
MAX_TOOL_ARGUMENTS_CHARS = 65_536  # ``messages[].tool_calls[].function.arguments`` (JSON text)


def function_name_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot name a function (or a schema), else None: OpenAI's rule."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_FUNCTION_NAME_CHARS:
        return f"must be at most {MAX_FUNCTION_NAME_CHARS} characters, got {len(name)}"
    if not FUNCTION_NAME.fullmatch(name):
        return f"does not match the pattern '{FUNCTION_NAME_PATTERN}' (letters, digits, '_' and '-')"
    return None


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def json_object_problem(text: str) -> Optional[str]:
    """Why ``text`` is not the JSON text of an object (tool call arguments), else None."""
    try:
        value = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError) as exc:
        reason = str(exc) or type(exc).__name__
        return f"is not valid JSON ({reason[:100]})"
    if not isinstance(value, dict):
        return "must be a JSON object"
    return None


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


def too_many_inputs_message(param: str, count: int) -> str:
    """The error message for an embedding request with more than ``MAX_EMBEDDING_INPUTS`` inputs."""
    return f"Invalid '{param}': expected at most {MAX_EMBEDDING_INPUTS} inputs, but got {count}."


def too_many_tokens_message(param: str, count: int) -> str:
    """The error message for a token array longer than ``MAX_EMBEDDING_INPUT_TOKENS``."""
    return (f"Invalid '{param}': expected at most {MAX_EMBEDDING_INPUT_TOKENS} token ids, "
            f"but got {count}.")


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes on a character boundary, + "…" if cut.

    Lone surrogates (which UTF-8 cannot carry) become backslash escapes.
    """
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= max_bytes:
        return data.decode("utf-8")
    room = max(0, max_bytes - len(ELLIPSIS.encode("utf-8")))
    return data[:room].decode("utf-8", "ignore") + ELLIPSIS
