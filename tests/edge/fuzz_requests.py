"""Hypothesis strategies for generation requests, and the property every answer must have.

Used by tests/edge/test_fuzz.py (the app in process, fake client) and tests/e2e/test_fuzz.py
(real gunicorn over the real service). A drawn request is ``(path, body_bytes)``: the body is
JSON *text* written by :func:`dump`, so it can hold what Python's ``json.dumps`` never writes —
lone surrogates as ``\\ud800`` escapes, integers too large for a float, ``1e400`` — and, now and
then, bytes that are not JSON or not UTF-8 at all.

Every field of both routes is drawn: usually a plausible value, sometimes a value of the wrong
type or shape (nested arrays and objects, huge numbers, long or odd strings). With
``real_model=True`` (the end-to-end run) texts sent to the model stay short and ``max_tokens``
is always 1–3 or invalid, never absent, so real generations stay short.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from inference_service import limits
from tests.edge.fakes import call, calls, last, piece

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MODEL = "smollm2:135m"

# An error message quoting a bad value quotes a short prefix; none needs more than this.
MAX_ERROR_MESSAGE = 1024


@dataclass(frozen=True)
class Raw:
    """A JSON value written verbatim (a number literal Python would not write)."""

    text: str


# --- strings -------------------------------------------------------------------------------------

SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d"]  # lone (JSON can write them, UTF-8 cannot)
ODD_CHARS = [
    "\x00", "\x01", "\x1f", "\x7f", "\x85",  # NUL and controls
    "\ue000", "\uf8ff", "\U000f0000", "\U0010fffd",  # private use
    "\u202e", "\u200f", "\u061c", "\u2066",  # right-to-left marks and overrides
    "\u200b", "\u200d", "\ufeff", "\ufffd", "\uffff", "\u0301",  # zero width, BOM, combining
    "😀", "👩\u200d👩\u200d👧", "🇫🇷", "你", "好", "é", "\n", "\r", "\t", '"', "\\", "/",
]
SNIPPETS = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "</s>", "{{", "}}", "{%", "\\u0000", "null", "%s"]

def fuzz_settings(examples: int, *extra_health_checks: HealthCheck) -> settings:
    """Reproducible runs (same examples every time, no example database) without time limits."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                               HealthCheck.filter_too_much, *extra_health_checks],
    )


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each drawn about ``weight`` times in ``sum(weights)``.

    (``st.one_of`` merges repeated strategies, so repeating one does not weight it.)
    """
    total = sum(w for w, _ in choices)

    @st.composite
    def pick(draw):
        n = draw(st.integers(0, total - 1))
        for weight, strategy in choices:
            if n < weight:
                return draw(strategy)
            n -= weight
        raise AssertionError("unreachable")

    return pick()


chars = st.one_of(st.characters(), st.sampled_from(ODD_CHARS))
pieces = weighted((9, chars), (1, st.sampled_from(SNIPPETS)))


@st.composite
def _with_surrogate(draw, text: st.SearchStrategy[str]) -> str:
    value = draw(text)
    at = draw(st.integers(0, len(value)))
    return value[:at] + draw(st.sampled_from(SURROGATES)) + value[at:]


def texts(max_size: int = 40) -> st.SearchStrategy[str]:
    """Text of odd characters and snippets; one in ten has a lone surrogate somewhere."""
    clean = st.lists(pieces, max_size=max_size).map("".join)
    return weighted((9, clean), (1, _with_surrogate(clean)))


def long_texts(max_repeat: int = 12_000) -> st.SearchStrategy[str]:
    """A long string: one piece repeated (cheap to draw), the odd surrogate included."""
    return st.builds(lambda piece, n: piece * n,
                     st.sampled_from(["a", "é", "你", "😀", "\ud800", "<|im_end|>", " ", "\x00", "\u202e"]),
                     st.integers(100, max_repeat))


# --- numbers -------------------------------------------------------------------------------------

HUGE_LITERALS = [
    "1" + "0" * 400, "-1" + "0" * 400, "9" * 4000, "1e400", "-1e400", "1e-400", "1E+2", "-0", "0.0",
    "123456789012345678901234567890", "1.5e308", "4294967296", "4294967295", "2147483648",
    "9223372036854775808", "-9223372036854775809", "18446744073709551616", "0.1e1", "2.0", "1.0000000000000002",
]

numbers = st.one_of(
    st.integers(-3, 3),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(-3, 3),
    st.sampled_from(HUGE_LITERALS).map(Raw),
)

scalars = st.one_of(st.none(), st.booleans(), numbers, texts(12))
junk = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts(6), children, max_size=4)),
    max_leaves=12,
)


def deep_nesting() -> st.SearchStrategy[Raw]:
    """Arrays nested deeper than Python's recursion limit, as raw JSON text."""
    return st.integers(500, 5000).map(lambda n: Raw("[" * n + "]" * n))


def maybe_junk(plausible: st.SearchStrategy, plausible_weight: int = 5) -> st.SearchStrategy:
    """Usually a plausible value (valid or not), now and then anything at all."""
    return weighted((plausible_weight, plausible), (1, junk))


# --- fields --------------------------------------------------------------------------------------

def _max_tokens(real_model: bool) -> st.SearchStrategy:
    if not real_model:
        return maybe_junk(st.one_of(st.integers(-2, 10), st.none(), st.just(2**32)))
    # Never absent and never a valid large value: a real generation must stay short.
    invalid = st.one_of(st.integers(max_value=0), st.sampled_from(HUGE_LITERALS[:3]).map(Raw), texts(5),
                        st.lists(st.integers(1, 3), max_size=2), st.booleans(), st.floats(1.1, 1.9))
    return weighted((4, st.integers(1, 3)), (1, invalid))


def _around(bounds: limits.Range) -> st.SearchStrategy:
    """The bounds of a shared range (limits.RANGES) and values just outside them."""
    return st.sampled_from([bounds.low, bounds.high, bounds.low - 0.01, bounds.high + 0.01])


def fields(real_model: bool) -> dict[str, st.SearchStrategy]:
    """Strategies of the fields both routes share."""
    text = texts(30 if real_model else 60)
    small_float = st.one_of(st.floats(-0.5, 2.5), st.integers(-1, 3))
    stop_entry = st.one_of(text, long_texts(600), junk)
    return {
        "model": weighted((12, st.just(MODEL)), (1, texts(20)), (1, long_texts()), (1, junk)),
        "stream": maybe_junk(st.booleans()),
        "stream_options": maybe_junk(st.fixed_dictionaries({}, optional={"include_usage": maybe_junk(st.booleans())})),
        "max_tokens": _max_tokens(real_model),
        **{name: maybe_junk(st.one_of(small_float, _around(bounds))) for name, bounds in limits.RANGES.items()},
        "top_k": maybe_junk(st.integers(-2, 100)),
        "seed": maybe_junk(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers())),
        "stop": maybe_junk(st.one_of(text, stop_entry, st.lists(stop_entry, max_size=6))),
        "logit_bias": maybe_junk(st.dictionaries(
            st.one_of(st.integers(-5, 60_000).map(str), texts(8), long_texts(300)),
            maybe_junk(st.one_of(st.integers(-150, 150), st.floats(-150, 150))), max_size=4)),
        "n": maybe_junk(st.integers(-1, 3)),
        "user": junk,
        "tools": maybe_junk(st.just([])),
        "tool_choice": maybe_junk(st.sampled_from(["none", "auto", "required"])),
        "functions": junk,
        "function_call": maybe_junk(st.sampled_from(["none", "auto"])),
        "response_format": maybe_junk(st.fixed_dictionaries({"type": maybe_junk(
            st.sampled_from(["text", "json_object", "json_schema"]))})),
        "suffix": maybe_junk(st.one_of(st.just(""), text)),
        "echo": maybe_junk(st.booleans()),
        "best_of": maybe_junk(st.integers(-1, 3)),
    }


def _content_part(real_model: bool) -> st.SearchStrategy:
    return maybe_junk(st.fixed_dictionaries(
        {"type": weighted((8, st.just("text")), (1, st.sampled_from(["image_url", "input_audio", ""])), (1, junk))},
        optional={"text": maybe_junk(texts(20 if real_model else 60)), "image_url": junk},
    ))


def _message(real_model: bool) -> st.SearchStrategy:
    role = weighted((12, st.sampled_from([*limits.ROLES, *limits.ROLE_ALIASES])),
                    (1, st.sampled_from(["tool", "function", "", "USER", "user "])), (1, texts(40)),
                    (1, long_texts()), (1, junk))
    content = weighted((6, texts(30 if real_model else 200)), (2, st.lists(_content_part(real_model), max_size=4)),
                       (1, st.none()), (1, junk), (0 if real_model else 1, long_texts()))
    return maybe_junk(plausible_weight=12, plausible=st.fixed_dictionaries(
        {"role": role, "content": content},
        optional={"name": weighted((4, texts(10)), (1, long_texts(200)), (1, junk)),
                  "tool_calls": st.one_of(st.just([]), junk), "function_call": st.one_of(st.none(), junk)},
    ))


@functools.cache
def chat_fields(real_model: bool) -> dict[str, st.SearchStrategy]:
    out = fields(real_model)
    messages = weighted((20, st.lists(_message(real_model), min_size=1, max_size=4 if real_model else 8)),
                        (1, st.just([])))
    out["messages"] = weighted((24, messages), (1, junk), (1, deep_nesting()))
    out["max_completion_tokens"] = st.one_of(st.none(), _max_tokens(real_model))
    out["logprobs"] = maybe_junk(st.booleans())
    out["top_logprobs"] = maybe_junk(st.integers(-1, 25))
    return out


@functools.cache
def completion_fields(real_model: bool) -> dict[str, st.SearchStrategy]:
    out = fields(real_model)
    text = texts(40 if real_model else 300)
    prompt = weighted((12, text), (1, st.lists(text, max_size=2)), (1, st.lists(st.integers(0, 50_000), max_size=3)),
                      (0 if real_model else 1, long_texts()))
    out["prompt"] = maybe_junk(prompt, 12)
    out["raw"] = maybe_junk(st.booleans())
    out["logprobs"] = maybe_junk(st.integers(-1, 25))
    return out


REQUIRED = {CHAT: ("model", "messages"), COMP: ("model", "prompt")}


@st.composite
def bodies(draw, path: str, real_model: bool = False) -> dict:
    """A request body (a dict that :func:`dump` writes): required fields usually, others sometimes."""
    strategies = chat_fields(real_model) if path == CHAT else completion_fields(real_model)
    body: dict = {}
    for name in REQUIRED[path]:
        if draw(st.integers(0, 39)) != 17:  # now and then a required field is left out
            body[name] = draw(strategies[name])
    optional = [n for n in strategies if n not in REQUIRED[path]]
    for name in draw(st.lists(st.sampled_from(optional), unique=True, max_size=6)):
        body[name] = draw(strategies[name])
    if real_model:
        body["max_tokens"] = draw(strategies["max_tokens"])
    for key, value in draw(st.dictionaries(texts(10), junk, max_size=2)).items():
        body.setdefault(key, value)  # unknown fields are ignored
    return body


# --- JSON text -------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def _string(text: str, ensure_ascii: bool) -> str:
    out = json.dumps(text, ensure_ascii=ensure_ascii)
    # ensure_ascii=False leaves lone surrogates raw (not encodable): write them as escapes.
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)


def dump(value: Any, ensure_ascii: bool = False) -> str:
    """JSON text of ``value``; :class:`Raw` values are written verbatim."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, str):
        return _string(value, ensure_ascii)
    if isinstance(value, dict):
        return "{" + ",".join(f"{_string(str(k), ensure_ascii)}:{dump(v, ensure_ascii)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dump(v, ensure_ascii) for v in value) + "]"
    return json.dumps(value)


@st.composite
def requests(draw, real_model: bool = False) -> tuple[str, bytes]:
    """``(path, body bytes)`` for either route; now and then the bytes are broken."""
    path = draw(st.sampled_from([CHAT, COMP]))
    body = draw(bodies(path, real_model))
    data = dump(body, ensure_ascii=draw(st.booleans())).encode("utf-8")
    # Now and then (never the simplest draw, which hypothesis favours) the bytes are broken.
    damage = draw(st.integers(0, 39))
    if damage == 17:  # cut short
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == 18:  # bytes that are not UTF-8 (a CESU surrogate, an overlong NUL, 0xff)
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xed\xa0\x80", b"\xc0\x80", b"\xff", b"\x80"])) + data[at:]
    elif damage == 19:  # not JSON or not an object
        data = draw(st.sampled_from([b"", b" ", b"[]", b"null", b"1", b'"x"', b"{", b"\x00", b'{"a":NaN}',
                                     b'{"temperature":Infinity}', b'{"model":-Infinity}']))
    return path, data


@st.composite
def encoded(draw, body: Any) -> bytes:
    """``body`` as a client sends it (raw UTF-8 or ASCII escapes); now and then cut short."""
    data = dump(body, ensure_ascii=draw(st.booleans())).encode("utf-8")
    if draw(st.integers(0, 29)) == 7:
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    return data


def fake_script(request) -> list:
    """The fake service's answer to a request the edge let through: text, or a call of its first
    tool. The request must serialize, as the real gRPC client's first step does."""
    request.SerializeToString()
    if request.tools:
        return [piece("Hi"), calls(call(request.tools[0].name, '{"city":"Oslo"}')), last("")]
    return [piece("Hel"), piece("lo"), last("!")]


# --- the property ----------------------------------------------------------------------------------

def error_of(status: int, content_type: str, body: bytes) -> Optional[Any]:
    """Asserts a 2xx or a 4xx, never a 5xx; a 4xx's JSON body is returned, a 2xx gives None."""
    assert status < 500, (status, body[:500])
    assert 200 <= status < 300 or 400 <= status < 500, status
    if status < 400:
        return None
    assert content_type.startswith("application/json"), content_type
    return json.loads(body)


def check_error_message(message: Any) -> None:
    """An error's message: some text, bounded, no traceback."""
    assert isinstance(message, str) and message and len(message) <= MAX_ERROR_MESSAGE, message
    assert "Traceback" not in message


def check_answer(status: int, content_type: Optional[str], body: bytes, completion: bool = True) -> None:
    """A 2xx (with a completion if ``completion``), or a 4xx with the OpenAI error shape; never a 5xx."""
    assert status < 500, (status, body[:500])
    assert 200 <= status < 300 or 400 <= status < 500, status
    if status >= 400:
        assert content_type is not None and content_type.startswith("application/json"), content_type
        error = json.loads(body.decode("utf-8"))
        assert list(error) == ["error"], error
        error = error["error"]
        assert list(error) == ["message", "type", "param", "code"], error
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and error["type"]
        assert error["param"] is None or isinstance(error["param"], str)
        assert error["code"] is None or isinstance(error["code"], str)
        assert len(error["message"]) <= MAX_ERROR_MESSAGE, error["message"][:200]
        assert "Traceback" not in error["message"]
        return
    if content_type is not None and content_type.startswith("text/event-stream"):
        text = body.decode("utf-8")
        assert text.endswith("data: [DONE]\n\n"), text[-200:]
        for frame in text.split("\n\n")[:-2]:
            assert frame.startswith("data: ")
            json.loads(frame[len("data: "):])
    else:
        answer = json.loads(body.decode("utf-8"))
        if completion:
            assert answer["choices"], answer
