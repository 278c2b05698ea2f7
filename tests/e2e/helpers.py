"""Helpers of the end-to-end tests: strict SSE parsing, key order, the reference shapes, raw
HTTP, and the service's own accounting (``GetStatus``: whether a generation still runs).
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from tests.helpers import eventually

MODEL = "smollm2:135m"
SHORT_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}

# --- the reference shapes of wire-format.md (one of each, verbatim) --------------------------

REF_COMPLETION_CHUNK = (
    '{"id":"cmpl-591","object":"text_completion","created":1740898011,"choices":[{"text":"你好","index":0,'
    '"finish_reason":null}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}'
)
REF_COMPLETION_LAST_CHUNK = (
    '{"id":"cmpl-591","object":"text_completion","created":1740898012,"choices":[{"text":"","index":0,'
    '"finish_reason":"stop"}],"model":"qwen2.5:3b","system_fingerprint":"fp_ollama"}'
)
REF_CHAT_CHUNK = (
    '{"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898282,"model":"qwen2.5:3b",'
    '"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"你好"},'
    '"finish_reason":null}]}'
)
REF_CHAT_LAST_CHUNK = (
    '{"id":"chatcmpl-562","object":"chat.completion.chunk","created":1740898283,"model":"qwen2.5:3b",'
    '"system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    '"finish_reason":"stop"}]}'
)
REF_COMPLETION_RESPONSE = """{
  "id": "cmpl-765",
  "object": "text_completion",
  "created": 1740898347,
  "model": "qwen2.5:3b",
  "system_fingerprint": "fp_ollama",
  "choices": [{"text": "你好!很高兴为你服务。有什么我可以帮助你的吗?", "index": 0, "finish_reason": "stop"}],
  "usage": {"prompt_tokens": 31, "completion_tokens": 13, "total_tokens": 44}
}"""
REF_CHAT_RESPONSE = """{
  "id": "chatcmpl-323",
  "object": "chat.completion",
  "created": 1740898382,
  "model": "qwen2.5:3b",
  "system_fingerprint": "fp_ollama",
  "choices": [{"index": 0, "message": {"role": "assistant", "content": "你好!有什么我可以帮助你的吗?"},
               "finish_reason": "stop"}],
  "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
}"""

# The four reference requests with this product's default model. ``max_tokens`` is added:
# at temperature 0.7 this small model can ramble (emoji) up to the context's end (~4000
# tokens), far too long for a test on a shared 2-core machine.
REF_MAX_TOKENS = 32
REF_COMPLETION_STREAM_REQUEST = {"model": MODEL, "prompt": "你好啊", "temperature": 0.7, "stream": True,
                                 "max_tokens": REF_MAX_TOKENS}
REF_CHAT_STREAM_REQUEST = {"model": MODEL, "messages": [{"role": "user", "content": "你好"}], "temperature": 0.7,
                           "stream": True, "max_tokens": REF_MAX_TOKENS}
REF_COMPLETION_REQUEST = {"model": MODEL, "prompt": "你好啊", "temperature": 0.7, "max_tokens": REF_MAX_TOKENS}
REF_CHAT_REQUEST = {"model": MODEL, "messages": [{"role": "user", "content": "你好"}], "temperature": 0.7,
                    "max_tokens": REF_MAX_TOKENS}


def key_tree(value: Any) -> Any:
    """The keys of a JSON value at every level, in order (lists: the tree of each element)."""
    if isinstance(value, dict):
        return [(k, key_tree(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [key_tree(v) for v in value]
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys {keys}"
    return dict(pairs)  # dicts keep insertion order


def ordered(payload: bytes | str) -> Any:
    """JSON decoded with its key order kept; a duplicate key fails the test."""
    return json.loads(payload, object_pairs_hook=_no_duplicates)


def compact(obj: Any) -> bytes:
    """The wire's own encoding: compact separators, raw UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# A \u escape that JSON does not require (it requires them only for U+0000..U+001F).
_NEEDLESS_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u(?!00[01][0-9a-fA-F])")


def assert_raw_compact_json(payload: bytes, *, allow_replacement: bool = False) -> Any:
    """``payload`` is compact JSON in raw UTF-8 (no needless ``\\uXXXX``); returns it decoded.

    ``allow_replacement``: a sampled (temperature > 0) generation may pick byte tokens that never
    form valid UTF-8; the service then sends U+FFFD, as a non-stream answer would. Whether a
    stream ever splits a *valid* character is checked with token bytes (see test_streaming).
    """
    text = payload.decode("utf-8")  # strict: bytes of a split character would raise here
    if not allow_replacement:
        assert "\ufffd" not in text, f"replacement character in {text!r}"
    assert not _NEEDLESS_ESCAPE.search(text), f"\\u escape in {text!r}"
    obj = ordered(payload)
    assert compact(obj) == payload, f"not compact raw-UTF-8 JSON: {payload!r}"
    return obj


# --- SSE --------------------------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"


def split_frames(raw: bytes) -> list[bytes]:
    """The frames of a whole SSE body, strictly ``data: <payload>\\n\\n`` each (payload without
    ``data: `` and without the blank line). Anything else fails the test."""
    assert raw.endswith(b"\n\n"), f"body does not end with a blank line: {raw[-80:]!r}"
    pieces = raw[:-2].split(b"\n\n")
    frames = []
    for piece in pieces:
        assert piece.startswith(b"data: "), f"not a data frame: {piece[:120]!r}"
        payload = piece[len(b"data: "):]
        assert b"\n" not in payload and b"\r" not in payload, f"multi-line frame: {piece[:120]!r}"
        assert payload, "empty data frame"
        frames.append(payload)
    return frames


@dataclass
class TimedStream:
    """A streamed body read with ``iter_raw``: the frames and when each socket read happened."""

    status: int
    headers: dict
    raw: bytes = b""
    reads: list[tuple[float, int]] = field(default_factory=list)  # (time, frames completed by that read)
    frame_times: list[float] = field(default_factory=list)
    started: float = 0.0
    headers_at: float = 0.0


def read_timed(client, path: str, body: dict) -> TimedStream:
    """POST ``body`` and read the raw stream, recording the arrival time of every frame."""
    started = time.monotonic()
    with client.stream("POST", path, json=body) as resp:
        out = TimedStream(resp.status_code, dict(resp.headers), started=started, headers_at=time.monotonic())
        buf = b""
        for chunk in resp.iter_raw():
            now = time.monotonic()
            out.raw += chunk
            buf += chunk
            completed = buf.count(b"\n\n")
            if completed:
                buf = buf[buf.rfind(b"\n\n") + 2:]
                out.frame_times.extend([now] * completed)
            out.reads.append((now, completed))
    return out


# --- the service ------------------------------------------------------------------------------

def end_of_turn_bias(channel: grpc.Channel, model: str) -> dict[str, int]:
    """``logit_bias`` banning the template's end-of-turn tokens (ids asked from the service)."""
    from inference_service.v1 import inference_pb2 as pb
    from inference_service.v1 import inference_pb2_grpc as pb_grpc

    with channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        resp = stub.Tokenize(pb.TokenizeRequest(model=model, text="<|im_end|><|endoftext|>", raw=True), timeout=30)
    assert list(resp.tokens) == ["<|im_end|>", "<|endoftext|>"], list(resp.tokens)
    return {str(i): -100 for i in resp.token_ids}


# --- raw HTTP ---------------------------------------------------------------------------------

def raw_post(base_url: str, path: str, body: dict, timeout: float = 300.0) -> socket.socket:
    """Sends one POST on a fresh socket (``Connection: close``) and returns the socket unread."""
    url = urlsplit(base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
    data = json.dumps(body).encode("utf-8")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    sock.sendall(head + data)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def read_http_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Reads a whole ``Connection: close`` response: status, headers (lower-case names), body."""
    head, _, body = read_until_closed(sock).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def abort(sock: socket.socket) -> None:
    """Closes a socket with a TCP reset (SO_LINGER 0), as a crashed client would."""
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def log_since(path: Path, offset: int) -> str:
    return path.read_bytes()[offset:].decode("utf-8", "replace")


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# --- the service's own accounting (GetStatus) -------------------------------------------------

class ServiceStatus:
    """``GetStatus`` of the real service: its slots, queue and running totals, polled.

    Shows from the service's own books that a departed client's work stopped: its slot or
    queue place is free, ``generations_cancelled`` counted it, and ``tokens_generated`` /
    ``prompt_tokens_evaluated`` no longer grow.
    """

    def __init__(self, address: str, model: str = MODEL):
        from inference_service.v1 import inference_pb2 as pb
        from inference_service.v1 import inference_pb2_grpc as pb_grpc

        self._pb = pb
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.InferenceServiceStub(self._channel)
        self.model = model

    def get(self):
        return self._stub.GetStatus(self._pb.GetStatusRequest(), timeout=30)

    def of_model(self, status) -> Any:
        return next(m for m in status.models if m.name == self.model)

    def wait_for(self, predicate, bound: float, what: str):
        """Polls until ``predicate(status)``; returns that status. Fails after ``bound`` seconds."""
        return eventually(self.get, what, until=predicate, timeout=bound, interval=0.02)

    def idle(self, status) -> bool:
        """No slot busy, nobody waiting, no call in flight."""
        m = self.of_model(status)
        return m.busy_slots == 0 and m.waiting == 0 and status.in_flight == 0

    def wait_idle(self, what: str, bound: float = 300):
        return self.wait_for(self.idle, bound, f"the service idle {what}")

    def assert_nothing_runs_after(self, base_url: str, stopped):
        """One short chat through the edge, run to its end once a generation was stopped
        (``stopped``: the status then): the totals grow by that chat's work alone, so nothing
        of the stopped generation still runs. The window is that chat, an event, not a clock."""
        import httpx

        response = httpx.post(base_url + "/v1/chat/completions", json=SHORT_CHAT, timeout=300)
        assert response.status_code == 200, response.text
        usage = response.json()["usage"]
        later = self.wait_for(lambda s: self.idle(s) and s.generations_finished == stopped.generations_finished + 1,
                              300, "the short chat counted as finished")
        assert later.generations_cancelled == stopped.generations_cancelled
        assert later.tokens_generated == stopped.tokens_generated + usage["completion_tokens"], \
            "tokens generated beyond the short chat's: the stopped generation still ran"
        assert later.prompt_tokens_evaluated <= stopped.prompt_tokens_evaluated + usage["prompt_tokens"], \
            "prompt evaluated beyond the short chat's: the stopped generation still ran"
        return later

    def tokenize(self, text: str, raw: bool = False) -> list[int]:
        resp = self._stub.Tokenize(self._pb.TokenizeRequest(model=self.model, text=text, raw=raw), timeout=30)
        return list(resp.token_ids)

    def close(self) -> None:
        self._channel.close()


def control_token_bias(status: ServiceStatus, markup: str, bias: int) -> dict[str, int]:
    """``logit_bias`` giving ``bias`` to each control token written in ``markup`` (parsed raw)."""
    ids = status.tokenize(markup, raw=True)
    return {str(i): bias for i in ids}


_FILLER_WORDS = (
    "river stone garden window market letter silver morning harbor winter valley candle "
    "painter bridge forest meadow lantern pocket thunder orchard village shadow castle mirror "
    "engine butter ladder copper feather blanket saddle pepper marble violin rabbit kettle "
    "tunnel anchor basket cotton dragon island jacket mountain needle ocean pillow rocket "
    "spider temple tiger velvet wagon yellow zebra quiet gentle bright rapid hollow ancient"
).split()


def filler_text(words: int, seed: str) -> str:
    """``words`` plain English words, different for each ``seed`` from the first word on (so
    no prompt cache of an earlier request serves any of it)."""
    import random

    rng = random.Random(seed)
    out = [f"Note {seed}:"]
    for i in range(words):
        out.append(rng.choice(_FILLER_WORDS) + ("." if i % 12 == 11 else ""))
    return " ".join(out)
