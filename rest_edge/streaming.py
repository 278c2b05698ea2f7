"""The SSE stream of a generation: framing, the end of the stream, and cancellation.

``sse_stream`` is the response iterator handed to the WSGI server; a renderer
(``rest_edge.responses``) gives the chunks of each event. Its ``finally`` cancels the gRPC
call, so a client that disconnects (the server then closes the iterator: ``GeneratorExit`` at a
``yield``) stops its generation; nothing is ever yielded after ``GeneratorExit``.

A client that leaves while nothing is being written (before the first token, between slow
tokens) is noticed by the disconnect watcher (``rest_edge.disconnect``), which cancels the
call; the stream then ends quietly. Closing the response iterable ends that watch, before
the server reuses the connection.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterator, Optional, Protocol

from rest_edge import wire
from rest_edge.errors import RequestError, internal_error
from rest_edge.responses import Event, Finish, Renderer

log = logging.getLogger("rest_edge")


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


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


def sse_stream(renderer: Renderer, first: Event, rest: Iterator[Event], call: Cancellable,
               *, watch: Optional[ClientWatch] = None, **kwargs: Any) -> CancellingStream:
    """The response iterable of a stream: ``sse_frames`` wrapped in a ``CancellingStream``.

    ``watch`` (from ``rest_edge.disconnect``) tells whether the client left; it is closed
    with the iterable.
    """
    if watch is not None:
        kwargs.setdefault("departed", lambda: watch.gone)
    return CancellingStream(sse_frames(renderer, first, rest, call, **kwargs), call, watch)


def sse_frames(
    renderer: Renderer,
    first: Event,
    rest: Iterator[Event],
    call: Cancellable,
    *,
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
        for event in itertools.chain((first,), rest):
            for chunk in renderer.chunks(event):
                yield wire.sse(chunk)
            if isinstance(event, Finish):  # always comes: events() raises rather than end without it
                yield wire.DONE
                return
    except RequestError as err:
        if departed():
            log.info("stream %s: the client went away; its generation was cancelled", renderer.id)
        else:
            log.warning("stream %s failed after it started: %d %s", renderer.id, err.status, err.message)
            if on_error is not None:
                on_error(err)
        yield wire.sse(err.body())
        yield wire.DONE
    except Exception:  # not BaseException: GeneratorExit must pass through untouched
        log.exception("stream %s failed after it started", renderer.id)
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
