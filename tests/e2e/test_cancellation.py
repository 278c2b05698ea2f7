"""A client that goes away stops its generation, end to end (edge → gRPC → engine).

How "stopped" is shown from outside, deterministically, from the service's own accounting
(``GetStatus``) and from what other requests get, never from timing:

1. **The generation stops.** A long stream (end-of-turn tokens banned by ``logit_bias``, 3000
   tokens asked: it cannot end by itself) is read for a few frames, then the client hangs
   up. The service counts it as cancelled, not finished, frees its slot, and it generated
   far fewer tokens than asked; a short chat run after it adds only its own tokens to the
   totals, so nothing of the stopped generation still runs.
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
BOUND = 300  # seconds: a safety bound on every wait, never a measured limit


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


@pytest.fixture
def idle(status):
    """Starts and ends each test with an idle service (no generation of another test)."""
    status.wait_idle("before the test")
    yield
    status.wait_idle("after the test")


def test_disconnect_stops_generation_and_frees_its_slot(edge, status, idle, no_eos_bias, oai):
    # --- A: a long stream; read a few frames, then hang up --------------------------------
    base = status.get()
    body = dict(_long_chat(no_eos_bias, "the history of the Roman Empire"), logprobs=True)
    with contextlib.ExitStack() as stack:
        resp = _open_stream(edge.base_url, body, stack)
        assert resp.status_code == 200
        frames = _frames(resp)
        tokens_read = sum(_tokens(next(frames)) for _ in range(4))
    # the connection is closed here (ExitStack closed it)

    # --- 1. the service stops the generation, long before A could have finished -----------
    stopped = status.wait_for(
        lambda s: status.idle(s) and s.generations_cancelled == base.generations_cancelled + 1, BOUND,
        "A's slot freed and its generation counted as cancelled")
    assert stopped.generations_finished == base.generations_finished, "A ran to its end"
    generated = stopped.tokens_generated - base.tokens_generated
    print(f"A: {tokens_read} tokens read, {generated} generated before it stopped")
    assert tokens_read <= generated < LONG_MAX_TOKENS
    status.assert_nothing_runs_after(edge.base_url, stopped)

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
                code, headers, body = read_http_response(answered)
                assert code == 429, (code, body[:300])
                assert headers["content-type"] == "application/json"
                assert headers.get("retry-after", "").isdigit()
                error = json.loads(body)["error"]
                assert error["type"] == "rate_limit_error"
                sel.unregister(answered)
                # the other two wait for a slot: no answer while B and C hold both
                status.wait_for(lambda s: status.of_model(s).waiting == 2 and status.of_model(s).busy_slots == 2,
                                BOUND, "the other two requests waiting behind B and C")
                assert sel.select(timeout=0) == [], "a waiting request got an answer while both slots were busy"
        finally:
            for s in socks:
                abort(s)  # the two waiting ones: their clients are gone when their turn comes
        # B and C streamed all along (neither can end by itself before 3000 tokens).
        assert next(b_frames) and next(c_frames)
    # B and C are closed here: they stop, the two waiting requests get a slot, find their
    # clients gone and stop too. Once the service is idle, the edge still serves.
    status.wait_idle("once B, C and the waiting requests stopped")
    resp = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert resp.choices[0].message.content is not None


@pytest.mark.parametrize("how", ["close", "reset", "before-first-frame"])
def test_client_dropping_mid_stream_leaves_edge_serving(edge, status, idle, oai, no_eos_bias, how):
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
    # The dropped generation stops (its slot is freed); the edge process is still the same
    # one, with no traceback in its log.
    status.wait_idle("once the dropped generation stopped")
    assert edge.process.poll() is None
    log = log_since(edge.log_path, log_offset)
    assert "Traceback" not in log, log[-3000:]
    assert "[ERROR]" not in log and "WORKER TIMEOUT" not in log, log[-3000:]
    with pytest.raises(openai.NotFoundError):  # and still answers errors properly
        oai.models.retrieve("nope")
