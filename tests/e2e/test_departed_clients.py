"""A client that leaves early costs nothing more, in every state (real service, real gunicorn).

The edge watches each client's socket while its response is produced (rest_edge.disconnect),
so a departure is noticed without a write: while the request is queued, while its long
prompt is evaluated, while a non-stream answer is generated, and while a stream generates
tokens that have no text yet (its first frame not written).

Proof from the service's own accounting (``GetStatus``), not from timing: after the client
leaves, the slot / queue place is free, ``generations_cancelled`` counted it (and
``generations_finished`` did not), the work done is a small part of what the request asked
for, and a short chat run afterwards adds only its own tokens to ``tokens_generated`` and
``prompt_tokens_evaluated``: nothing of the departed request still runs. Waits are bounded
generously (a shared, noisy machine); the measured times are printed (``-s``).
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
import uuid

import httpx
import pytest

from tests.e2e.helpers import (
    MODEL,
    abort,
    control_token_bias,
    file_size,
    filler_text,
    log_since,
    raw_post,
)

pytestmark = pytest.mark.model

BOUND = 60.0  # a generous safety bound on every wait; the edge notices within about 0.5 s
LONG_MAX_TOKENS = 3000
PROMPT_WORDS = 2500
PROMPT_MAX_TOKENS = 256


@pytest.fixture(scope="module")
def bans(status) -> dict[str, int]:
    """End-of-turn tokens banned: generation only ends by length."""
    bias = control_token_bias(status, "<|im_end|><|endoftext|>", -100)
    assert len(bias) == 2, bias
    return bias


@pytest.fixture(scope="module")
def textless(status, bans) -> dict[str, int]:
    """Also favour ``<|im_start|>``, a control token with no text: the model generates it over
    and over, so tokens are generated but no text (hence no frame) ever comes."""
    favour = control_token_bias(status, "<|im_start|>", 100)
    assert len(favour) == 1 and not set(favour) & set(bans), favour
    return {**bans, **favour}



@pytest.fixture
def quiet(status, edge):
    """Starts and ends each test with an idle service (no generation of another test)."""
    status.wait_idle("before the test")
    offset = file_size(edge.log_path)
    yield
    status.wait_idle("after the test")
    log = log_since(edge.log_path, offset)
    assert "Traceback" not in log and "[ERROR]" not in log and "[WARNING]" not in log, log[-3000:]


def _leave(sock: socket.socket, how: str) -> None:
    if how == "close":
        sock.close()  # FIN
    else:
        abort(sock)  # RST


def _no_answer_yet(sock: socket.socket) -> bool:
    return select.select([sock], [], [], 0)[0] == []


def _departures(edge, route: str) -> float:
    text = httpx.get(edge.base_url + "/metrics", timeout=30).text
    m = re.search(r'^edge_client_departures_total\{route="%s"\} (\S+)$' % re.escape(route), text, re.M)
    return float(m.group(1)) if m else 0.0


def _chat(content: str, **fields) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, **fields}


def _assert_work_stopped(status, edge, base, left_at: float, state: str):
    """After a departure: the slot and queue are free, the generation was counted as cancelled
    and not as finished, and nothing of it runs once a later short chat has run."""
    stopped = status.wait_for(
        lambda s: status.idle(s) and s.generations_cancelled == base.generations_cancelled + 1,
        BOUND, f"{state}: slot/queue place freed and the generation counted as cancelled",
    )
    freed_after = time.monotonic() - left_at
    assert stopped.generations_finished == base.generations_finished, "the departed generation ran to its end"
    print(f"\n{state}: slot free {freed_after:.2f}s after the client left; prompt tokens evaluated "
          f"{stopped.prompt_tokens_evaluated - base.prompt_tokens_evaluated}, "
          f"tokens generated {stopped.tokens_generated - base.tokens_generated}")
    status.assert_nothing_runs_after(edge.base_url, stopped)
    return stopped


# --- (a) queued ------------------------------------------------------------------------------

def test_queued_client_that_leaves_gives_up_its_place(edge, status, quiet, bans):
    """Both slots busy with two long streams; a third request waits and leaves (stream: FIN,
    non-stream: RST). Its queue place frees at once, it never gets a slot."""
    def hold(stack, topic):
        client = stack.enter_context(httpx.Client(base_url=edge.base_url, timeout=httpx.Timeout(300.0, connect=10.0)))
        body = _chat(f"Write a very long essay about {topic}.", max_tokens=LONG_MAX_TOKENS, stream=True,
                     logit_bias=bans)
        resp = client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
        stack.callback(resp.close)
        assert resp.status_code == 200
        lines = resp.iter_lines()
        stack.callback(lines.close)
        assert next(line for line in lines if line).startswith("data: {")

    departed_before = _departures(edge, "/v1/chat/completions")
    with contextlib.ExitStack() as stack:
        hold(stack, "the history of Rome")
        hold(stack, "the history of Persia")
        status.wait_for(lambda s: status.of_model(s).busy_slots == 2, BOUND, "both slots busy")
        for stream, how in ((True, "close"), (False, "reset")):
            base = status.get()
            sock = raw_post(edge.base_url, "/v1/chat/completions", _chat("Hi", max_tokens=8, stream=stream))
            status.wait_for(lambda s: status.of_model(s).waiting == 1, BOUND, "the third request queued")
            assert _no_answer_yet(sock)
            left_at = time.monotonic()
            _leave(sock, how)
            after = status.wait_for(
                lambda s: status.of_model(s).waiting == 0 and s.generations_cancelled == base.generations_cancelled + 1,
                BOUND, "the departed request left the queue",
            )
            # It left the queue without a slot: both slots are still held by the two streams.
            assert status.of_model(after).busy_slots == 2
            assert after.generations_started == base.generations_started + 1
            assert after.generations_finished == base.generations_finished
            print(f"\nqueued ({'stream' if stream else 'non-stream'}, {how}): queue place free "
                  f"{time.monotonic() - left_at:.2f}s after the client left")
    assert _departures(edge, "/v1/chat/completions") >= departed_before + 2


# --- (b) evaluating a long prompt -------------------------------------------------------------

@pytest.mark.parametrize("stream, how", [(True, "close"), (False, "reset")], ids=["stream", "non-stream"])
def test_client_leaving_during_a_long_prompt_stops_its_evaluation(edge, status, quiet, stream, how):
    prompt = filler_text(PROMPT_WORDS, uuid.uuid4().hex[:12])
    n_text = len(status.tokenize(prompt))
    assert 2000 < n_text < 4096 - PROMPT_MAX_TOKENS - 100, n_text
    body = {"model": MODEL, "prompt": prompt, "max_tokens": PROMPT_MAX_TOKENS, "temperature": 0, "stream": stream}
    departed_before = _departures(edge, "/v1/completions")
    base = status.get()
    sock = raw_post(edge.base_url, "/v1/completions", body)
    try:
        during = status.wait_for(
            lambda s: status.of_model(s).busy_slots == 1
            and s.prompt_tokens_evaluated >= base.prompt_tokens_evaluated + 48,
            BOUND, "the long prompt being evaluated",
        )
        assert during.tokens_generated == base.tokens_generated
        assert _no_answer_yet(sock)
    finally:
        left_at = time.monotonic()
        _leave(sock, how)
    final = _assert_work_stopped(status, edge, base, left_at,
                                 f"evaluating a {n_text}-token prompt ({'stream' if stream else 'non-stream'}, {how})")
    evaluated = final.prompt_tokens_evaluated - base.prompt_tokens_evaluated
    assert evaluated < n_text, f"the whole prompt was evaluated ({evaluated} tokens) for a departed client"
    assert final.tokens_generated == base.tokens_generated, "generation started for a departed client"
    assert _departures(edge, "/v1/completions") == departed_before + 1


# --- (c) generating, non-stream ---------------------------------------------------------------

def _leave_while_generating(edge, status, body: dict, how: str, state: str) -> None:
    """Sends ``body``, leaves (``how``) once the service generates its tokens but before any
    answer came, and checks its generation stopped."""
    departed_before = _departures(edge, "/v1/chat/completions")
    base = status.get()
    sock = raw_post(edge.base_url, "/v1/chat/completions", body)
    try:
        status.wait_for(lambda s: s.tokens_generated >= base.tokens_generated + 8, BOUND, "tokens being generated")
        assert _no_answer_yet(sock), "already answered: the test needs tokens before any answer"
    finally:
        left_at = time.monotonic()
        _leave(sock, how)
    final = _assert_work_stopped(status, edge, base, left_at, state)
    assert final.tokens_generated - base.tokens_generated < LONG_MAX_TOKENS
    assert _departures(edge, "/v1/chat/completions") == departed_before + 1


def test_non_stream_client_leaving_stops_its_generation(edge, status, quiet, bans):
    body = _chat("Write a very long essay about the sea.", max_tokens=LONG_MAX_TOKENS, logit_bias=bans)
    _leave_while_generating(edge, status, body, "close", "generating, non-stream (close)")


# --- (d) generating, streaming, before the first frame ----------------------------------------

def test_stream_client_leaving_before_its_first_frame_stops_its_generation(edge, status, quiet, textless):
    """The stream's tokens have no text (``textless``), so no frame is written before it leaves."""
    body = _chat("Say something.", max_tokens=LONG_MAX_TOKENS, logit_bias=textless, stream=True)
    _leave_while_generating(edge, status, body, "reset", "generating, stream before its first frame (reset)")


# --- the edge still serves, keep-alive included ------------------------------------------------

def test_keep_alive_connection_serves_after_departures(edge, status, quiet):
    ports = set()
    with httpx.Client(base_url=edge.base_url, timeout=httpx.Timeout(300.0, connect=10.0)) as http:
        for stream in (False, True, False):
            body = _chat("Hi", max_tokens=4, stream=stream)
            with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                raw = resp.read()
                assert resp.status_code == 200, raw[:300]
                if stream:
                    assert raw.endswith(b"data: [DONE]\n\n")
                ports.add(resp.extensions["network_stream"].get_extra_info("client_addr")[1])
            time.sleep(0.1)
    assert len(ports) == 1, f"the connection was not kept alive: {ports}"
