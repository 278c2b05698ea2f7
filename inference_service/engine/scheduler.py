"""Hands model contexts (slots) to requests: a bounded FIFO queue and prefix-aware choice.

A request first takes a place in the queue (refused at once when the queue is full),
then waits until a slot is free, its deadline passes or it is cancelled. Among free
slots it gets the one whose cached tokens share the longest prefix with its prompt, so
the next turn of a chat only evaluates the new tokens.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, Iterator, Protocol, Sequence, TypeVar

from inference_service.errors import Cancelled, DeadlineExceeded, QueueFull


class PrefixCache(Protocol):
    def reusable_prefix(self, prompt: Sequence[int]) -> int: ...


SlotT = TypeVar("SlotT", bound=PrefixCache)

_POLL_SECONDS = 0.05  # how often a waiter re-checks cancellation without a wake-up


@dataclass(eq=False)
class Ticket:
    prompt: Sequence[int]
    number: int


class SlotScheduler(Generic[SlotT]):
    def __init__(self, slots: Sequence[SlotT], max_waiting: int):
        if not slots:
            raise ValueError("at least one slot is needed")
        self._slots = list(slots)
        self._free = list(range(len(slots)))
        self._waiting: deque[Ticket] = deque()
        self._max_waiting = max_waiting
        self._lock = threading.Condition()
        self._numbers = itertools.count()

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._slots) - len(self._free)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def load(self) -> tuple[int, int, int, int]:
        """(slots, busy slots, waiting, max waiting), read together."""
        with self._lock:
            return len(self._slots), len(self._slots) - len(self._free), len(self._waiting), self._max_waiting

    def busy_now(self) -> int:
        """Unlocked read for hot paths (thread counts); a stale value is harmless."""
        return len(self._slots) - len(self._free)

    def enqueue(self, prompt: Sequence[int]) -> Ticket:
        """Takes a place in the queue, or raises QueueFull when it would exceed the cap.

        Requests that free slots will take at once do not count against the cap, even
        before their threads have taken the slots.
        """
        with self._lock:
            queued_beyond_free = len(self._waiting) - len(self._free)
            if queued_beyond_free >= self._max_waiting:
                raise QueueFull(
                    f"{queued_beyond_free} requests are already waiting for a model slot "
                    f"(limit {self._max_waiting}); retry later"
                )
            ticket = Ticket(prompt=prompt, number=next(self._numbers))
            self._waiting.append(ticket)
            return ticket

    def _remove(self, ticket: Ticket) -> None:
        try:
            self._waiting.remove(ticket)
        except ValueError:
            pass
        self._lock.notify_all()

    @contextmanager
    def lease(
        self,
        ticket: Ticket,
        *,
        cancelled: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Iterator[SlotT]:
        """Waits for a slot in FIFO order and holds it for the ``with`` block."""
        index = self._acquire(ticket, cancelled, deadline)
        try:
            yield self._slots[index]
        finally:
            with self._lock:
                self._free.append(index)
                self._lock.notify_all()

    def _acquire(self, ticket: Ticket, cancelled: threading.Event | None, deadline: float | None) -> int:
        with self._lock:
            while True:
                if cancelled is not None and cancelled.is_set():
                    self._remove(ticket)
                    raise Cancelled("cancelled while waiting for a model slot")
                # FIFO: the first len(free) waiters may start.
                position = self._waiting.index(ticket)
                if position < len(self._free):
                    self._waiting.remove(ticket)
                    index = max(self._free, key=lambda i: self._slots[i].reusable_prefix(ticket.prompt))
                    self._free.remove(index)
                    return index
                timeout = _POLL_SECONDS
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._remove(ticket)
                        raise DeadlineExceeded("the deadline passed while waiting for a model slot")
                    timeout = min(timeout, remaining)
                self._lock.wait(timeout)

    def wake(self) -> None:
        """Wakes waiters so a cancellation is seen at once rather than at the next poll."""
        with self._lock:
            self._lock.notify_all()
