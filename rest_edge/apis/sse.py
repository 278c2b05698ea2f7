"""Server-sent events of the adapters' streams: named events, an API's own error event, and
the cancellation of the call.

OpenAI's Responses and Anthropic's Messages name each event (``event: <type>`` before its
``data:`` line) and end without ``[DONE]``. :func:`event_stream` runs a :class:`StreamRendering`
over the events of a generation whose first event the resource already took (so that errors
known before the first token got their real HTTP status); its ``finally`` cancels the gRPC
call, and the response iterable (``streaming.CancellingStream``) cancels it even if iteration
never began, as for the chat completions stream.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol

from rest_edge import wire
from rest_edge.errors import RequestError, internal_error
from rest_edge.responses import Event, Finish
from rest_edge.streaming import Cancellable, CancellingStream, ClientWatch

log = logging.getLogger("rest_edge")


def named_event(name: str, obj: Any) -> bytes:
    """One SSE frame: ``event: <name>\\ndata: <compact json>\\n\\n``."""
    return b"event: " + name.encode("ascii") + b"\n" + wire.sse(obj)


class StreamRendering(Protocol):
    """An API's stream of one response."""

    id: str

    def opening(self) -> Iterable[bytes]:
        """Frames before the first event's (the response's start)."""

    def frames(self, event: Event) -> Iterable[bytes]:
        """The frames of one event; a ``Finish`` gets the closing frames too."""

    def error_frames(self, err: RequestError) -> Iterable[bytes]:
        """How the API tells a client its stream failed after it started."""


def event_stream(rendering: StreamRendering, first: Event, rest: Iterator[Event], call: Cancellable, *,
                 watch: Optional[ClientWatch] = None,
                 on_error: Optional[Callable[[RequestError], None]] = None) -> CancellingStream:
    departed = (lambda: watch.gone) if watch is not None else (lambda: False)
    return CancellingStream(_frames(rendering, first, rest, call, on_error, departed), call, watch)


def _frames(rendering: StreamRendering, first: Event, rest: Iterator[Event], call: Cancellable,
            on_error: Optional[Callable[[RequestError], None]], departed: Callable[[], bool]) -> Iterator[bytes]:
    try:
        yield from rendering.opening()
        for event in itertools.chain((first,), rest):
            yield from rendering.frames(event)
            if isinstance(event, Finish):
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
