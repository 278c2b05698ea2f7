"""Bad input that used to get a 5xx or a misleading status (issue 7), through the app.

Each case is a 400 with the OpenAI error shape naming the field, and no request reaches the
inference client. Bodies are raw JSON text: a lone surrogate can only be written as an
escape (``"\\ud800"``), which Python's ``json.dumps`` would never produce from a ``str``.
"""

from __future__ import annotations

import json

import falcon.testing
import grpc
import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from inference_service import limits
from rest_edge import errors
from rest_edge.app import create_app
from tests.edge.fakes import FakeClient, last, piece

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
HUGE = "1" + "0" * 400  # an integer JSON allows and a float cannot hold
MAX_MESSAGE = 300  # no error message here needs more: nothing is echoed unbounded


def app_client() -> tuple[FakeClient, falcon.testing.TestClient]:
    fake = FakeClient(lambda request: [piece("Hi"), last()])
    return fake, falcon.testing.TestClient(create_app(fake))


def post_raw(path: str, text: str):
    fake, client = app_client()
    result = client.simulate_post(path, body=text.encode("utf-8"), headers={"Content-Type": "application/json"})
    return fake, result


def assert_400(result, param, code=None) -> dict:
    assert result.status_code == 400, result.text
    assert result.headers["content-type"] == "application/json"
    body = result.json
    assert list(body) == ["error"] and list(body["error"]) == ["message", "type", "param", "code"]
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert len(error["message"]) <= MAX_MESSAGE, error["message"]
    return error


def chat_text(**fields: str) -> str:
    """A chat body as JSON text; ``fields`` are raw JSON texts of the values."""
    parts = {"model": '"m"', "messages": '[{"role":"user","content":"hi"}]', **fields}
    return "{" + ",".join(f'"{k}":{v}' for k, v in parts.items()) + "}"


def comp_text(**fields: str) -> str:
    parts = {"model": '"m"', "prompt": '"hi"', **fields}
    return "{" + ",".join(f'"{k}":{v}' for k, v in parts.items()) + "}"


# --- lone surrogates ---------------------------------------------------------------------------

SURROGATES = [
    ("completion prompt", COMP, comp_text(prompt='"a\\ud800b"'), "prompt"),
    ("completion prompt in a list", COMP, comp_text(prompt='["\\udfff"]'), "prompt[0]"),
    ("completion model", COMP, comp_text(model='"m\\udc00"'), "model"),
    ("completion stop string", COMP, comp_text(stop='"\\ud800"'), "stop"),
    ("completion stop list", COMP, comp_text(stop='["ok","x\\udbff"]'), "stop[1]"),
    ("chat content", CHAT, chat_text(messages='[{"role":"user","content":"\\ud800"}]'), "messages[0].content"),
    ("chat text part", CHAT,
     chat_text(messages='[{"role":"user","content":"hi"},{"role":"user","content":[{"type":"text","text":"a"},'
                        '{"type":"text","text":"\\ude00"}]}]'),
     "messages[1].content[1].text"),
    ("chat role", CHAT, chat_text(messages='[{"role":"us\\ud800er","content":"hi"}]'), "messages[0].role"),
    ("chat name", CHAT, chat_text(messages='[{"role":"user","name":"\\ud800","content":"hi"}]'), "messages[0].name"),
    ("chat model", CHAT, chat_text(model='"\\ud800"'), "model"),
    ("chat stop list", CHAT, chat_text(stop='["\\ud800"]'), "stop[0]"),
]


@pytest.mark.parametrize("path, text, param", [c[1:] for c in SURROGATES], ids=[c[0] for c in SURROGATES])
def test_lone_surrogate_is_400_naming_its_path(path, text, param):
    fake, result = post_raw(path, text)
    error = assert_400(result, param, "invalid_value")
    assert "lone surrogate" in error["message"] and param in error["message"]
    assert fake.requests == []


def test_a_surrogate_pair_is_one_character_and_fine():
    fake, result = post_raw(COMP, comp_text(prompt='"\\ud83d\\ude00"'))
    assert result.status_code == 200, result.text
    assert fake.requests[0].prompt == "😀"


# --- integers too large for a float ---------------------------------------------------------------

HUGE_FIELDS = [
    (CHAT, "temperature"), (CHAT, "top_p"), (CHAT, "min_p"), (CHAT, "frequency_penalty"),
    (CHAT, "presence_penalty"), (CHAT, "repetition_penalty"), (CHAT, "max_tokens"),
    (CHAT, "max_completion_tokens"), (CHAT, "top_k"), (CHAT, "seed"), (CHAT, "n"),
    (COMP, "temperature"), (COMP, "max_tokens"), (COMP, "logprobs"), (COMP, "best_of"), (COMP, "seed"),
]


@pytest.mark.parametrize("sign", ["", "-"])
@pytest.mark.parametrize("path, field", HUGE_FIELDS, ids=[f"{'chat' if p == CHAT else 'completion'}-{f}" for p, f in HUGE_FIELDS])
def test_integer_too_large_for_a_float_is_400(path, field, sign):
    text = (chat_text if path == CHAT else comp_text)(**{field: sign + HUGE})
    fake, result = post_raw(path, text)
    error = assert_400(result, field)
    assert HUGE not in error["message"]  # quoted by a prefix only
    assert fake.requests == []


def test_huge_top_logprobs_and_logit_bias_value():
    _, result = post_raw(CHAT, chat_text(logprobs="true", top_logprobs=HUGE))
    assert_400(result, "top_logprobs")
    _, result = post_raw(CHAT, chat_text(logit_bias='{"5":' + HUGE + "}"))
    error = assert_400(result, "logit_bias")
    assert HUGE not in error["message"]
    _, result = post_raw(CHAT, chat_text(logit_bias='{"' + HUGE + '":1}'))
    error = assert_400(result, "logit_bias")
    assert HUGE not in error["message"]


def test_float_overflow_in_json_is_400():
    _, result = post_raw(CHAT, chat_text(temperature="1e400"))
    assert_400(result, "temperature")


# --- strings that have no business being long -------------------------------------------------

LONG = [
    ("model", COMP, comp_text(model=json.dumps("m" * (limits.MAX_MODEL_CHARS + 1))), "model"),
    ("model 9000", CHAT, chat_text(model=json.dumps("m" * 9000)), "model"),
    ("role", CHAT, chat_text(messages=json.dumps([{"role": "r" * 9000, "content": "hi"}])), "messages[0].role"),
    ("role just over", CHAT,
     chat_text(messages=json.dumps([{"role": "user", "content": "hi"},
                                    {"role": "u" * (limits.MAX_ROLE_CHARS + 1), "content": "hi"}])),
     "messages[1].role"),
    ("name", CHAT, chat_text(messages=json.dumps([{"role": "user", "name": "n" * 65, "content": "hi"}])),
     "messages[0].name"),
    ("stop string", COMP, comp_text(stop=json.dumps("s" * (limits.MAX_STOP_CHARS + 1))), "stop"),
    ("stop entry", CHAT, chat_text(stop=json.dumps(["a", "s" * 9000])), "stop[1]"),
]


@pytest.mark.parametrize("path, text, param", [c[1:] for c in LONG], ids=[c[0] for c in LONG])
def test_long_string_is_400_without_echoing_it(path, text, param):
    fake, result = post_raw(path, text)
    error = assert_400(result, param, "string_above_max_length")
    assert "maximum length" in error["message"]
    assert fake.requests == []


def test_strings_at_their_limits_pass():
    body = {
        "model": "m" * limits.MAX_MODEL_CHARS,
        "messages": [{"role": "user", "name": "n" * limits.MAX_NAME_CHARS, "content": "hi"}],
        "stop": ["s" * limits.MAX_STOP_CHARS],
    }
    fake, result = post_raw(CHAT, json.dumps(body))
    assert result.status_code == 200, result.text
    assert fake.requests[0].model == body["model"]
    assert list(fake.requests[0].stop) == body["stop"]


def test_name_must_be_a_string():
    _, result = post_raw(CHAT, chat_text(messages='[{"role":"user","name":5,"content":"hi"}]'))
    assert_400(result, "messages[0].name", "invalid_type")


# --- bad values are quoted by a short prefix only ----------------------------------------------

QUOTED = [  # (name, path, body, param, the character repeated in the bad value)
    ("unsupported role", CHAT, chat_text(messages=json.dumps([{"role": "x" * 31, "content": "x"}])),
     "messages[0].role", "x"),
    ("content part type", CHAT,
     chat_text(messages=json.dumps([{"role": "user", "content": [{"type": "t" * 9000, "text": "x"}]}])),
     "messages[0].content", "t"),
    ("response_format type", CHAT, chat_text(response_format=json.dumps({"type": "j" * 9000})),
     "response_format.type", "j"),
    ("logit_bias key", CHAT, chat_text(logit_bias=json.dumps({"k" * 9000: 1})), "logit_bias", "k"),
    ("n", CHAT, chat_text(n="9" * 300), "n", "9"),
    ("seed", CHAT, chat_text(seed="9" * 300), "seed", "9"),
]


@pytest.mark.parametrize("path, text, param, char", [c[1:] for c in QUOTED], ids=[c[0] for c in QUOTED])
def test_bad_values_are_quoted_by_a_short_prefix(path, text, param, char):
    _, result = post_raw(path, text)
    error = assert_400(result, param)
    assert char * min(20, limits.QUOTE_CHARS) in error["message"]  # quoted...
    assert char * (limits.QUOTE_CHARS + 1) not in error["message"]  # ...by a prefix only


def test_unsupported_role_message_quotes_the_role():
    _, result = post_raw(CHAT, chat_text(messages='[{"role":"function","content":"x"}]'))
    error = assert_400(result, "messages[0].role", "unsupported_parameter")
    assert error["message"] == (
        "Unsupported value for 'messages[0].role': 'function'; supported roles are system, user, assistant and tool."
    )


def test_unknown_url_is_quoted_by_a_prefix():
    _, client = app_client()
    result = client.simulate_get("/" + "p" * 3000)
    assert result.status_code == 404
    message = result.json["error"]["message"]
    assert len(message) < 200 and message.endswith("…."), message


# --- unreadable bodies ---------------------------------------------------------------------------

def _gunicorn_body(raw: bytes):
    """The request body reader gunicorn hands the app (``wsgi.input``), over these raw bytes."""
    request = next(RequestParser(Config(), iter([raw]), ("127.0.0.1", 1)))
    return request.body


HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("body", [
    b"zz\r\nabc\r\n0\r\n\r\n",  # chunk size not hex
    b"3\r\nabcXY0\r\n\r\n",  # chunk not followed by CRLF
    b"3;\x01\r\nabc\r\n0\r\n\r\n",  # bad chunk extension
    b"5\r\nab",  # the client went away mid-chunk
], ids=["size zz", "missing terminator", "bad extension", "truncated"])
def test_malformed_chunked_body_is_400(body):
    fake, client = app_client()
    reader = _gunicorn_body(HEAD + body)
    result = client.simulate_post(COMP, headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                                  extras={"wsgi.input": reader, "wsgi.input_terminated": True})
    assert result.status_code == 400, result.text
    assert result.json["error"]["type"] == "invalid_request_error"
    assert "could not be read" in result.json["error"]["message"]
    assert reader.failed  # gunicorn will close this connection rather than reuse it
    assert fake.requests == []


def test_body_shorter_than_its_content_length_is_400():
    # The client ended its side after a complete JSON object, 20 bytes short of its Content-Length.
    fake, client = app_client()
    payload = b'{"model":"m","prompt":"hi"}'
    length = str(len(payload) + 20).encode()
    raw = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n" + payload
    result = client.simulate_post(COMP, headers={"Content-Type": "application/json", "Content-Length": length.decode()},
                                  extras={"wsgi.input": _gunicorn_body(raw)})
    assert result.status_code == 400, result.text
    assert "incomplete" in result.json["error"]["message"]
    assert fake.requests == []


def test_well_formed_chunked_body_is_read():
    fake, client = app_client()
    payload = b'{"model":"m","prompt":"hi"}'
    raw = HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    result = client.simulate_post(COMP, headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                                  extras={"wsgi.input": _gunicorn_body(raw), "wsgi.input_terminated": True})
    assert result.status_code == 200, result.text
    assert fake.requests[0].prompt == "hi"


# --- errors from the service are bounded too ------------------------------------------------------

def test_long_grpc_details_are_clipped():
    err = errors.from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "d" * 100_000, (("error-param", "model"),))
    assert len(err.message.encode()) <= limits.MAX_DETAILS_BYTES
    assert err.message.endswith("…")


def test_error_body_with_a_lone_surrogate_still_encodes():
    body = errors.error_json(errors.invalid("bad \ud800 value"))
    assert json.loads(body)["error"]["message"] == "bad \ud800 value"


# --- inference_service.limits ------------------------------------------------------------------------

def test_quote_cuts_strings_and_numbers_and_never_prints_containers():
    assert limits.quote("tool") == "'tool'"
    assert limits.quote("x" * 100) == "'" + "x" * limits.QUOTE_CHARS + "'…"
    assert limits.quote("a\ud800") == "'a\\ud800'"  # escaped, never raw
    assert limits.quote(10**400) == "1" + "0" * (limits.QUOTE_CHARS - 1) + "…"
    assert limits.quote(2.5) == "2.5" and limits.quote(None) == "None" and limits.quote(True) == "True"
    assert limits.quote([1] * 10_000) == "[…]" and limits.quote({"a": 1}) == "{…}"


def test_lone_surrogate_finds_the_first_one():
    assert limits.lone_surrogate("plain") is None
    assert limits.lone_surrogate("你好😀\x00\ue000") is None
    assert limits.lone_surrogate("ab\udfffc\ud800") == 2


def test_clip_utf8_cuts_on_a_character_boundary():
    assert limits.clip_utf8("short", 100) == "short"
    clipped = limits.clip_utf8("你" * 1000, 100)
    assert len(clipped.encode()) <= 100 and clipped.endswith("…") and set(clipped[:-1]) == {"你"}
    assert limits.clip_utf8("a\ud800", 100) == "a\\ud800"
