"""Load and latency measurements for OpenAI-compatible streaming endpoints (and, through
the StreamFn hook, for any other transport).

Talks raw HTTP (httpx) to ``/v1/chat/completions`` with ``stream: true`` and timestamps every
server-sent-events line as it arrives, so the figures are what a client sees:

* :func:`measure_stream` - one streamed chat completion: time to first token (first frame with
  content), decode tokens/s = (completion_tokens - 1) / (t_last - t_first), total time.
  Completion tokens come from the ``stream_options.include_usage`` frame when the server
  sends one, else from the number of content frames.
* :func:`measure_single` - median of a few single streams after a warm-up.
* :func:`measure_concurrency` - N streams at once (threads), aggregate tokens/s.
* :func:`measure_chat_turn` - a chat with a ~1,000-token history: time to first token cold
  (history never seen by the server) and for the next turn (same history plus one more
  exchange), and their ratio - how well the server reuses its prompt cache.
* :class:`PeakMemory` - peak RSS of a server process and its children, sampled from /proc.
* :class:`CpuAudit` - CPU used by other processes meanwhile (a contaminated run shows).
* :func:`start_peer` / :func:`start_server` - run llama-cpp-python's own OpenAI server (or
  any server command), wait for GET /v1/models, stop it afterwards.
* :func:`run_benchmark` - every phase for several :class:`Target` s, interleaved phase by
  phase; :func:`run_suite` - the same for one URL. Output feeds :mod:`bench.report`.

Measurement functions take a base URL + model, or a StreamFn ``(messages, max_tokens) ->
StreamResult``: a gRPC or in-process engine adapter fills a StreamResult's perf_counter()
timestamps and counters and calls :func:`finish_result`.

Everything returns plain dataclasses / dicts. Loops are bounded in count and time, and only
loopback addresses are accepted as HTTP targets.

CLI (prints the table, writes bench/results/bench.{json,png})::

    python bench/openai_load.py --peer --model-file /path/SmolLM2-135M-Instruct.Q4_1.gguf
    python bench/openai_load.py --base-url http://127.0.0.1:8000 --model smollm2:135m --pid N
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence
from urllib.parse import urlsplit

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "smollm2:135m"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}

# --------------------------------------------------------------------------------------------
# helpers


def check_loopback(base_url: str) -> str:
    """Return base_url without a trailing slash; refuse anything but a loopback host."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not (
        host in LOOPBACK_HOSTS or host.startswith("127.")
    ):
        raise ValueError(f"benchmark targets must be loopback http(s) URLs, got {base_url!r}")
    return base_url.rstrip("/")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _median(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _ms(x: Optional[float]) -> Optional[float]:
    return None if x is None else x * 1000.0


def _cpu_times() -> tuple[int, int]:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in fields]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals[:8]), idle


def cpu_busy_fraction(seconds: float = 1.0) -> Optional[float]:
    """Share of all cores busy over ``seconds`` (0..1): run before a benchmark to see whether
    the machine is quiet (other processes computing skew every figure on 2 cores)."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(seconds)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return round(1.0 - (i1 - i0) / max(1, t1 - t0), 3)


def wait_for_quiet(max_busy: float = 0.15, timeout_s: float = 120.0,
                   window_s: float = 2.0) -> Optional[float]:
    """Wait (bounded) until the machine's CPU use over ``window_s`` is at most ``max_busy``.
    Returns the last busy fraction seen; the caller decides whether to go on anyway.
    On 2 cores one other busy process wrecks llama.cpp-style spinning thread pools."""
    end = time.monotonic() + timeout_s
    busy = cpu_busy_fraction(window_s)
    while busy is not None and busy > max_busy and time.monotonic() < end:
        busy = cpu_busy_fraction(window_s)
    return busy


# --------------------------------------------------------------------------------------------
# one stream


@dataclass
class StreamResult:
    ok: bool
    status: int = 0
    error: Optional[str] = None
    ttft_s: Optional[float] = None          # request sent -> first frame with content
    total_s: Optional[float] = None         # request sent -> [DONE] / end of body
    decode_tps: Optional[float] = None      # (completion_tokens - 1) / (t_last - t_first)
    completion_tokens: int = 0              # from usage when given, else content frames
    token_source: str = "frames"            # "usage" or "frames"
    content_frames: int = 0
    prompt_tokens: Optional[int] = None     # from usage, when the server sends it
    finish_reason: Optional[str] = None
    text: str = ""
    t_start: float = 0.0                    # perf_counter() values, for aggregating
    t_first: Optional[float] = None
    t_last: Optional[float] = None
    t_end: Optional[float] = None

    def to_dict(self, with_text: bool = False) -> dict:
        d = dataclasses.asdict(self)
        if not with_text:
            d["text"] = d["text"][:80]
        return d


def chat_body(
    model: str,
    messages: list[dict],
    max_tokens: int,
    *,
    temperature: float = 0.0,
    seed: Optional[int] = 1234,
    include_usage: bool = True,
    extra: Optional[dict] = None,
) -> dict:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": True,
    }
    if seed is not None:
        body["seed"] = seed
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    if extra:
        body.update(extra)
    return body


def measure_stream(
    base_url: str,
    model: str,
    messages: list[dict],
    max_tokens: int = 128,
    *,
    temperature: float = 0.0,
    seed: Optional[int] = 1234,
    include_usage: bool = True,
    extra: Optional[dict] = None,
    timeout_s: float = 120.0,
    client: Optional[httpx.Client] = None,
    path: str = "/v1/chat/completions",
) -> StreamResult:
    """Send one streamed chat completion and time its frames as they arrive.

    TTFT is measured from just before the request is sent to the arrival of the first frame
    whose ``choices[0].delta.content`` is non-empty (a role-only first frame does not count).
    Completion tokens come from the ``include_usage`` frame when the server sends one, else
    from the number of content frames (one token per frame on llama.cpp-style servers; a
    frame holding back split UTF-8 or stop-string prefixes makes this an under-count).
    """
    url = check_loopback(base_url) + path
    body = chat_body(model, messages, max_tokens, temperature=temperature, seed=seed,
                     include_usage=include_usage, extra=extra)
    own_client = client is None
    if own_client:
        client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0))
    res = StreamResult(ok=False)
    pieces: list[str] = []
    usage_completion: Optional[int] = None
    deadline = None
    try:
        res.t_start = time.perf_counter()
        deadline = res.t_start + timeout_s
        with client.stream("POST", url, json=body) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                resp.read()
                res.error = f"HTTP {resp.status_code}: {resp.text[:300]}"
                return finish_result(res)
            done = False
            for line in resp.iter_lines():
                now = time.perf_counter()
                if now > deadline:
                    res.error = f"timeout after {timeout_s:.0f}s"
                    break
                if not line.startswith("data:"):
                    continue  # blank separators, ": ping" comments, "event:" lines
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    frame = json.loads(data)
                except json.JSONDecodeError:
                    res.error = f"bad frame: {data[:120]}"
                    break
                if "error" in frame:
                    res.error = f"error frame: {json.dumps(frame['error'])[:300]}"
                    break
                usage = frame.get("usage")
                if usage:
                    usage_completion = usage.get("completion_tokens")
                    res.prompt_tokens = usage.get("prompt_tokens")
                for choice in frame.get("choices") or []:
                    delta = choice.get("delta") or {}
                    content = delta.get("content")
                    if content:
                        if res.t_first is None:
                            res.t_first = now
                        res.t_last = now
                        res.content_frames += 1
                        pieces.append(content)
                    if choice.get("finish_reason"):
                        res.finish_reason = choice["finish_reason"]
            res.t_end = time.perf_counter()
            if res.error is None and not done:
                res.error = "stream ended without [DONE]"
            elif res.error is None and res.finish_reason is None:
                # e.g. llama-cpp-python with interrupt_requests: a newer request cut it short
                res.error = "stream ended without a finish_reason (interrupted?)"
    except httpx.HTTPError as e:
        res.error = f"{type(e).__name__}: {e}"
    finally:
        if own_client:
            client.close()
    res.text = "".join(pieces)
    return finish_result(res, usage_completion)


def finish_result(res: StreamResult, usage_completion_tokens: Optional[int] = None
                  ) -> StreamResult:
    """Derive ttft_s, total_s, completion_tokens, decode_tps and ok from the timestamps and
    counters a transport filled in (t_start, t_first, t_last, t_end, content_frames, error).
    ``usage_completion_tokens``: the server's own count, preferred over content frames."""
    if res.t_end is None:
        res.t_end = time.perf_counter()
    res.total_s = res.t_end - res.t_start
    if res.t_first is not None:
        res.ttft_s = res.t_first - res.t_start
    if usage_completion_tokens is not None:
        res.completion_tokens = int(usage_completion_tokens)
        res.token_source = "usage"
    else:
        res.completion_tokens = res.content_frames
        res.token_source = "frames"
    if (res.t_first is not None and res.t_last is not None and res.t_last > res.t_first
            and res.completion_tokens > 1):
        res.decode_tps = (res.completion_tokens - 1) / (res.t_last - res.t_first)
    if res.error is None and res.t_first is None:
        res.error = "no content frame"
    res.ok = res.error is None
    return res


# --------------------------------------------------------------------------------------------
# prompts

_TOPICS = [
    "lighthouses", "volcanoes", "bees", "the history of bread", "glaciers", "chess openings",
    "the moon landing", "coral reefs", "railways", "paper making", "owls", "desert plants",
    "bridges", "the printing press", "tides", "honey", "clocks", "kites", "rivers", "maps",
]


def stream_prompt(i: int, nonce: str = "") -> list[dict]:
    """A prompt that differs per stream (topic and a tag up front) and invites a long answer."""
    topic = _TOPICS[i % len(_TOPICS)]
    tag = f"[{nonce}-{i}] " if nonce else f"[{i}] "
    return [{
        "role": "user",
        "content": f"{tag}Write a long, detailed essay about {topic}, with several "
                   f"paragraphs covering their history, how they work and why they matter.",
    }]


_WORDS = {
    "adj": ["quiet", "ancient", "bright", "narrow", "patient", "curious", "heavy", "distant",
            "gentle", "stubborn", "silver", "hollow"],
    "noun": ["keeper", "merchant", "river", "engineer", "garden", "lantern", "harbour",
             "library", "orchard", "ferry", "tower", "market"],
    "verb": ["repaired", "measured", "followed", "described", "painted", "guarded", "crossed",
             "counted", "visited", "mapped"],
    "place": ["the old mill", "the northern road", "the stone bridge", "the east gate",
              "the salt marsh", "the clock tower", "the hill farm", "the fish market"],
}


def filler_text(rng: random.Random, n_sentences: int) -> str:
    out = []
    for _ in range(n_sentences):
        w = {k: rng.choice(v) for k, v in _WORDS.items()}
        n2 = rng.choice(_WORDS["noun"])
        out.append(f"The {w['adj']} {w['noun']} {w['verb']} the {n2} near {w['place']} "
                   f"in the year {rng.randint(1700, 1999)}.")
    return " ".join(out)


def chat_history(history_tokens: int = 1000, nonce: str = "", turns: int = 4,
                 seed: int = 7) -> list[dict]:
    """Deterministic chat history of roughly ``history_tokens`` tokens in ``turns`` exchanges.

    The nonce goes first in the system message, so a server's prompt cache cannot hold any of
    this history before it is sent (only the chat template's opening tokens are shared).
    Sizing: ~20 tokens per filler sentence and ~120 tokens of template, system prompt and
    wrapping (SmolLM2's tokenizer splits digits one by one), so the whole rendered prompt is
    about ``history_tokens``; the actual count is reported from the server's usage.
    """
    rng = random.Random(seed)
    total_sentences = max(2 * turns, round((history_tokens - 120) / 20))
    sizes = [total_sentences // (2 * turns) + (1 if k < total_sentences % (2 * turns) else 0)
             for k in range(2 * turns)]
    msgs = [{"role": "system",
             "content": f"Session {nonce or 'fixed'}. You are a helpful assistant who keeps "
                        f"notes about a town's chronicle and answers briefly."}]
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Note {t + 1} of the chronicle: "
                     + filler_text(rng, sizes[2 * t]) + " Please remember it."})
        msgs.append({"role": "assistant", "content": f"Noted ({t + 1}). "
                     + filler_text(rng, sizes[2 * t + 1])})
    return msgs


# --------------------------------------------------------------------------------------------
# targets: anything that can stream one chat completion


StreamFn = Callable[[list, int], StreamResult]   # (messages, max_tokens) -> StreamResult


def http_stream_fn(base_url: str, model: str, *, include_usage: bool = True,
                   timeout_s: float = 300.0, temperature: float = 0.0,
                   seed: Optional[int] = 1234, extra: Optional[dict] = None) -> StreamFn:
    """A StreamFn for an OpenAI-compatible endpoint; one httpx client per calling thread.

    Other transports (gRPC, the engine in-process) plug into measure_single /
    measure_concurrency / measure_chat_turn / run_benchmark by providing their own StreamFn
    that fills a StreamResult with perf_counter() timestamps (t_start, t_first, t_last, t_end)
    and calls finish_result(res) at the end.
    """
    base_url = check_loopback(base_url)
    local = threading.local()
    clients: list[httpx.Client] = []

    def fn(messages: list, max_tokens: int) -> StreamResult:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0))
            clients.append(client)
        return measure_stream(base_url, model, messages, max_tokens, temperature=temperature,
                              seed=seed, include_usage=include_usage, extra=extra,
                              timeout_s=timeout_s, client=client)

    fn.close = lambda: [c.close() for c in clients]  # type: ignore[attr-defined]
    return fn


def http_prompt_counter(base_url: str, model: str) -> Callable[[list], Optional[int]]:
    """prompt_tokens via a non-streamed 1-token request (for servers without stream usage)."""
    url = check_loopback(base_url) + "/v1/chat/completions"

    def count(messages: list) -> Optional[int]:
        try:
            r = httpx.post(url, json={"model": model, "messages": messages, "max_tokens": 1,
                                      "temperature": 0.0}, timeout=120.0)
            if r.status_code == 200:
                return (r.json().get("usage") or {}).get("prompt_tokens")
        except (httpx.HTTPError, ValueError):
            pass
        return None

    return count


def _as_fn(target: Any, model: Optional[str], include_usage: bool = True,
           timeout_s: float = 300.0) -> StreamFn:
    if callable(target):
        return target
    if not model:
        raise ValueError("a URL target needs a model name")
    return http_stream_fn(target, model, include_usage=include_usage, timeout_s=timeout_s)


@dataclass
class Target:
    """One system under test: a name, how to stream, and optionally the server's pid (memory,
    CPU accounting) and a prompt-token counter (when streams carry no usage)."""
    name: str
    stream_fn: StreamFn
    pid: Optional[int] = None
    count_prompt_tokens: Optional[Callable[[list], Optional[int]]] = None
    info: dict = field(default_factory=dict)


def http_target(name: str, base_url: str, model: str, pid: Optional[int] = None, *,
                include_usage: bool = True, **info) -> Target:
    return Target(name=name, stream_fn=http_stream_fn(base_url, model,
                                                      include_usage=include_usage),
                  pid=pid, count_prompt_tokens=http_prompt_counter(base_url, model),
                  info={"base_url": base_url, "model": model, **info})


# --------------------------------------------------------------------------------------------
# single stream, repeated


def measure_single(target: Any, model: Optional[str] = None, *, max_tokens: int = 128,
                   repeats: int = 3, warmup: int = 1, include_usage: bool = True) -> dict:
    """Median over ``repeats`` single streams (after ``warmup`` untimed ones).
    ``target``: a base URL (with ``model``) or a StreamFn."""
    fn = _as_fn(target, model, include_usage)
    nonce = uuid.uuid4().hex[:8]
    runs: list[StreamResult] = []
    for i in range(warmup + repeats):
        r = fn(stream_prompt(i, nonce), max_tokens)
        if i >= warmup:
            runs.append(r)
    ok = [r for r in runs if r.ok]
    return {
        "ttft_ms": _ms(_median([r.ttft_s for r in ok])),
        "decode_tps": _median([r.decode_tps for r in ok]),
        "total_s": _median([r.total_s for r in ok]),
        "completion_tokens": _median([r.completion_tokens for r in ok]),
        "token_source": ok[0].token_source if ok else None,
        "errors": [r.error for r in runs if not r.ok],
        "runs": [r.to_dict() for r in runs],
    }


# --------------------------------------------------------------------------------------------
# concurrency


@dataclass
class ConcurrencyResult:
    n: int
    ok_streams: int
    wall_s: float
    total_tokens: int
    aggregate_tps: Optional[float]
    ttft_ms_p50: Optional[float]
    ttft_ms_max: Optional[float]
    per_stream_decode_tps_p50: Optional[float]
    errors: list = field(default_factory=list)
    streams: list = field(default_factory=list)


def measure_concurrency(target: Any, model: Optional[str] = None, n: int = 1, *,
                        max_tokens: int = 128, timeout_s: float = 300.0,
                        include_usage: bool = True, nonce: Optional[str] = None
                        ) -> ConcurrencyResult:
    """Run ``n`` streams at once, one thread each, released together by a barrier.
    aggregate tokens/s = completion tokens of the streams that finished properly /
    (last stream end - first stream start). ``target``: a base URL (with ``model``) or a
    StreamFn (called from n threads at once)."""
    if not 1 <= n <= 64:
        raise ValueError("n must be in 1..64")
    fn = _as_fn(target, model, include_usage, timeout_s)
    nonce = nonce or uuid.uuid4().hex[:8]
    results: list[Optional[StreamResult]] = [None] * n
    barrier = threading.Barrier(n, timeout=30)

    def worker(i: int) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            results[i] = StreamResult(ok=False, error="barrier broken")
            return
        try:
            results[i] = fn(stream_prompt(i, nonce), max_tokens)
        except Exception as e:  # a StreamFn of another transport may raise
            results[i] = StreamResult(ok=False, error=f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s + 60
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    rs = [r if r is not None else StreamResult(ok=False, error="thread did not finish")
          for r in results]
    ok = [r for r in rs if r.ok]
    wall = (max(r.t_end for r in ok) - min(r.t_start for r in ok)) if ok else 0.0
    total = sum(r.completion_tokens for r in ok)
    ttfts = [r.ttft_s for r in ok]
    return ConcurrencyResult(
        n=n,
        ok_streams=len(ok),
        wall_s=wall,
        total_tokens=total,
        aggregate_tps=(total / wall) if wall > 0 else None,
        ttft_ms_p50=_ms(_median(ttfts)),
        ttft_ms_max=_ms(max(ttfts)) if ttfts else None,
        per_stream_decode_tps_p50=_median([r.decode_tps for r in ok]),
        errors=[r.error for r in rs if not r.ok],
        streams=[r.to_dict() for r in rs],
    )


# --------------------------------------------------------------------------------------------
# chat turn N


@dataclass
class ChatTurnResult:
    ttft_cold_ms: Optional[float]
    ttft_next_ms: Optional[float]
    cold_over_next: Optional[float]
    prompt_tokens_cold: Optional[int]
    prompt_tokens_next: Optional[int]
    repeats: int
    errors: list = field(default_factory=list)
    samples: list = field(default_factory=list)


def measure_chat_turn(target: Any, model: Optional[str] = None, *,
                      history_tokens: int = 1000, max_tokens: int = 32, repeats: int = 3,
                      include_usage: bool = True,
                      count_prompt_tokens: Optional[Callable[[list], Optional[int]]] = None
                      ) -> ChatTurnResult:
    """TTFT of a chat's first request with a ~``history_tokens`` history (cold: a fresh
    nonce at the start makes it unknown to the server) and of the next turn (that history,
    the model's reply, one more short user message). Medians over ``repeats`` fresh
    histories; cold/next is the ratio of the medians.

    Prompt sizes come from stream usage, else from ``count_prompt_tokens`` (called after the
    timed requests, so it cannot warm anything measured; for a URL target it defaults to a
    non-streamed 1-token request).
    """
    fn = _as_fn(target, model, include_usage)
    if count_prompt_tokens is None and not callable(target) and model:
        count_prompt_tokens = http_prompt_counter(target, model)
    samples, errors = [], []
    for rep in range(repeats):
        history = chat_history(history_tokens, nonce=uuid.uuid4().hex)
        cold_msgs = history + [{"role": "user",
                                "content": "Which places did the notes mention?"}]
        cold = fn(cold_msgs, max_tokens)
        if not cold.ok:
            errors.append(f"cold: {cold.error}")
            continue
        next_msgs = cold_msgs + [
            {"role": "assistant", "content": cold.text},
            {"role": "user", "content": "Thanks. And which years?"},
        ]
        nxt = fn(next_msgs, max_tokens)
        if not nxt.ok:
            errors.append(f"next: {nxt.error}")
            continue
        pt_cold, pt_next = cold.prompt_tokens, nxt.prompt_tokens
        if count_prompt_tokens and rep == 0:
            pt_cold = pt_cold or count_prompt_tokens(cold_msgs)
            pt_next = pt_next or count_prompt_tokens(next_msgs)
        samples.append({"ttft_cold_ms": _ms(cold.ttft_s), "ttft_next_ms": _ms(nxt.ttft_s),
                        "prompt_tokens_cold": pt_cold, "prompt_tokens_next": pt_next})
    cold_ms = _median([s["ttft_cold_ms"] for s in samples])
    next_ms = _median([s["ttft_next_ms"] for s in samples])
    return ChatTurnResult(
        ttft_cold_ms=cold_ms,
        ttft_next_ms=next_ms,
        cold_over_next=(cold_ms / next_ms) if cold_ms and next_ms else None,
        prompt_tokens_cold=next((s["prompt_tokens_cold"] for s in samples
                                 if s["prompt_tokens_cold"]), None),
        prompt_tokens_next=next((s["prompt_tokens_next"] for s in samples
                                 if s["prompt_tokens_next"]), None),
        repeats=repeats,
        errors=errors,
        samples=samples,
    )


# --------------------------------------------------------------------------------------------
# memory


def _proc_children(pid: int) -> list[int]:
    """Direct children of pid, via /proc/<pid>/task/*/children, else a scan of /proc."""
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tids = os.listdir(task_dir)
    except OSError:
        return kids
    found_interface = False
    for tid in tids:
        try:
            txt = (task_dir / tid / "children").read_text()
            found_interface = True
        except OSError:
            continue
        kids.extend(int(x) for x in txt.split())
    if found_interface:
        return kids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def process_tree(pid: int, max_procs: int = 256) -> list[int]:
    out, todo = [], [pid]
    while todo and len(out) < max_procs:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(_proc_children(p))
    return out


def _status_kb(pid: int, key: str) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def tree_rss_mb(pid: int) -> float:
    return sum((_status_kb(p, "VmRSS") or 0) for p in process_tree(pid)) / 1024.0


class PeakMemory:
    """Samples the summed RSS of a process and its descendants every ``interval_s`` from a
    background thread; also keeps the largest per-process VmHWM (kernel-recorded peak) seen.

    with PeakMemory(pid) as mem: ...;  mem.result() -> dict
    """

    def __init__(self, pid: int, interval_s: float = 0.05, max_seconds: float = 3600.0):
        self.pid = pid
        self.interval_s = interval_s
        self.max_seconds = max_seconds
        self.peak_rss_mb = 0.0
        self.start_rss_mb = 0.0
        self.hwm_kb: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total = 0
        for p in process_tree(self.pid):
            total += _status_kb(p, "VmRSS") or 0
            hwm = _status_kb(p, "VmHWM")
            if hwm:
                self.hwm_kb[p] = max(self.hwm_kb.get(p, 0), hwm)
        self.peak_rss_mb = max(self.peak_rss_mb, total / 1024.0)
        self.samples += 1

    def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self._stop.wait(self.interval_s) and time.monotonic() < end:
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self.start_rss_mb = tree_rss_mb(self.pid)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def result(self) -> dict:
        return {
            "start_rss_mb": round(self.start_rss_mb, 1),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            # sum of per-process kernel peaks: an upper bound (peaks need not coincide)
            "peak_hwm_sum_mb": round(sum(self.hwm_kb.values()) / 1024.0, 1),
            "processes": len(self.hwm_kb),
            "samples": self.samples,
        }


def _proc_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks; 0 if gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except (OSError, IndexError, ValueError):
        return 0


class CpuAudit:
    """How much CPU went to processes other than the server tree and this client while a
    measurement ran: a contaminated run is visible in the numbers, not only suspected.

    with CpuAudit(server_pid) as cpu: ...;  cpu.result() -> dict (percent of all cores)
    """

    def __init__(self, pid: Optional[int]):
        self.pid = pid
        self._ours: dict[int, int] = {}

    def _snap_ours(self) -> None:
        pids = (process_tree(self.pid) if self.pid else []) + [os.getpid()]
        for p in pids:
            self._ours[p] = max(self._ours.get(p, 0), _proc_ticks(p))

    def __enter__(self) -> "CpuAudit":
        self.t0, self.i0 = _cpu_times()
        self._snap_ours()
        self._ours0 = dict(self._ours)
        self.w0 = time.monotonic()
        return self

    def sample(self) -> None:
        """Call now and then (e.g. between tests) so short-lived server children count."""
        self._snap_ours()

    def __exit__(self, *exc) -> None:
        self._snap_ours()
        self.t1, self.i1 = _cpu_times()
        self.w1 = time.monotonic()

    def result(self) -> dict:
        total = max(1, self.t1 - self.t0)
        busy = total - (self.i1 - self.i0)
        ours = sum(v - self._ours0.get(p, 0) for p, v in self._ours.items())
        foreign = max(0, busy - ours)
        return {
            "busy_pct": round(100.0 * busy / total, 1),
            "ours_pct": round(100.0 * min(ours, busy) / total, 1),
            "foreign_pct": round(100.0 * foreign / total, 1),
            "wall_s": round(self.w1 - self.w0, 1),
        }


# --------------------------------------------------------------------------------------------
# the peer: llama-cpp-python's own OpenAI server


@dataclass
class ServerHandle:
    proc: subprocess.Popen
    base_url: str
    pid: int
    model: str
    argv: list
    log_path: Optional[str]
    load_s: float


def peer_argv(model_file: str, port: int, *, python: Optional[str] = None,
              alias: str = DEFAULT_MODEL, n_ctx: int = 4096, n_threads: int = 2,
              n_batch: int = 512, logits_all: bool = False,
              interrupt_requests: bool = False, extra_args: Sequence[str] = ()) -> list[str]:
    """Command line of llama-cpp-python's server (0.3.36).

    interrupt_requests False: its default (True) makes a newly arrived request cut the stream
    in progress short (a [DONE] after a few tokens), which would wreck concurrency figures.
    logits_all False: its server default (True) computes and keeps logits of every prompt
    token (slower prompt evaluation, an n_ctx x vocab float array); nothing here asks for
    prompt logprobs, and our engine computes last-token logits only.
    """
    python = python or str(REPO_ROOT / ".bench-venv" / "bin" / "python")
    return [
        python, "-m", "llama_cpp.server",
        "--model", str(model_file),
        "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads),
        "--n_batch", str(n_batch),
        "--logits_all", str(logits_all),
        "--interrupt_requests", str(interrupt_requests),
        "--verbose", "False",
        *extra_args,
    ]


def wait_ready(base_url: str, model: Optional[str], proc: Optional[subprocess.Popen] = None,
               timeout_s: float = 120.0, path: str = "/v1/models") -> float:
    """Poll GET base_url+path until it answers 200 (listing ``model`` when given).
    Returns seconds waited; raises RuntimeError on timeout or if proc exits."""
    url = check_loopback(base_url) + path
    t0 = time.monotonic()
    last = ""
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() - t0 < timeout_s:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before ready")
            try:
                r = client.get(url)
                if r.status_code == 200:
                    ids = [m.get("id") for m in (r.json().get("data") or [])]
                    if model is None or model in ids:
                        return time.monotonic() - t0
                    last = f"models {ids}"
                else:
                    last = f"HTTP {r.status_code}"
            except (httpx.HTTPError, ValueError) as e:
                last = type(e).__name__
            time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s ({last})")


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group we started (start_new_session), then SIGKILL after grace."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def start_server(argv: Sequence[str], base_url: str, model: Optional[str], *,
                 log_path: Optional[str] = None, ready_timeout_s: float = 180.0,
                 env: Optional[dict] = None, cwd: Optional[str] = None
                 ) -> Iterator[ServerHandle]:
    """Start any server command in its own session, wait for readiness, stop it afterwards."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    t0 = time.monotonic()
    proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env=env, cwd=cwd)
    try:
        wait_ready(base_url, model, proc, timeout_s=ready_timeout_s)
        yield ServerHandle(proc=proc, base_url=base_url, pid=proc.pid, model=model or "",
                           argv=list(argv), log_path=log_path,
                           load_s=time.monotonic() - t0)
    finally:
        stop_process(proc)
        if log_path:
            log.close()


@contextlib.contextmanager
def start_peer(model_file: str, port: Optional[int] = None, *, alias: str = DEFAULT_MODEL,
               log_path: Optional[str] = None, ready_timeout_s: float = 180.0,
               **argv_kw) -> Iterator[ServerHandle]:
    """Run llama-cpp-python's OpenAI server on ``model_file`` at 127.0.0.1:``port``."""
    if not Path(model_file).is_file():
        raise FileNotFoundError(model_file)
    port = port or free_port()
    argv = peer_argv(model_file, port, alias=alias, **argv_kw)
    if not Path(argv[0]).exists():
        raise FileNotFoundError(f"{argv[0]} missing: run bench/install_peer.sh first")
    with start_server(argv, f"http://127.0.0.1:{port}", alias, log_path=log_path,
                      ready_timeout_s=ready_timeout_s) as h:
        yield h


# --------------------------------------------------------------------------------------------
# the whole suite, one or several systems, phases interleaved


def _phases(concurrency: Sequence[int], max_tokens: int, single_repeats: int,
            chat_repeats: int, history_tokens: int) -> list[tuple[str, Callable]]:
    """(name, run(target) -> (metrics, raw, errors)) for each phase of the suite."""

    def single(t: Target):
        s = measure_single(t.stream_fn, max_tokens=max_tokens, repeats=single_repeats)
        return ({"ttft_ms": s["ttft_ms"], "decode_tps": s["decode_tps"],
                 "stream_total_s": s["total_s"]}, s, s["errors"])

    def conc(n: int):
        def run(t: Target):
            c = measure_concurrency(t.stream_fn, n=n, max_tokens=max_tokens)
            return ({f"agg_tps_c{n}": c.aggregate_tps, f"ttft_p50_ms_c{n}": c.ttft_ms_p50},
                    dataclasses.asdict(c), c.errors)
        return run

    def chat(t: Target):
        c = measure_chat_turn(t.stream_fn, history_tokens=history_tokens,
                              repeats=chat_repeats,
                              count_prompt_tokens=t.count_prompt_tokens)
        return ({"chat_ttft_cold_ms": c.ttft_cold_ms, "chat_ttft_next_ms": c.ttft_next_ms,
                 "chat_cold_over_next": c.cold_over_next,
                 "chat_prompt_tokens": c.prompt_tokens_cold},
                dataclasses.asdict(c), c.errors)

    return ([("single", single)] + [(f"c{n}", conc(n)) for n in concurrency]
            + [("chat", chat)])


def run_benchmark(
    targets: Sequence[Target],
    *,
    rounds: int = 1,
    max_tokens: int = 128,
    concurrency: Sequence[int] = (1, 2, 4, 8),
    single_repeats: int = 3,
    chat_repeats: int = 3,
    history_tokens: int = 1000,
    log: Callable[[str], Any] = print,
) -> dict:
    """Run every phase (single stream, each concurrency level, chat turn) for every target.

    Phases are interleaved: phase by phase, ``rounds`` times, each round visiting the targets
    in a rotated order, so drift in the machine's speed (on a shared 2-core VM it can halve
    within seconds) hits every system alike. A system's figure is the median over rounds.
    Peak memory is sampled for every target with a pid over the whole run; the CPU used by
    processes other than the target's server tree and this process is recorded per phase.

    Returns {"systems": {name: {metric: value}}, "raw": {name: {...}}} - the first is what
    bench.report.write_report takes.
    """
    phases = _phases(concurrency, max_tokens, single_repeats, chat_repeats, history_tokens)
    raw: dict[str, dict] = {t.name: {"info": t.info, "phases": {}, "errors": [],
                                     "cpu_phases": {}} for t in targets}
    per_round: dict[str, dict[str, list]] = {t.name: {} for t in targets}
    busy = cpu_busy_fraction(1.0)
    if busy is not None and busy > 0.15:
        log(f"WARNING: machine {busy:.0%} busy before the run: figures will be skewed")
    mems = {t.name: PeakMemory(t.pid).__enter__() for t in targets if t.pid}
    try:
        for pname, prun in phases:
            for r in range(rounds):
                k = r % len(targets)
                for t in list(targets[k:]) + list(targets[:k]):
                    log(f"  [{pname} round {r + 1}/{rounds}] {t.name}")
                    with CpuAudit(t.pid) as audit:
                        metrics, detail, errors = prun(t)
                    cpu = audit.result()
                    if cpu["foreign_pct"] > 10:
                        log(f"    other processes used {cpu['foreign_pct']}% CPU meanwhile")
                    raw[t.name]["phases"].setdefault(pname, []).append(detail)
                    raw[t.name]["cpu_phases"].setdefault(pname, []).append(cpu)
                    raw[t.name]["errors"].extend(f"{pname}: {e}" for e in errors)
                    for key, v in metrics.items():
                        per_round[t.name].setdefault(key, []).append(v)
    finally:
        for m in mems.values():
            m.__exit__(None, None, None)
    systems: dict[str, dict] = {}
    for t in targets:
        m: dict[str, Any] = {key: _median(vals) for key, vals in per_round[t.name].items()}
        # cold/next from the medians of its parts, like a single round does
        if m.get("chat_ttft_cold_ms") and m.get("chat_ttft_next_ms"):
            m["chat_cold_over_next"] = m["chat_ttft_cold_ms"] / m["chat_ttft_next_ms"]
        m["failed_requests"] = len(raw[t.name]["errors"])
        cpus = [c for cs in raw[t.name]["cpu_phases"].values() for c in cs]
        wall = sum(c["wall_s"] for c in cpus)
        m["foreign_cpu_pct"] = (round(sum(c["foreign_pct"] * c["wall_s"] for c in cpus)
                                      / wall, 1) if wall else None)
        if t.name in mems:
            raw[t.name]["memory"] = mems[t.name].result()
            m["rss_start_mb"] = raw[t.name]["memory"]["start_rss_mb"]
            m["rss_peak_mb"] = raw[t.name]["memory"]["peak_rss_mb"]
        raw[t.name]["per_round"] = per_round[t.name]
        systems[t.name] = m
    return {"systems": systems, "raw": raw, "cpu_busy_before": busy}


def run_suite(base_url: str, model: str, *, pid: Optional[int] = None, name: str = "server",
              include_usage: bool = True, **kw) -> dict:
    """run_benchmark for one OpenAI-compatible endpoint -> {"metrics": ..., "raw": ...}."""
    t = http_target(name, base_url, model, pid, include_usage=include_usage)
    try:
        out = run_benchmark([t], **kw)
    finally:
        t.stream_fn.close()  # type: ignore[attr-defined]
    return {"metrics": out["systems"][name], "raw": out["raw"][name]}


# --------------------------------------------------------------------------------------------
# CLI


def _parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tgt = ap.add_mutually_exclusive_group(required=True)
    tgt.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000")
    tgt.add_argument("--peer", action="store_true",
                     help="start llama-cpp-python's server (.bench-venv) on --model-file")
    ap.add_argument("--model-file", help="GGUF file for --peer")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--name", default=None, help="system name in the report")
    ap.add_argument("--pid", type=int, help="server pid for memory/CPU accounting")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="single-stream and chat repeats")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--history-tokens", type=int, default=1000)
    ap.add_argument("--no-usage", action="store_true",
                    help="do not send stream_options.include_usage")
    ap.add_argument("--peer-log", default="/tmp/bench_peer.log")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to SECONDS for the CPU to be at most 15%% busy")
    ap.add_argument("--out-dir", default=None,
                    help="write bench.json + bench.png here (default bench/results)")
    args = ap.parse_args(argv)
    if args.peer and not args.model_file:
        ap.error("--peer needs --model-file")
    return args


def _run_cli(args: argparse.Namespace, base_url: str, pid: Optional[int],
             argv: Optional[list] = None) -> dict:
    sys.path.insert(0, str(REPO_ROOT))
    from bench.report import RESULTS_DIR, write_report

    name = args.name or ("peer" if args.peer else "server")
    t = http_target(name, base_url, args.model, pid, include_usage=not args.no_usage,
                    argv=argv)
    out = run_benchmark([t], rounds=args.rounds, max_tokens=args.max_tokens,
                        concurrency=[int(x) for x in args.concurrency.split(",")],
                        single_repeats=args.repeats, chat_repeats=args.repeats,
                        history_tokens=args.history_tokens,
                        log=lambda m: print(m, file=sys.stderr))
    meta = {"model": args.model, "when": time.strftime("%Y-%m-%d %H:%M"),
            "model_file": args.model_file, "cores": os.cpu_count(),
            "cpu_busy_before": out["cpu_busy_before"]}
    return write_report(out["systems"], meta=meta, raw=out["raw"],
                        out_dir=Path(args.out_dir) if args.out_dir else RESULTS_DIR)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse_args(argv)
    if args.wait_quiet > 0:
        busy = wait_for_quiet(0.15, args.wait_quiet)
        print(f"cpu busy before start: {busy}", file=sys.stderr)
    if args.peer:
        with start_peer(args.model_file, alias=args.model, log_path=args.peer_log) as h:
            print(f"peer ready at {h.base_url} (pid {h.pid}, {h.load_s:.1f}s)",
                  file=sys.stderr)
            _run_cli(args, h.base_url, h.pid, h.argv)
    else:
        _run_cli(args, check_loopback(args.base_url), args.pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
