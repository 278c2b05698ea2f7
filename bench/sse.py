"""One streamed OpenAI chat completion over HTTP (the REST edge or the peer), timed frame by
frame as a client sees it, into a :class:`bench.measure.Stream`.

The clock starts before the request is sent; a frame counts as a token's arrival when its
``choices[0].delta.content`` is non-empty (a role-only first frame does not). The token count
is the server's own (``stream_options.include_usage``), else the number of content frames
(one token per frame on llama.cpp-style servers). Loopback targets only.
"""

from __future__ import annotations

import json
import queue
import time
from typing import Any, Optional
from urllib.parse import urlsplit

import httpx

from bench.measure import Stream


def check_loopback(base_url: str) -> str:
    """base_url without a trailing slash; anything but a loopback http(s) URL is refused."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not (host in ("localhost", "::1") or host.startswith("127.")):
        raise ValueError(f"benchmark targets must be loopback http(s) URLs, got {base_url!r}")
    return base_url.rstrip("/")


class _Failed(Exception):
    pass


# Clients made once and reused: making an httpx.Client loads the CA bundle (~37 ms of CPU
# each here), so 8 made at a wave's start are a 0.3 CPU-second burst on the machine under test,
# enough for an adaptive server to drop a compute thread for a second.
_IDLE_CLIENTS: "queue.SimpleQueue[httpx.Client]" = queue.SimpleQueue()


def make_clients(n: int) -> None:
    """Puts ``n`` more clients in the pool (call before measuring)."""
    for _ in range(n):
        _IDLE_CLIENTS.put(httpx.Client())  # each request sets its own timeout


def _pooled_client() -> httpx.Client:
    try:
        return _IDLE_CLIENTS.get_nowait()
    except queue.Empty:
        make_clients(1)
        return _IDLE_CLIENTS.get_nowait()


def chat_stream(base_url: str, model: str, messages: list[dict], max_tokens: int, *,
                temperature: float = 0.0, seed: Optional[int] = 1234, include_usage: bool = True,
                extra: Optional[dict] = None, timeout_s: float = 300.0,
                client: Optional[httpx.Client] = None) -> Stream:
    """POST /v1/chat/completions with ``stream: true``; never raises for a failed stream
    (``error`` says why: HTTP status, error frame, no [DONE], no finish_reason, timeout)."""
    url = check_loopback(base_url) + "/v1/chat/completions"
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                            "temperature": temperature, "stream": True}
    if seed is not None:
        body["seed"] = seed
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    body.update(extra or {})
    pooled = client is None
    client = client or _pooled_client()
    s = Stream(t_call=time.perf_counter())
    usage_tokens, finish, done, pieces = None, None, False, []
    try:
        with client.stream("POST", url, json=body, timeout=httpx.Timeout(timeout_s, connect=5.0)) as resp:
            if resp.status_code != 200:
                resp.read()
                raise _Failed(f"HTTP {resp.status_code}: {resp.text[:300]}")
            for line in resp.iter_lines():
                now = time.perf_counter()
                if now > s.t_call + timeout_s:
                    raise _Failed(f"timeout after {timeout_s:.0f}s")
                if not line.startswith("data:"):
                    continue  # blank separators, comments, "event:" lines
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                frame = json.loads(data)
                if "error" in frame:
                    raise _Failed(f"error frame: {json.dumps(frame['error'])[:300]}")
                if frame.get("usage"):
                    usage_tokens = frame["usage"].get("completion_tokens")
                    s.prompt_tokens = frame["usage"].get("prompt_tokens")
                for choice in frame.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        if s.t_first is None:
                            s.t_first = now
                        s.t_last = now
                        s.content_frames += 1
                        pieces.append(choice["delta"]["content"])
                    finish = choice.get("finish_reason") or finish
    except _Failed as e:
        s.error = str(e)
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        s.error = f"{type(e).__name__}: {e}"
    finally:
        if pooled:
            _IDLE_CLIENTS.put(client)
    s.t_end = time.perf_counter()
    s.text = "".join(pieces)
    s.finish_reason = finish
    s.completion_tokens = usage_tokens if usage_tokens is not None else s.content_frames
    if s.error is None:
        if not done:
            s.error = "stream ended without [DONE]"
        elif finish is None:  # e.g. llama-cpp-python cut it short for a newer request
            s.error = "stream ended without a finish_reason"
        elif s.t_first is None:
            s.error = "no content frame"
    return s


def count_prompt_tokens(base_url: str, model: str, messages: list[dict]) -> Optional[int]:
    """The server's count of the prompt's tokens, from a non-streamed 1-token request: for
    servers that send no usage while streaming (llama-cpp-python)."""
    try:
        r = httpx.post(check_loopback(base_url) + "/v1/chat/completions", timeout=300,
                       json={"model": model, "messages": messages, "max_tokens": 1, "temperature": 0.0})
        return r.json()["usage"]["prompt_tokens"] if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
