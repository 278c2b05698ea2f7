"""A client that goes away stops its generation, end to end (edge → gRPC → engine).

How "stopped" is shown from outside, deterministically:

1. **The service stops computing.** A generation keeps the engine's compute threads busy; an
   idle service uses almost no CPU. ``/proc/<pid>/stat`` of the service process gives its CPU
   time. While the stream runs, the test counts its tokens (``logprobs`` lists them) and the
   CPU seconds they cost. After the disconnect the service must go quiet having spent less
   CPU than half of what the tokens still to come would cost at that measured price. That
   does not depend on how fast the shared machine is: the generation cannot end by itself
   sooner, since its end-of-turn tokens are banned (``logit_bias``) and it has thousands of
   tokens left (and later tokens, with a longer context, cost more, not less).
2. **Its slot is free.** The service has 2 slots and 2 waiting places. After the disconnect,
   two new long streams B and C both get their first token while both are open: that needs
   both slots, so the cancelled generation released its own. (Were it still holding a slot, C
   would wait behind B, which cannot finish: no end-of-turn, thousands of tokens.)
3. **The queue is exactly full.** With B and C holding both slots, three more requests D, E, F
   arrive: two take the two waiting places, the third is refused at once with 429 and
   ``Retry-After`` (no stream started). This does not depend on timing either: B and C hold
   their slots until the test closes them.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import time

import httpx
import openai
import pytest

from tests.e2e.helpers import (
    MODEL,
    abort,
    file_size,
    log_since,
    raw_post,
    read_http_response,
)

pytestmark = pytest.mark.model

LONG_MAX_TOKENS = 3000  # prompt (~45 tokens) + this fits the service's 4096-token context
IDLE_CORES = 0.1  # an idle service uses about 0.00-0.02 cores; a generating one about 1-2


def _long_chat(no_eos_bias: dict, topic: str) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"Write a very long essay about {topic}."}],
            "temperature": 0, "max_tokens": LONG_MAX_TOKENS, "stream": True, "logit_bias": no_eos_bias}


def _open_stream(base_url: str, body: dict, stack: contextlib.ExitStack) -> httpx.Response:
    """Starts a stream on its own connection; returns once the headers (= first token) came."""
    client = stack.enter_context(httpx.Client(base_url=base_url, timeout=httpx.Timeout(300.0, connect=10.0)))
    resp = client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
    stack.callback(resp.close)
    return resp


def _frames(resp: httpx.Response):
    for line in resp.iter_lines():
        if line:
            assert line.startswith("data: {"), line[:200]
            yield line


def _tokens(frame: str) -> int:
    """How many tokens a frame carries (its ``logprobs`` entries)."""
    logprobs = json.loads(frame[len("data: "):])["choices"][0]["logprobs"]
    return len(logprobs["content"]) if logprobs else 0


def _settle(service_cpu) -> None:
    """Waits (bounded) until the service is idle, so no test leaves a generation behind."""
    service_cpu.wait_quiet(IDLE_CORES, bound=300)


@pytest.fixture
def cpu(service_cpu):
    if not service_cpu.available():
        pytest.skip("needs /proc to read the service's CPU time")
    _settle(service_cpu)  # nothing of an earlier test still running
    yield service_cpu
    _settle(service_cpu)


def test_disconnect_stops_generation_and_frees_its_slot(edge, cpu, no_eos_bias, oai):
    idle_rate = cpu.rate(1.0)

    # --- A: a long stream; read a few frames, measure, then hang up ----------------------
    body = dict(_long_chat(no_eos_bias, "the history of the Roman Empire"), logprobs=True)
    with contextlib.ExitStack() as stack:
        resp = _open_stream(edge.base_url, body, stack)
        assert resp.status_code == 200
        frames = _frames(resp)
        tokens_read = _tokens(next(frames))
        t_first, c_first = time.monotonic(), cpu.seconds()
        measured_tokens = 0
        # Read at least 3 more frames and for at least 2 s (a bursty shared machine).
        n_read = 1
        while n_read < 4 or time.monotonic() - t_first < 2.0:
            n = _tokens(next(frames))
            n_read += 1
            measured_tokens += n
        t_last, c_last = time.monotonic(), cpu.seconds()
        tokens_read += measured_tokens
    t_closed = time.monotonic()  # the connection is closed here (ExitStack closed it)

    busy_rate = (c_last - c_first) / (t_last - t_first)
    cpu_per_token = (c_last - c_first) / measured_tokens
    assert busy_rate > 2 * idle_rate + 0.05, f"no CPU signal: busy {busy_rate:.3f} vs idle {idle_rate:.3f} cores"

    # --- 1. the service stops computing, long before A could have finished --------------
    remaining = LONG_MAX_TOKENS - tokens_read
    assert remaining > 1000
    budget = 0.5 * remaining * cpu_per_token
    threshold = idle_rate + 0.25 * (busy_rate - idle_rate)
    used = cpu.wait_quiet(threshold, bound=300, max_cpu=budget)
    print(f"A: {tokens_read} tokens read, {cpu_per_token * 1000:.1f} CPU-ms/token, busy {busy_rate:.2f} cores; "
          f"after the disconnect {used:.2f} CPU-s (budget {budget:.1f}), quiet after "
          f"{time.monotonic() - t_closed:.1f}s")
    assert used < budget

    # --- 2. both slots are free: B and C stream at the same time --------------------------
    with contextlib.ExitStack() as stack:
        # (Keep the frame iterators referenced: closing one, even by garbage collection,
        # closes its connection, which would cancel that stream and free its slot.)
        b = _open_stream(edge.base_url, _long_chat(no_eos_bias, "the history of Egypt"), stack)
        assert b.status_code == 200
        b_frames = _frames(b)
        next(b_frames)
        c = _open_stream(edge.base_url, _long_chat(no_eos_bias, "the history of China"), stack)
        assert c.status_code == 200, "C could not start while B streams: the cancelled stream kept a slot"
        c_frames = _frames(c)
        next(c_frames)

        # --- 3. the queue: two wait, the third is refused at once -------------------------
        short = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
        socks = [raw_post(edge.base_url, "/v1/chat/completions", short) for _ in range(3)]
        try:
            with selectors.DefaultSelector() as sel:
                for s in socks:
                    sel.register(s, selectors.EVENT_READ)
                ready = sel.select(timeout=120)
                assert len(ready) == 1, f"{len(ready)} of three requests beyond 2 slots + 2 waiting places answered"
                answered = ready[0][0].fileobj
                status, headers, body = read_http_response(answered)
                assert status == 429, (status, body[:300])
                assert headers["content-type"] == "application/json"
                assert headers.get("retry-after", "").isdigit()
                error = json.loads(body)["error"]
                assert error["type"] == "rate_limit_error"
                sel.unregister(answered)
                # the other two wait for a slot: no answer while B and C hold both
                assert sel.select(timeout=1.0) == [], "a waiting request got an answer while both slots were busy"
        finally:
            for s in socks:
                abort(s)  # the two waiting ones: their clients are gone when their turn comes
        # B and C streamed all along (neither can end by itself before 3000 tokens).
        assert next(b_frames) and next(c_frames)
    # B and C are closed here: they stop, the two waiting requests get a slot, find their
    # clients gone and stop too. Once the service is idle, the edge still serves.
    cpu.wait_quiet(IDLE_CORES, bound=300)
    resp = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert resp.choices[0].message.content is not None


@pytest.mark.parametrize("how", ["close", "reset", "before-first-frame"])
def test_client_dropping_mid_stream_leaves_edge_serving(edge, cpu, oai, no_eos_bias, how):
    """A client that closes (FIN), resets (RST), or goes away before the first frame: the edge
    logs no traceback, keeps running, answers the next request, and the service goes idle."""
    log_offset = file_size(edge.log_path)
    body = dict(_long_chat(no_eos_bias, "the ocean"), max_tokens=64)
    if how == "close":
        with contextlib.ExitStack() as stack:
            resp = _open_stream(edge.base_url, body, stack)
            frames = _frames(resp)
            next(frames), next(frames)
    else:
        sock = raw_post(edge.base_url, "/v1/chat/completions", body)
        if how == "reset":
            assert sock.recv(1) == b"H"  # the status line came: the stream started
        abort(sock)

    answer = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.choices[0].message.content is not None
    # The dropped generation stops (bounded wait); the edge process is still the same one,
    # with no traceback in its log.
    cpu.wait_quiet(IDLE_CORES, bound=300)
    assert edge.process.poll() is None
    log = log_since(edge.log_path, log_offset)
    assert "Traceback" not in log, log[-3000:]
    assert "[ERROR]" not in log and "WORKER TIMEOUT" not in log, log[-3000:]
    with pytest.raises(openai.NotFoundError):  # and still answers errors properly
        oai.models.retrieve("nope")
