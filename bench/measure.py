"""Timing of streams: one record, one clock, one decode formula, for every system.

Every clock starts at the call: before ``engine.generate()``, before ``stub.Generate()``,
before the HTTP request is sent. So time to first token (TTFT) includes everything the system
does for a request (validation, chat template, tokenizing, queueing, prompt evaluation and
the transport), wherever it does it.

Decode rate is :func:`decode_rate`: the tokens after the first, over the time from the first
piece to the last piece that carried tokens, ``(tokens - 1) / (t_last - t_first)``, with
``tokens`` the system's own count (usage, or token ids). It is the reciprocal of the mean
inter-token latency as aiperf defines it, (end - first token) / (tokens - 1); the end there
is the response's, a millisecond after the last token here.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence


def decode_rate(tokens: int, t_first: Optional[float], t_last: Optional[float]) -> Optional[float]:
    """Tokens per second after the first token; None when there is no interval to divide by."""
    if t_first is None or t_last is None or t_last <= t_first or tokens < 2:
        return None
    return (tokens - 1) / (t_last - t_first)


@dataclass
class Stream:
    """One streamed generation as the client saw it; times are time.perf_counter() seconds."""

    t_call: float
    t_first: Optional[float] = None       # first piece carrying a token
    t_last: Optional[float] = None        # last piece carrying a token
    t_end: Optional[float] = None         # stream closed
    completion_tokens: int = 0            # the system's count: usage, else token ids / content frames
    content_frames: int = 0               # pieces that carried text (HTTP) or token ids
    prompt_tokens: Optional[int] = None
    text: str = ""
    finish_reason: Optional[str] = None   # HTTP streams: the last one a choice gave
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.t_first is not None

    @property
    def ttft_s(self) -> Optional[float]:
        return None if self.t_first is None else self.t_first - self.t_call

    @property
    def decode_tps(self) -> Optional[float]:
        return decode_rate(self.completion_tokens, self.t_first, self.t_last)


def time_pieces(call: Callable[[], Iterable], tokens_in: Callable[[object], int],
                prompt_tokens_in: Callable[[object], Optional[int]] = lambda piece: None) -> Stream:
    """Times ``call()`` (an engine or gRPC stream) from before the call to its last piece.
    ``tokens_in(piece)``: tokens the piece carries; ``prompt_tokens_in``: usage, if any."""
    s = Stream(t_call=time.perf_counter())
    try:
        for piece in call():
            now = time.perf_counter()
            s.prompt_tokens = prompt_tokens_in(piece) or s.prompt_tokens
            n = tokens_in(piece)
            if n:
                if s.t_first is None:
                    s.t_first = now
                s.t_last = now
                s.completion_tokens += n
                s.content_frames += 1
    except Exception as e:  # noqa: BLE001  (a failed stream is recorded, not raised)
        s.error = f"{type(e).__name__}: {e}"
    s.t_end = time.perf_counter()
    if s.error is None and s.t_first is None:
        s.error = "no token"
    return s


def successes(streams: Sequence[Stream], tokens: Optional[int] = None) -> tuple[list[Stream], list[str]]:
    """The streams that succeeded (and, when given, made exactly ``tokens`` tokens), and what
    went wrong with each of the others."""
    ok, failed = [], []
    for s in streams:
        if not s.ok:
            failed.append(s.error or "failed")
        elif tokens is not None and s.completion_tokens != tokens:
            failed.append(f"made {s.completion_tokens} tokens, not {tokens}")
        else:
            ok.append(s)
    return ok, failed


def median(values: Iterable[Optional[float]]) -> Optional[float]:
    vs = [v for v in values if v is not None]
    return statistics.median(vs) if vs else None


def percentile(values: list[float], q: float) -> Optional[float]:
    """The q-th percentile (0..100), linear between the closest ranks; None without values."""
    vs = sorted(values)
    if not vs:
        return None
    position = (len(vs) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return vs[low] + (vs[high] - vs[low]) * (position - low)


def single_rows(streams: Sequence[Stream]) -> dict:
    """The single-stream rows: medians of TTFT, decode rate and tokens."""
    return {"ttft_ms": median(s.ttft_s * 1000 for s in streams),
            "decode_tps": median(s.decode_tps for s in streams),
            "tokens": median(s.completion_tokens for s in streams)}


def concurrent(one: Callable[[int], Stream], n: int, timeout_s: float = 600.0) -> list[Stream]:
    """``one(i)`` for i in 0..n-1 on n threads released together; every stream's record
    (a thread that raised or did not finish in ``timeout_s`` gives a failed one)."""
    results: list[Optional[Stream]] = [None] * n
    barrier = threading.Barrier(n, timeout=30)

    def run(i: int) -> None:
        t = time.perf_counter()
        try:
            barrier.wait()
            results[i] = one(i)
        except Exception as e:  # noqa: BLE001  (reported as that stream's failure)
            results[i] = Stream(t_call=t, error=f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    return [r or Stream(t_call=0.0, error="did not finish in time") for r in results]


def streamed_tokens(streams: Iterable[Stream]) -> int:
    """Every completion token the streams carried, failed ones' included (they cost CPU too)."""
    return sum(s.completion_tokens for s in streams)


def per_1k_tokens(seconds: Optional[float], tokens: int) -> Optional[float]:
    """``seconds`` per 1,000 tokens; None without tokens to divide by."""
    return None if seconds is None or tokens <= 0 else 1000.0 * seconds / tokens


def aggregate_tps(streams: Sequence[Stream]) -> Optional[float]:
    """All completion tokens over the wall time from the first call to the last stream's end."""
    wall = max(s.t_end for s in streams) - min(s.t_call for s in streams)
    return sum(s.completion_tokens for s in streams) / wall if wall > 0 else None
