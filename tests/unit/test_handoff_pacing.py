"""Paced hand-off (inference_service.engine.handoff): the first item at once, then what came
during each interval as one, an answer's end at once, and a producer's error after its items."""

from __future__ import annotations

import threading
import time

import pytest

from inference_service.engine.handoff import Pacing, run_on_thread
from inference_service.engine.types import GenerationChunk, Usage, joined_chunks

INTERVAL = 5.0  # long enough that the joins below never depend on the machine's speed


def _pacing(interval: float = INTERVAL) -> Pacing[GenerationChunk]:
    return Pacing(interval, joined_chunks, lambda chunk: chunk.finish_reason is not None)


def _piece(text: str, token_id: int, index: int = 0) -> GenerationChunk:
    return GenerationChunk(text=text, token_ids=(token_id,), index=index)


FINAL = GenerationChunk(text="!", token_ids=(9,), finish_reason="stop", usage=Usage(3, 4))


def test_joined_chunks_joins_runs_of_one_running_answer():
    chunks = [_piece("a", 1), _piece("b", 2), _piece("x", 7, index=1), _piece("c", 3), FINAL, _piece("y", 8, index=1)]
    assert joined_chunks(chunks) == [
        _piece("a", 1).followed_by(_piece("b", 2)),
        _piece("x", 7, index=1),
        GenerationChunk(text="c!", token_ids=(3, 9), finish_reason="stop", usage=Usage(3, 4)),
        _piece("y", 8, index=1),
    ]
    assert joined_chunks(chunks)[0] == GenerationChunk(text="ab", token_ids=(1, 2))


def test_the_first_piece_at_once_then_an_interval_s_pieces_as_one_and_the_end_at_once():
    more, end = threading.Event(), threading.Event()

    def produce():
        yield _piece("a", 1)
        more.wait()
        yield from (_piece("b", 2), _piece("c", 3), _piece("d", 4))
        end.wait()
        yield FINAL

    pieces = run_on_thread(produce, name="paced", pacing=_pacing())
    assert next(pieces) == _piece("a", 1)
    more.set()
    started = time.monotonic()
    assert next(pieces) == GenerationChunk(text="bcd", token_ids=(2, 3, 4))
    assert time.monotonic() - started >= INTERVAL * 0.9  # held for the interval, not sent one by one
    end.set()
    started = time.monotonic()
    assert next(pieces) == FINAL
    assert time.monotonic() - started < INTERVAL / 2  # the end does not wait for the interval
    assert list(pieces) == []


def test_a_piece_after_a_quiet_interval_goes_at_once():
    second = threading.Event()

    def produce():
        yield _piece("a", 1)
        second.wait()
        yield _piece("b", 2)
        yield FINAL

    pieces = run_on_thread(produce, name="paced", pacing=_pacing(0.05))
    assert next(pieces) == _piece("a", 1)
    time.sleep(0.2)  # longer than the interval: nothing is due any more
    second.set()
    assert list(pieces) == [_piece("b", 2), FINAL]


def test_the_pieces_before_a_producer_s_error_come_before_it():
    def produce():
        yield _piece("a", 1)
        yield _piece("b", 2)
        yield _piece("c", 3)
        raise RuntimeError("the model failed")

    pieces = run_on_thread(produce, name="paced", pacing=_pacing())
    got = []
    with pytest.raises(RuntimeError, match="the model failed"):
        for piece in pieces:
            got.append(piece)
    assert "".join(p.text for p in got) == "abc" and got[0] == _piece("a", 1)


def test_closing_a_paced_stream_runs_on_close():
    closed = threading.Event()

    def produce():
        while not closed.is_set():
            yield _piece("a", 1)
            time.sleep(0.01)

    pieces = run_on_thread(produce, name="paced", on_close=closed.set, pacing=_pacing(0.05))
    next(pieces)
    pieces.close()
    assert closed.is_set()


def test_no_interval_hands_out_every_piece():
    def produce():
        yield from (_piece("a", 1), _piece("b", 2), FINAL)

    assert list(run_on_thread(produce, name="unpaced", pacing=_pacing(0.0))) == [_piece("a", 1), _piece("b", 2), FINAL]
