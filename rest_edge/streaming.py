"""Turning a generation's events into an SSE stream or a whole response body.

``Shape`` binds the builders of one endpoint (completions or chat); ``sse_stream`` is the
response iterator handed to the WSGI server. Its ``finally`` cancels the gRPC call, so a
client that disconnects (the server then closes the iterator: ``GeneratorExit`` at a
``yield``) stops its generation; nothing is ever yielded after ``GeneratorExit``.

A client that leaves while nothing is being written (before the first token, between slow
tokens) is noticed by the disconnect watcher (``rest_edge.disconnect``), which cancels the
call; the stream then ends quietly. Closing the response iterable ends that watch, before
the server reuses the connection.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol

from rest_edge import translate, wire
from rest_edge.errors import RequestError, internal_error

log = logging.getLogger("rest_edge")


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


@dataclass(frozen=True)
class Shape:
    id_prefix: str
    chunk: Callable[..., dict]
    usage_chunk: Callable[..., dict]
    response: Callable[..., dict]
    chat: bool

    def logprobs(self, entries: tuple, offset: int) -> tuple[dict, int]:
        if self.chat:
            return translate.chat_logprobs(entries), offset
        return translate.completion_logprobs(entries, offset)


COMPLETION = Shape("cmpl", wire.completion_chunk, wire.completion_usage_chunk, wire.completion_response, chat=False)
CHAT = Shape("chatcmpl", wire.chat_chunk, wire.chat_usage_chunk, wire.chat_response, chat=True)


class Closeable(Protocol):
    def close(self) -> Any: ...


class CancellingStream:
    """The WSGI response iterable: ``close()`` cancels the call even if iteration never began,
    and ends the watch of the client (``watch``), if any.

    (Closing a generator that has not started does not run its ``finally``.)
    """

    def __init__(self, frames: Iterator[bytes], call: Cancellable, watch: Optional[Closeable] = None):
        self._frames = frames
        self._call = call
        self._watch = watch

    def __iter__(self) -> "CancellingStream":
        return self

    def __next__(self) -> bytes:
        return next(self._frames)

    def close(self) -> None:
        try:
            self._frames.close()
        finally:
            try:
                self._call.cancel()
            finally:
                if self._watch is not None:
                    self._watch.close()


class ClientWatch(Closeable, Protocol):
    @property
    def gone(self) -> bool: ...


def sse_stream(shape: Shape, first: translate.Event, rest: Iterator[translate.Event], call: Cancellable,
               *, watch: Optional[ClientWatch] = None, **kwargs: Any) -> CancellingStream:
    """The response iterable of a stream: ``sse_frames`` wrapped in a ``CancellingStream``.

    ``watch`` (from ``rest_edge.disconnect``) tells whether the client left; it is closed
    with the iterable.
    """
    if watch is not None:
        kwargs.setdefault("departed", lambda: watch.gone)
    return CancellingStream(sse_frames(shape, first, rest, call, **kwargs), call, watch)


def sse_frames(
    shape: Shape,
    first: translate.Event,
    rest: Iterator[translate.Event],
    call: Cancellable,
    *,
    id: str,  # noqa: A002
    model: str,
    include_usage: bool = False,
    logprobs: bool = False,
    clock: Callable[[], float] = time.time,
    on_error: Optional[Callable[[RequestError], None]] = None,
    departed: Callable[[], bool] = lambda: False,
) -> Iterator[bytes]:
    """SSE frames for a generation whose first event was already taken (by the responder).

    An error after the stream started becomes one ``data: {"error":…}`` frame, then
    ``data: [DONE]``. When ``departed()`` says the client left (its call was cancelled for
    that), the end is logged at info level and not counted as a stream error; the frames are
    still offered (a write to a departed client fails quietly in the server).
    """
    try:
        offset = 0
        for event in itertools.chain((first,), rest):
            if isinstance(event, translate.Text):
                lp: Any = wire.ABSENT
                if logprobs:
                    lp, offset = shape.logprobs(event.logprobs, offset)
                yield wire.sse(shape.chunk(id, int(clock()), model, event.text, None, lp))
                continue
            lp = wire.ABSENT
            if logprobs:
                lp = shape.logprobs(event.logprobs, offset)[0] if event.logprobs else None
            yield wire.sse(shape.chunk(id, int(clock()), model, "", event.finish_reason, lp))
            if include_usage:
                yield wire.sse(shape.usage_chunk(id, int(clock()), model, event.usage))
            yield wire.DONE
            return
        raise RequestError(500, "The generation ended without finishing.")  # events() never does this
    except RequestError as err:
        if departed():
            log.info("stream %s: the client went away; its generation was cancelled", id)
        else:
            log.warning("stream %s failed after it started: %d %s", id, err.status, err.message)
            if on_error is not None:
                on_error(err)
        yield wire.sse(err.body())
        yield wire.DONE
    except Exception:  # not BaseException: GeneratorExit must pass through untouched
        log.exception("stream %s failed after it started", id)
        err = internal_error()
        if on_error is not None:
            on_error(err)
        yield wire.sse(err.body())
        yield wire.DONE
    finally:
        call.cancel()
        close = getattr(rest, "close", None)
        if close is not None:
            close()


def collect(
    shape: Shape,
    events: Iterator[translate.Event],
    *,
    id: str,  # noqa: A002
    model: str,
    logprobs: bool = False,
    clock: Callable[[], float] = time.time,
) -> dict:
    """The whole (non-stream) response body of a generation."""
    texts: list[str] = []
    entries: list = []
    for event in events:
        entries.extend(event.logprobs)
        if isinstance(event, translate.Text):
            texts.append(event.text)
            continue
        lp: Any = shape.logprobs(tuple(entries), 0)[0] if logprobs else wire.ABSENT
        return shape.response(id, int(clock()), model, "".join(texts), event.finish_reason, event.usage, lp)
    raise RequestError(500, "The generation ended without finishing.")
