"""The stream of a generation: its frames, the end of the stream, and cancellation.

``rendered_stream`` is the response iterator handed to the WSGI server; a rendering gives the
frames of each event (``sse_stream``: the chat and completions renderers of
``rest_edge.responses`` as ``data:`` frames; the adapters' own, named events). Its ``finally``
cancels the gRPC call, so a client that disconnects (the server then closes the iterator:
``GeneratorExit`` at a ``yield``) stops its generation; nothing is ever yielded after
``GeneratorExit``.

A client that leaves while nothing is being written (before the first token, between slow
tokens) is noticed by the disconnect watcher (``rest_edge.disconnect``), which cancels the
call; the stream then ends quietly. Closing the response iterable ends that watch, before
the server reuses the connection.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

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


class StreamRendering(Protocol):
    """An API's stream of one response."""

    id: str

    def opening(self) -> Iterable[bytes]:
        """Frames before the first event's (the response's start)."""

    def frames(self, event: Event) -> Iterable[bytes]:
        """The frames of one event; a ``Finish`` gets the closing frames too."""

    def error_frames(self, err: RequestError) -> Iterable[bytes]:
        """How the API tells a client its stream failed after it started."""


def rendered_stream(rendering: StreamRendering, first: Event, rest: Iterator[Event], call: Cancellable, *,
                    watch: Optional[ClientWatch] = None,
                    on_error: Optional[Callable[[RequestError], None]] = None) -> CancellingStream:
    """The response iterable of a stream: :func:`rendered_frames` in a ``CancellingStream``.

    ``watch`` (from ``rest_edge.disconnect``) tells whether the client left; it is closed
    with the iterable.
    """
    departed = (lambda: watch.gone) if watch is not None else (lambda: False)
    return CancellingStream(rendered_frames(rendering, first, rest, call, on_error=on_error, departed=departed),
                            call, watch)


def rendered_frames(rendering: StreamRendering, first: Event, rest: Iterator[Event], call: Cancellable, *,
                    on_error: Optional[Callable[[RequestError], None]] = None,
                    departed: Callable[[], bool] = lambda: False) -> Iterator[bytes]:
    """The frames of a generation whose first event was already taken (by the resource).

    An error after the stream started becomes the rendering's error frames. When
    ``departed()`` says the client left (its call was cancelled for that), the end is logged
    at info level and not counted as a stream error; the frames are still offered (a write to
    a departed client fails quietly in the server).
    """
    try:
        yield from rendering.opening()
        for event in itertools.chain((first,), rest):
            yield from rendering.frames(event)
            if isinstance(event, Finish):  # always comes: events() raises rather than end without it
                return
    except RequestError as err:
        if departed():
            log.info("stream %s: the client went away; its generation was cancelled", rendering.id)
        else:
            log.warning("stream %s failed after it started: %d %s", rendering.id, err.status, err.message)
            if on_error is not None:
                on_error(err)
        yield from rendering.error_frames(err)
    except Exception:  # not BaseException: GeneratorExit must pass through untouched
        log.exception("stream %s failed after it started", rendering.id)
        err = internal_error()
        if on_error is not None:
            on_error(err)
        yield from rendering.error_frames(err)
    finally:
        call.cancel()
        close = getattr(rest, "close", None)
        if close is not None:
            close()


class _DataFrames:
    """A renderer's chunks as the reference's SSE: ``data: <chunk>`` each, ``data: [DONE]``
    after the finish; an error after the start is one ``data: {"error":…}`` frame, then
    ``data: [DONE]``."""

    def __init__(self, renderer: Renderer):
        self._renderer = renderer
        self.id = renderer.id

    def opening(self) -> Iterable[bytes]:
        return ()

    def frames(self, event: Event) -> Iterator[bytes]:
        for chunk in self._renderer.chunks(event):
            yield wire.sse(chunk)
        if isinstance(event, Finish):
            yield wire.DONE

    def error_frames(self, err: RequestError) -> Iterable[bytes]:
        return (wire.sse(err.body()), wire.DONE)


def sse_stream(renderer: Renderer, first: Event, rest: Iterator[Event], call: Cancellable, *,
               watch: Optional[ClientWatch] = None,
               on_error: Optional[Callable[[RequestError], None]] = None) -> CancellingStream:
    """The response iterable of a completions or chat stream (see :func:`rendered_stream`)."""
    return rendered_stream(_DataFrames(renderer), first, rest, call, watch=watch, on_error=on_error)


def sse_frames(renderer: Renderer, first: Event, rest: Iterator[Event], call: Cancellable, *,
               on_error: Optional[Callable[[RequestError], None]] = None,
               departed: Callable[[], bool] = lambda: False) -> Iterator[bytes]:
    """The SSE frames of a completions or chat stream (see :func:`rendered_frames`)."""
    return rendered_frames(_DataFrames(renderer), first, rest, call, on_error=on_error, departed=departed)
