"""Run a generator on its own thread and read its items from another.

Generation must not depend on its consumer to make progress or to stop: gRPC stops
pulling from a cancelled handler's generator and never closes it. So the work runs on a
producer thread (driven by a cancel event) and the consumer only reads a queue.

With a :class:`Pacing`, the consumer hands items out at most once per interval, each time
everything produced meanwhile joined (an item that ends the work goes out at once). Every
item handed out wakes the consumer's side of the process (a gRPC handler thread, its
completion poller, the edge, the client) while the model computes the next step, and on a
machine whose cores all run the model each wake-up stalls that step.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Sequence, TypeVar

T = TypeVar("T")

_DONE = object()
_NOTHING = object()  # the interval ended with nothing new


@dataclass(frozen=True)
class Pacing(Generic[T]):
    """Hand items out at most every ``interval`` seconds: ``join`` turns those that came
    meanwhile (in order) into what goes out; an item for which ``is_last`` holds goes out at once."""

    interval: float
    join: Callable[[Sequence[T]], Sequence[T]]
    is_last: Callable[[T], bool]


def run_on_thread(
    produce: Callable[[], Iterator[T]],
    *,
    name: str,
    on_close: Callable[[], None] | None = None,
    pacing: Pacing[T] | None = None,
) -> Iterator[T]:
    """Starts ``produce()`` on a daemon thread now and returns an iterator over its items.

    An exception in the producer is raised in the consumer (after the items produced before
    it). ``on_close`` runs when the consumer finishes or closes the iterator (e.g. to set a
    cancel event).
    """
    results: queue.SimpleQueue = queue.SimpleQueue()

    def producer() -> None:
        try:
            for item in produce():
                results.put(item)
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            results.put(exc)
        finally:
            results.put(_DONE)

    threading.Thread(target=producer, name=name, daemon=True).start()
    if pacing is not None and pacing.interval > 0:
        return _consume_paced(results, on_close, pacing)
    return _consume(results, on_close)


def _consume(results: queue.SimpleQueue, on_close: Callable[[], None] | None) -> Iterator[T]:
    try:
        while True:
            item = results.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if on_close is not None:
            on_close()


def _consume_paced(results: queue.SimpleQueue, on_close: Callable[[], None] | None, pacing: Pacing[T]) -> Iterator[T]:
    held: list[T] = []
    due = 0.0  # the first item goes out as soon as it comes
    try:
        while True:
            try:
                item = results.get(timeout=max(0.0, due - time.monotonic()) if held else None)
            except queue.Empty:  # the interval is over: out with what came
                item = _NOTHING
            if item is _DONE or isinstance(item, BaseException):
                yield from pacing.join(held)
                if item is _DONE:
                    return
                raise item
            if item is not _NOTHING:
                held.append(item)
            if held and (item is _NOTHING or pacing.is_last(item) or time.monotonic() >= due):
                out, held = pacing.join(held), []
                due = time.monotonic() + pacing.interval
                yield from out
    finally:
        if on_close is not None:
            on_close()
