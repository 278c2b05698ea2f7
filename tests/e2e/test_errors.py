"""Errors and the model endpoints, from the real stack (edge → gRPC → engine).

Everything knowable before the first token gets its real HTTP status, also for
``stream: true`` (never HTTP 200 with an error inside the stream).
"""

from __future__ import annotations

import openai
import pytest

from tests.e2e.helpers import MODEL, assert_raw_compact_json

pytestmark = pytest.mark.model

MESSAGES = [{"role": "user", "content": "Hi"}]
ERROR_KEYS = ["message", "type", "param", "code"]


def _error(resp, status: int) -> dict:
    """The error object of an error response, after checking status, content type and shape."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"] == "application/json"
    assert b"data:" not in resp.content  # an error response, not a stream
    body = assert_raw_compact_json(resp.content)
    assert list(body) == ["error"]
    error = body["error"]
    assert list(error) == ERROR_KEYS
    assert error["message"] and "Traceback" not in error["message"]
    return error


def test_unknown_model_openai_client(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="nope:1b", messages=MESSAGES, max_tokens=4)
    assert info.value.status_code == 404
    assert info.value.type == "not_found_error"
    assert info.value.param == "model"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": "nope:1b", "messages": MESSAGES, "max_tokens": 4}),
    ("/v1/completions", {"model": "nope:1b", "prompt": "Hi", "max_tokens": 4}),
], ids=["chat", "completion"])
def test_unknown_model_is_404_before_any_stream(http, path, body, stream):
    error = _error(http.post(path, json=dict(body, stream=stream)), 404)
    assert error["type"] == "not_found_error"
    assert "nope:1b" in error["message"]


def test_bad_temperature_openai_client(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5, max_tokens=4)
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.param == "temperature"


def test_n_above_the_limit_is_rejected_by_name(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=MESSAGES, n=17, max_tokens=4)
    assert info.value.param == "n"
    assert "'n'" in info.value.message or " n " in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=MODEL, prompt="Hi", n=17, max_tokens=4)
    assert info.value.param == "n"


def test_n_answers_through_the_real_stack(oai):
    """Two answers to one prompt, whole and streamed; usage counts the prompt once."""
    answer = oai.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, max_tokens=4, temperature=0.9, seed=3)
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.message.content for c in answer.choices)
    assert answer.usage.completion_tokens == 8 or answer.usage.completion_tokens <= 8
    seen = set()
    for chunk in oai.completions.create(model=MODEL, prompt="Once upon a time", n=3, max_tokens=4, stream=True):
        seen.update(c.index for c in chunk.choices)
    assert seen == {0, 1, 2}


LONG_PROMPT = "hello " * 5000  # beyond the service's context (4096 tokens by default)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": LONG_PROMPT}]}),
    ("/v1/completions", {"model": MODEL, "prompt": LONG_PROMPT}),
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 100_000}),
], ids=["chat-prompt", "completion-prompt", "chat-max-tokens"])
def test_context_length_exceeded_is_400_before_any_stream(http, path, body, stream):
    """The reference servers differ here (Ollama truncates silently); this product answers 400
    with ``context_length_exceeded``, and for a stream that is the status, not a frame."""
    resp = http.post(path, json=dict(body, stream=stream, max_tokens=body.get("max_tokens", 16)))
    error = _error(resp, 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "context_length_exceeded"
    assert "context" in error["message"]
    assert "text/event-stream" not in resp.headers["content-type"]


def test_context_length_exceeded_openai_client(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=MODEL, prompt=LONG_PROMPT, max_tokens=16, stream=True)
    assert info.value.code == "context_length_exceeded"


@pytest.mark.parametrize("data", [b"not json", b'{"model": ', b"[1, 2]", b""],
                         ids=["text", "truncated", "array", "empty"])
def test_body_not_a_json_object_is_400(http, data):
    resp = http.post("/v1/chat/completions", content=data, headers={"content-type": "application/json"})
    error = _error(resp, 400)
    assert error["type"] == "invalid_request_error"


def test_missing_messages_names_the_field(http):
    error = _error(http.post("/v1/chat/completions", json={"model": MODEL, "stream": True}), 400)
    assert error["param"] == "messages"


def test_list_models(oai, http):
    ids = [m.id for m in oai.models.list().data]
    assert MODEL in ids
    body = http.get("/v1/models").json()
    assert list(body) == ["object", "data"] and body["object"] == "list"
    entry = next(m for m in body["data"] if m["id"] == MODEL)
    assert list(entry) == ["id", "object", "created", "owned_by"]
    assert entry["object"] == "model" and type(entry["created"]) is int and entry["owned_by"]


def test_retrieve_model(oai, http):
    model = oai.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    resp = http.get(f"/v1/models/{MODEL}")
    assert resp.status_code == 200
    assert resp.json()["id"] == MODEL


def test_retrieve_unknown_model_is_404(oai, http):
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")
    error = _error(http.get("/v1/models/nope"), 404)
    assert error["type"] == "not_found_error"


def test_health(http):
    resp = http.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_unknown_route_is_an_openai_error(http):
    error = _error(http.get("/v1/nope"), 404)
    assert error["type"] == "not_found_error"
