"""Golden tests: the four reference shapes, byte for byte (framing and key order).

The expected frames are embedded below; when ``shared/reference/wire-format.md`` is found
beside the repository (``<repo>/../shared``, as CI lays it out), the embedded copies are also
checked against it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rest_edge import responses, streaming, wire
from tests.edge.fakes import FakeCall, last, piece

REPO = Path(__file__).resolve().parents[2]
WIRE_FORMAT = REPO.parent / "shared" / "reference" / "wire-format.md"

COMPLETION_STREAM = """\
data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"你好","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"!","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"很高兴","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"能","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"帮助","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"你","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"。","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"有什么","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"我可以","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"做的","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"吗","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"?","index":0,"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: {"id":"cmpl-591","object":"text_completion","created":1740898012,"choices":[{"text":"","index":0,"finish_reason":"stop"}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}

data: [DONE]
"""

CHAT_STREAM = """\
data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898282,"model":"qwen2.5:3b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"你好"},"finish_reason":null}]}

data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"!"},"finish_reason":null}]}

data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"有什么"},"finish_reason":null}]}

data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"我可以"},"finish_reason":null}]}

data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"帮助"},"finish_reason":null}]}

data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"你的"},"finish_reason":null}]}

data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"吗"},"finish_reason":null}]}

data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"?"},"finish_reason":null}]}

data: {"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":"stop"}]}

data: [DONE]
"""

COMPLETION_BODY = """\
{
  "id": "cmpl-765",
  "object": "text_completion",
  "created": 1740898347,
  "model": "qwen2.5:3b",
  "system_fingerprint": "fp_ollama",
  "choices": [
    {
      "text": "你好!很高兴为你服务。有什么我可以帮助你的吗?",
      "index": 0,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 31,
    "completion_tokens": 13,
    "total_tokens": 44
  }
}
"""

CHAT_BODY = """\
{
  "id": "chatcmpl-323",
  "object": "chat.completion",
  "created": 1740898382,
  "model": "qwen2.5:3b",
  "system_fingerprint": "fp_ollama",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "你好!有什么我可以帮助你的吗?"
      },
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 30,
    "completion_tokens": 9,
    "total_tokens": 39
  }
}
"""

MODEL = "qwen2.5:3b"


# --- helpers ---------------------------------------------------------------------------------

def stream_bytes(text: str) -> bytes:
    """The bytes on the wire for a reference event stream (a code block ends with one \\n)."""
    return (text.rstrip("\n") + "\n\n").encode("utf-8")


def frames_of(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines()
            if line.startswith("data: {")]


def compact(pretty: str) -> bytes:
    """A pretty-printed reference body in the product's compact form (key order kept)."""
    return wire.dumps(json.loads(pretty)).encode("utf-8")


def run_stream(renderer, frames: list[dict], text_key, *, usage=None) -> bytes:
    """Drive the production stream path with the reference pieces and clock."""
    pieces = [f["choices"][0] for f in frames]
    messages = [piece(text_key(c)) for c in pieces[:-1]]
    messages.append(last(prompt=usage[0] if usage else 1, completion=usage[1] if usage else 1))
    created = iter([f["created"] for f in frames])
    events = responses.events(FakeCall(messages))
    first = next(events)
    out = streaming.sse_stream(renderer(frames[0]["id"], MODEL, clock=lambda: next(created)), first, events,
                               FakeCall([]))
    return b"".join(out)


# --- the reference file itself ------------------------------------------------------------------

def _md_blocks(md: str) -> dict[str, str]:
    """Code blocks of wire-format.md by the line that precedes them."""
    blocks = {}
    for m in re.finditer(r"^(?P<label>[^\n]+)\n```(?:json|text)\n(?P<body>.*?)```", md, re.S | re.M):
        blocks.setdefault(m.group("label").strip(), []).append(m.group("body"))
    return blocks


@pytest.mark.skipif(not WIRE_FORMAT.exists(), reason="shared/reference not beside the repository")
def test_embedded_copies_match_wire_format_md():
    blocks = _md_blocks(WIRE_FORMAT.read_text(encoding="utf-8"))
    assert blocks["Event stream for /v1/completions"] == [COMPLETION_STREAM]
    assert blocks["Event stream for /v1/chat/completions"] == [CHAT_STREAM]
    # "/v1/completions" labels a request (json) section heading too; the bodies are the
    # blocks whose label line is exactly the path.
    assert COMPLETION_BODY in blocks["/v1/completions"]
    assert CHAT_BODY in blocks["/v1/chat/completions"]


# --- builders, byte for byte ----------------------------------------------------------------

def test_completion_chunk_builder_matches_reference():
    out = b""
    for f in frames_of(COMPLETION_STREAM):
        c = f["choices"][0]
        out += wire.sse(wire.completion_chunk(f["id"], f["created"], f["model"], c["text"], c["finish_reason"]))
    out += wire.DONE
    assert out == stream_bytes(COMPLETION_STREAM)


def test_chat_chunk_builder_matches_reference():
    out = b""
    for f in frames_of(CHAT_STREAM):
        c = f["choices"][0]
        out += wire.sse(wire.chat_chunk(f["id"], f["created"], f["model"], c["delta"]["content"], c["finish_reason"]))
    out += wire.DONE
    assert out == stream_bytes(CHAT_STREAM)


def test_completion_body_builder_matches_reference():
    body = wire.completion_response("cmpl-765", 1740898347, MODEL, "你好!很高兴为你服务。有什么我可以帮助你的吗?",
                                    "stop", wire.usage_object(31, 13))
    assert wire.dumps(body).encode() == compact(COMPLETION_BODY)


def test_chat_body_builder_matches_reference():
    body = wire.chat_response("chatcmpl-323", 1740898382, MODEL, "你好!有什么我可以帮助你的吗?",
                              "stop", wire.usage_object(30, 9))
    assert wire.dumps(body).encode() == compact(CHAT_BODY)


# --- the production paths (events → frames / body) ------------------------------------------

def test_completion_stream_path_matches_reference():
    out = run_stream(responses.CompletionRenderer, frames_of(COMPLETION_STREAM), lambda c: c["text"])
    assert out == stream_bytes(COMPLETION_STREAM)


def test_chat_stream_path_matches_reference():
    out = run_stream(responses.ChatRenderer, frames_of(CHAT_STREAM), lambda c: c["delta"]["content"])
    assert out == stream_bytes(CHAT_STREAM)


def _without_cached(body: dict) -> dict:
    usage = body["usage"]
    # prompt_tokens_details is the product's one addition, and it comes after total_tokens.
    assert list(usage) == ["prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"]
    assert usage.pop("prompt_tokens_details") == {"cached_tokens": 7}
    return body


def test_completion_body_path_matches_reference():
    text = "你好!很高兴为你服务。有什么我可以帮助你的吗?"
    messages = [piece(text[:2]), piece(text[2:10]), last(text[10:], prompt=31, completion=13, cached=7)]
    body = responses.CompletionRenderer("cmpl-765", MODEL, clock=lambda: 1740898347).body(
        responses.events(FakeCall(messages)))
    assert wire.dumps(_without_cached(body)).encode() == compact(COMPLETION_BODY)


def test_chat_body_path_matches_reference():
    text = "你好!有什么我可以帮助你的吗?"
    messages = [piece(ch) for ch in text] + [last(prompt=30, completion=9, cached=7)]
    body = responses.ChatRenderer("chatcmpl-323", MODEL, clock=lambda: 1740898382).body(
        responses.events(FakeCall(messages)))
    assert wire.dumps(_without_cached(body)).encode() == compact(CHAT_BODY)


# --- the include_usage frame ------------------------------------------------------------------

def test_include_usage_frames_keep_each_shape_and_put_usage_last():
    usage = wire.usage_object(31, 13, cached_tokens=0)
    comp = wire.dumps(wire.completion_usage_chunk("cmpl-1", 5, MODEL, usage))
    chat = wire.dumps(wire.chat_usage_chunk("chatcmpl-1", 5, MODEL, usage))
    assert comp == ('{"id":"cmpl-1","object":"text_completion","created":5,"choices":[],"model":"qwen2.5:3b",'
                    '"system_fingerprint":"fp_ollama","usage":{"prompt_tokens":31,"completion_tokens":13,'
                    '"total_tokens":44,"prompt_tokens_details":{"cached_tokens":0}}}')
    assert chat == ('{"id":"chatcmpl-1","object":"chat.completion.chunk","created":5,"model":"qwen2.5:3b",'
                    '"system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":31,'
                    '"completion_tokens":13,"total_tokens":44,"prompt_tokens_details":{"cached_tokens":0}}}')


def test_sse_framing_is_compact_raw_utf8():
    assert wire.sse({"a": "你好 😀", "b": [1, None]}) == 'data: {"a":"你好 😀","b":[1,null]}\n\n'.encode()
    assert wire.DONE == b"data: [DONE]\n\n"
