"""Streaming through real gunicorn: frames arrive as they are made, and every frame is whole
UTF-8 text.

Timing is only ever compared within one run (the machine is shared; a token can take from
10 ms to seconds); the only absolute numbers are generous safety timeouts.
"""

from __future__ import annotations

import codecs

import pytest

from tests.e2e.helpers import (
    DONE,
    MODEL,
    assert_raw_compact_json,
    read_timed,
    split_frames,
)

pytestmark = pytest.mark.model

CHINESE_PROMPT = "请用中文回答：中国的首都是哪里？"  # this model answers it in Chinese


def _chat_stream_chunks(http, body: dict, allow_replacement: bool = False) -> list[dict]:
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        raw = resp.read()
        assert resp.status_code == 200, raw
    assert raw.endswith(DONE)
    frames = split_frames(raw)
    return [assert_raw_compact_json(f, allow_replacement=allow_replacement) for f in frames[:-1]]


def test_frames_arrive_incrementally(http, no_eos_bias):
    """A 100-token stream is read straight off the socket: its frames come in many separate
    reads, spread over the stream's life, not in one burst at the end.

    End-of-turn tokens are banned (``logit_bias``) so the generation surely makes 100 tokens.
    """
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story about a dragon."}],
            "temperature": 0, "max_tokens": 100, "stream": True, "logit_bias": no_eos_bias}
    got = read_timed(http, "/v1/chat/completions", body)
    assert got.status == 200, got.raw[:500]
    assert got.headers["content-type"] == "text/event-stream"
    frames = split_frames(got.raw)
    assert frames[-1] == b"[DONE]"
    chunks = [assert_raw_compact_json(f, allow_replacement=True) for f in frames[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert len(chunks) >= 30, len(chunks)  # ~one frame per token (a frame may hold a few)
    assert len(got.frame_times) == len(frames)

    reads_with_frames = [t for t, n in got.reads if n]
    total = got.frame_times[-1] - got.started
    first = got.frame_times[0] - got.started
    # Many separate socket reads carried the frames (a buffering edge or proxy would hand
    # them over in a few large pieces) ...
    assert len(reads_with_frames) > 10, f"{len(reads_with_frames)} reads carried all {len(frames)} frames"
    # ... the first frame came well before the last was made (buffered: first ~ last) ...
    assert first < 0.5 * total, (first, total)
    # ... and the frames kept coming: the middle frame did not arrive with the first.
    middle = got.frame_times[len(got.frame_times) // 2]
    assert got.frame_times[0] < middle <= got.frame_times[-1], (got.frame_times[0], middle, got.frame_times[-1])


def test_chinese_stream_is_whole_characters_and_equals_non_stream(http):
    """Greedy is deterministic: the streamed pieces join to the non-stream text, and no frame
    carries a broken character (no U+FFFD, every frame strict UTF-8)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": CHINESE_PROMPT}],
            "temperature": 0, "max_tokens": 48}
    expected = http.post("/v1/chat/completions", json=body).json()
    text = expected["choices"][0]["message"]["content"]
    assert sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff") >= 3, text  # CJK in the answer
    assert "\ufffd" not in text

    chunks = _chat_stream_chunks(http, dict(body, stream=True))
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks]
    assert all("\ufffd" not in p for p in pieces), pieces
    assert "".join(pieces) == text
    assert chunks[-1]["choices"][0]["finish_reason"] == expected["choices"][0]["finish_reason"]
    assert len(pieces) > 3  # really streamed in pieces


def _check_frames_are_incremental_utf8(chunks: list[dict]) -> int:
    """Each frame's text is exactly what an incremental UTF-8 decoder makes of the bytes of that
    frame's tokens (from ``logprobs``): a character is sent once complete, never split.
    Returns how many frames held a character whose bytes came from more than one token."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    *content, finish = chunks
    held = 0
    for i, chunk in enumerate(content):
        entries = chunk["choices"][0]["logprobs"]["content"]
        assert entries, f"frame {i} has text but no tokens"
        expected = decoder.decode(b"".join(bytes(e["bytes"]) for e in entries))
        assert chunk["choices"][0]["delta"]["content"] == expected, (i, entries)
        if len(entries) > 1 and any(ord(ch) > 0x7F for ch in expected):
            held += 1
    assert finish["choices"][0]["delta"]["content"] == ""
    rest = finish["choices"][0].get("logprobs")  # tokens that made no text, if any
    if rest is not None:
        # Bytes of a character that max_tokens cut short are dropped, never sent as U+FFFD.
        assert decoder.decode(b"".join(bytes(e["bytes"]) for e in rest["content"])) == ""
    return held


def test_chinese_stream_holds_split_characters_back(http):
    """With ``logprobs`` each frame names its tokens and their bytes: the greedy Chinese answer
    has characters made of several byte-level tokens, held back until complete."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": CHINESE_PROMPT}],
            "temperature": 0, "max_tokens": 48, "stream": True, "logprobs": True}
    # A token's own string may be U+FFFD (its bytes are part of a character); only the text
    # must be whole.
    chunks = _chat_stream_chunks(http, body, allow_replacement=True)
    assert all("\ufffd" not in c["choices"][0]["delta"]["content"] for c in chunks)
    held = _check_frames_are_incremental_utf8(chunks)
    assert held >= 1, "no character spanned several tokens; the hold-back was not exercised"


def test_sampled_emoji_stream_is_incremental_utf8(http):
    """Sampled text (this model answers "你好" at 0.7 with emoji, 4-byte characters): frames are
    still the exact incremental decode of their tokens' bytes. A token sequence that is not
    valid UTF-8 may give U+FFFD, but only where the bytes really are invalid."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "你好"}], "temperature": 0.7, "seed": 7,
            "max_tokens": 32, "stream": True, "logprobs": True}
    chunks = _chat_stream_chunks(http, body, allow_replacement=True)
    _check_frames_are_incremental_utf8(chunks)
