"""The four reference requests of wire-format.md, sent raw to the real stack, checked byte by
byte against the reference's framing, key order and encoding.

The requests are the reference's with ``"model": "smollm2:135m"`` and a ``max_tokens`` cap
(see ``helpers.REF_MAX_TOKENS``). Sampling is at temperature 0.7, so the text differs from run
to run: only shapes, framing, encoding and counts are checked here.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.helpers import (
    DONE,
    MODEL,
    REF_CHAT_CHUNK,
    REF_CHAT_LAST_CHUNK,
    REF_CHAT_REQUEST,
    REF_CHAT_RESPONSE,
    REF_CHAT_STREAM_REQUEST,
    REF_COMPLETION_CHUNK,
    REF_COMPLETION_LAST_CHUNK,
    REF_COMPLETION_REQUEST,
    REF_COMPLETION_RESPONSE,
    REF_COMPLETION_STREAM_REQUEST,
    assert_raw_compact_json,
    compact,
    key_tree,
    ordered,
    split_frames,
)

pytestmark = pytest.mark.model

USAGE_KEYS = ["prompt_tokens", "completion_tokens", "total_tokens"]
# Added by this product after the reference's three keys (OpenAI's name for cache hits).
USAGE_EXTRA_KEYS = ["prompt_tokens_details"]


def _check_sse_headers(headers) -> None:
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"


def _check_created(chunks: list[dict], before: float, after: float) -> None:
    created = [c["created"] for c in chunks]
    assert all(type(c) is int for c in created), created
    assert created == sorted(created), "created goes back in time"
    # made by the edge while this request ran (same machine, same clock)
    assert int(before) <= created[0] and created[-1] <= int(after) + 1, (before, created, after)


def _post_stream(http, path: str, body: dict):
    before = time.time()
    with http.stream("POST", path, json=body) as resp:
        raw = resp.read()
        status, headers = resp.status_code, resp.headers
    return status, headers, raw, before, time.time()


def _check_usage(usage: dict) -> None:
    keys = list(usage)
    assert keys[:3] == USAGE_KEYS, keys
    assert keys[3:] in ([], USAGE_EXTRA_KEYS), keys
    assert all(type(usage[k]) is int for k in USAGE_KEYS)
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def _stream_frames(raw: bytes) -> list[dict]:
    """All frames but ``[DONE]``, decoded after checking each is compact raw UTF-8 JSON."""
    frames = split_frames(raw)
    assert raw.endswith(DONE) and frames[-1] == b"[DONE]"
    assert b"[DONE]" not in frames[:-1]
    # temperature 0.7: see assert_raw_compact_json about U+FFFD
    return [assert_raw_compact_json(f, allow_replacement=True) for f in frames[:-1]]


def _reference_stream(http, path: str, request: dict, chunk_ref: dict, last_ref: dict, text_of, id_prefix: str,
                      object_: str) -> tuple[list[dict], bytes]:
    """A stream of ``path``: every chunk in the reference's key order with text, the last one
    empty with its finish_reason; one id, object, model and fingerprint; created in time."""
    status, headers, raw, before, after = _post_stream(http, path, request)
    assert status == 200, raw
    _check_sse_headers(headers)
    chunks = _stream_frames(raw)
    *middle, last = chunks
    assert middle, "no text chunk"

    for chunk in middle:
        assert key_tree(chunk) == key_tree(ordered(chunk_ref)), chunk
        assert chunk["choices"][0]["finish_reason"] is None
        assert text_of(chunk) != ""
    assert key_tree(last) == key_tree(ordered(last_ref))
    assert text_of(last) == ""
    assert last["choices"][0]["finish_reason"] in ("stop", "length")

    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith(id_prefix)
    assert all(c["object"] == object_ for c in chunks)
    assert all(c["model"] == MODEL and c["system_fingerprint"] == "fp_ollama" for c in chunks)
    _check_created(chunks, before, after)
    return chunks, raw


def test_reference_completion_stream(http):
    chunks, _ = _reference_stream(http, "/v1/completions", REF_COMPLETION_STREAM_REQUEST, REF_COMPLETION_CHUNK,
                                  REF_COMPLETION_LAST_CHUNK, lambda c: c["choices"][0]["text"], "cmpl-",
                                  "text_completion")
    assert all(c["choices"][0]["index"] == 0 for c in chunks[:-1])


def test_reference_chat_stream(http):
    chunks, raw = _reference_stream(http, "/v1/chat/completions", REF_CHAT_STREAM_REQUEST, REF_CHAT_CHUNK,
                                    REF_CHAT_LAST_CHUNK, lambda c: c["choices"][0]["delta"]["content"], "chatcmpl-",
                                    "chat.completion.chunk")
    assert all(c["choices"][0]["delta"]["role"] == "assistant" for c in chunks)
    assert raw.count(b'"role":"assistant"') == len(chunks)


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", REF_CHAT_STREAM_REQUEST),
    ("/v1/completions", REF_COMPLETION_STREAM_REQUEST),
], ids=["chat", "completion"])
def test_reference_stream_with_usage(http, path, body):
    """``include_usage``: one more frame before [DONE], same id, ``choices: []``, usage last."""
    body = dict(body, stream_options={"include_usage": True})
    status, headers, raw, before, after = _post_stream(http, path, body)
    assert status == 200, raw
    chunks = _stream_frames(raw)
    *content, finish, usage_chunk = chunks
    assert finish["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    assert usage_chunk["id"] == chunks[0]["id"]
    assert usage_chunk["choices"] == []
    ref = ordered(REF_CHAT_CHUNK if "chat" in path else REF_COMPLETION_CHUNK)
    # the reference's keys in the reference's order, then usage
    assert list(usage_chunk) == list(ref) + ["usage"]
    _check_usage(usage_chunk["usage"])
    assert usage_chunk["usage"]["completion_tokens"] >= len(content)  # one frame holds one token or more
    _check_created(chunks, before, after)


def test_reference_completion_non_stream(http):
    before = time.time()
    resp = http.post("/v1/completions", json=REF_COMPLETION_REQUEST)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = assert_raw_compact_json(resp.content, allow_replacement=True)
    ref = ordered(REF_COMPLETION_RESPONSE)
    assert list(body) == ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]
    assert list(body) == list(ref)
    assert key_tree(body["choices"]) == key_tree(ref["choices"])
    _check_usage(body["usage"])
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == MODEL and body["system_fingerprint"] == "fp_ollama"
    assert type(body["created"]) is int and int(before) <= body["created"] <= int(time.time()) + 1
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_reference_chat_non_stream(http):
    resp = http.post("/v1/chat/completions", json=REF_CHAT_REQUEST)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = assert_raw_compact_json(resp.content, allow_replacement=True)
    ref = ordered(REF_CHAT_RESPONSE)
    assert list(body) == ["id", "object", "created", "model", "system_fingerprint", "choices", "usage"]
    assert list(body) == list(ref)
    assert key_tree(body["choices"]) == key_tree(ref["choices"])
    _check_usage(body["usage"])
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_completion_on_chat_model_uses_the_template(http):
    """Like the reference (a 3-character prompt counted 31 tokens), "你好啊" is wrapped in the
    chat template with its default system prompt; ``raw: true`` counts the bare prompt."""
    templated = http.post("/v1/completions", json=dict(REF_COMPLETION_REQUEST, temperature=0, max_tokens=1)).json()
    raw = http.post("/v1/completions", json=dict(REF_COMPLETION_REQUEST, temperature=0, max_tokens=1, raw=True)).json()
    n_templated = templated["usage"]["prompt_tokens"]
    n_raw = raw["usage"]["prompt_tokens"]
    assert n_raw <= 9, raw  # three CJK characters: a few byte-level tokens
    assert n_templated >= n_raw + 20, (n_templated, n_raw)  # markers + default system prompt
    # The wrapped prompt is exactly the chat with that one user message.
    chat = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "你好啊"}], "temperature": 0, "max_tokens": 1,
    }).json()
    assert chat["usage"]["prompt_tokens"] == n_templated


def test_non_ascii_is_raw_utf8_on_the_wire(http):
    """A greedy answer with CJK text: the raw bytes carry the UTF-8 of the characters."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "请用中文回答：中国的首都是哪里？"}],
            "temperature": 0, "max_tokens": 24}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    content = assert_raw_compact_json(resp.content)["choices"][0]["message"]["content"]
    assert any(ord(ch) > 0x2E7F for ch in content), content  # this model answers in Chinese here
    assert compact(content)[1:-1] in resp.content  # the JSON string as is, raw UTF-8
    assert b"\\u" not in resp.content
