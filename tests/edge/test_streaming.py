"""Cancellation: closing the response iterator (what the WSGI server does when the client goes
away) cancels the gRPC call, and nothing is yielded after that."""

from __future__ import annotations

import falcon.testing
import pytest

from rest_edge import responses, streaming
from rest_edge.app import create_app
from tests.edge.fakes import FakeCall, FakeClient, last, piece


def endless():
    i = 0
    while True:
        yield piece(f"t{i}")
        i += 1


def start(call, clock=None, **kwargs):
    events = responses.events(call)
    first = next(events)
    render = responses.ChatRenderer("chatcmpl-1", "m", **({"clock": clock} if clock else {}))
    return streaming.sse_stream(render, first, events, call, **kwargs)


def test_close_mid_stream_cancels_the_call():
    call = FakeCall(endless())
    stream = start(call)
    assert next(stream).startswith(b"data: ")
    next(stream)
    assert call.cancelled == 0
    stream.close()  # GeneratorExit at the yield
    assert call.cancelled >= 1
    with pytest.raises(StopIteration):
        next(stream)


def test_close_before_the_first_frame_cancels_the_call():
    call = FakeCall(endless())
    stream = start(call)
    stream.close()  # an unstarted generator's finally would not run; the wrapper cancels
    assert call.cancelled >= 1


def test_close_during_the_error_frame_does_not_yield_again():
    call = FakeCall([piece("a"), RuntimeError("x")])
    stream = start(call)
    next(stream)  # "a"
    assert b'"error"' in next(stream)  # the error frame
    stream.close()  # client gone while the error frame was written
    assert call.cancelled >= 1


def test_normal_end_cancels_harmlessly():
    call = FakeCall([piece("a"), last()])
    frames = list(start(call))
    assert frames[-1] == b"data: [DONE]\n\n"
    assert call.cancelled == 1


def test_throwing_generator_exit_is_not_swallowed():
    call = FakeCall(endless())
    events = responses.events(call)
    stream = streaming.sse_frames(responses.ChatRenderer("chatcmpl-1", "m"), next(events), events, call)
    next(stream)
    with pytest.raises(GeneratorExit):
        stream.throw(GeneratorExit)
    assert call.cancelled == 1


def test_created_ticks_per_chunk():
    ticks = iter([100, 101, 102])
    call = FakeCall([piece("a"), piece("b"), last()])
    frames = list(start(call, clock=lambda: next(ticks)))
    assert [b'"created":100' in frames[0], b'"created":101' in frames[1], b'"created":102' in frames[2]] == [True] * 3


def test_wsgi_close_cancels():
    """Through the WSGI app: take one frame, then close the iterable as gunicorn does."""
    fake = FakeClient(lambda req: endless())
    app = create_app(fake)
    env = falcon.testing.create_environ(
        method="POST", path="/v1/chat/completions",
        body='{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}',
        headers={"Content-Type": "application/json"},
    )
    statuses = []
    iterable = app(env, lambda status, headers, exc_info=None: statuses.append((status, headers)))
    iterator = iter(iterable)
    first = next(iterator)
    assert statuses[0][0] == "200 OK"
    assert first.startswith(b'data: {"id":"chatcmpl-')
    next(iterator)
    assert fake.calls[0].cancelled == 0
    iterable.close()
    assert fake.calls[0].cancelled >= 1


def test_wsgi_close_before_iterating_still_cancels():
    """A client gone before the first body write: the server closes an unstarted iterable."""
    fake = FakeClient(lambda req: endless())
    app = create_app(fake)
    env = falcon.testing.create_environ(
        method="POST", path="/v1/completions", body='{"model":"m","prompt":"x","stream":true}')
    iterable = app(env, lambda status, headers, exc_info=None: None)
    iterable.close()
    assert fake.calls[0].cancelled >= 1
