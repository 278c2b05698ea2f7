"""The README's examples are the four reference requests, sent with ``curl``; this runs the
streaming chat one (``curl -sN``) against the real edge.

The request carries ``max_tokens`` (see ``helpers.REF_MAX_TOKENS``): at temperature 0.7 this
small model may otherwise go on to the end of its context.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.e2e.helpers import DONE, REF_CHAT_STREAM_REQUEST, REF_COMPLETION_REQUEST, split_frames

pytestmark = pytest.mark.model

CURL = shutil.which("curl")


def _curl(edge, path: str, body: dict) -> bytes:
    if CURL is None:
        pytest.skip("curl is not installed")
    cmd = [CURL, "-sN", f"{edge.base_url}{path}", "-H", "Content-Type: application/json",
           "-d", json.dumps(body, ensure_ascii=False)]
    done = subprocess.run(cmd, capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_curl_streaming_chat(edge):
    out = _curl(edge, "/v1/chat/completions", REF_CHAT_STREAM_REQUEST)
    assert out.startswith(b'data: {"id":"chatcmpl-')
    assert out.endswith(DONE)
    frames = split_frames(out)
    assert frames[-1] == b"[DONE]"
    last = json.loads(frames[-2])
    assert last["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert last["choices"][0]["finish_reason"] in ("stop", "length")


def test_curl_completion(edge):
    out = _curl(edge, "/v1/completions", REF_COMPLETION_REQUEST)
    body = json.loads(out)
    assert body["object"] == "text_completion"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
