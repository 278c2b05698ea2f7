"""Run a generator on its own thread and read its items from another.

Generation must not depend on its consumer to make progress or to stop: gRPC stops
pulling from a cancelled handler's generator and never closes it. So the work runs on a
producer thread (driven by a cancel event) and the consumer only reads a queue.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

_DONE = object()


def run_on_thread(
    produce: Callable[[], Iterator[T]],
    *,
    name: str,
    on_close: Callable[[], None] | None = None,
) -> Iterator[T]:
    """Starts ``produce()`` on a daemon thread now and returns an iterator over its items.

    An exception in the producer is raised in the consumer. ``on_close`` runs when the
    consumer finishes or closes the iterator (e.g. to set a cancel event).
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
