"""Hands model contexts (slots) to requests: a bounded FIFO queue and a slot policy that
keeps conversations.

A request first takes a place in the queue (refused at once when the queue is full), then
waits until a slot is free, its deadline passes or it is cancelled. Which free slot it gets
(:func:`choose_slot`), in this order:

1. **Its own conversation's slot**: one whose last request's prompt the new prompt starts with
   (the next turn of a chat, a regenerated answer, a completion prompt that grew), the one
   whose cache serves most of the prompt. Only the new tokens are evaluated.
2. **A slot with nothing worth keeping**: empty, or holding a conversation idle so long that
   its worth (below) is under one token. The one whose cache serves most of the prompt, then
   the least recently used. So a new conversation takes an empty slot rather than evicting
   someone's history for a shared system prompt (with prefix sharing on llama.cpp, the shared
   part is then copied from the slot that holds it, not evaluated).
3. **Otherwise the cheapest eviction**: least ``tokens to evaluate now + worth of the cached
   tokens lost``, where a slot's cached tokens past what the prompt shares are worth their
   count while their conversation is active, halving every :data:`IDLE_HALF_LIFE` seconds the
   slot stays unused. Ties go to the least recently used slot.

Why not the cheapest slot for each request alone (the longest shared prefix, as before): with
two conversations sharing a system prompt, each turn then evicted the other's history to save
the system prompt's evaluation, and every later turn paid for it again (issue 15). With more
conversations than slots, rule 3 evicts the conversation idle longest for its length.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, Protocol, Sequence, TypeVar

from inference_service.engine.model_context import common_prefix_length
from inference_service.engine.types import SlotState
from inference_service.errors import Cancelled, DeadlineExceeded, QueueFull


# A cached conversation loses half its worth for every this many seconds its slot is idle.
IDLE_HALF_LIFE = 60.0


class PrefixCache(Protocol):
    def reusable_prefix(self, prompt: Sequence[int]) -> int: ...

    @property
    def cached_length(self) -> int: ...


SlotT = TypeVar("SlotT", bound=PrefixCache)

_POLL_SECONDS = 0.05  # how often a waiter re-checks cancellation without a wake-up


@dataclass(eq=False)
class Ticket:
    prompt: Sequence[int]
    number: int


class SlotScheduler(Generic[SlotT]):
    def __init__(self, slots: Sequence[SlotT], max_waiting: int, *,
                 shared_prefix: Callable[[Sequence[int]], int] | None = None, min_copy: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        """``shared_prefix(prompt)``: the longest prefix of ``prompt`` any slot (busy or not) holds
        and could copy into another; None when slots cannot share (ctransformers). A copy is made
        only when it brings a slot at least ``min_copy`` tokens more than its own cache holds."""
        if not slots:
            raise ValueError("at least one slot is needed")
        self._slots = list(slots)
        self._free = list(range(len(slots)))
        self._shared_prefix = shared_prefix
        self._min_copy = min_copy
        self._clock = clock
        self._last_used = [float("-inf")] * len(slots)  # never used: the least recent
        self._last_prompt: list[Sequence[int]] = [()] * len(slots)
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

    def slot_states(self) -> list[SlotState]:
        """Each slot's index, whether a generation holds it, its cached tokens and idle seconds."""
        with self._lock:
            now = self._clock()
            free = set(self._free)
            return [
                SlotState(index=i, busy=i not in free, cached_tokens=slot.cached_length,
                          idle_seconds=(now - self._last_used[i]) if i in free and self._last_used[i] > float("-inf")
                          else 0.0)
                for i, slot in enumerate(self._slots)
            ]

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
                self._last_used[index] = self._clock()
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
                    index = choose_slot(
                        ticket.prompt,
                        [FreeSlot(i, self._slots[i], self._last_used[i], self._last_prompt[i]) for i in self._free],
                        self._clock(),
                        shared=self._shared_prefix(ticket.prompt) if self._shared_prefix else 0,
                        min_copy=self._min_copy,
                    )
                    self._last_prompt[index] = ticket.prompt
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

    def withdraw(self, ticket: Ticket) -> None:
        """Gives up a place that will never be leased (the request ended before its turn)."""
        with self._lock:
            self._remove(ticket)

    def wake(self) -> None:
        """Wakes waiters so a cancellation is seen at once rather than at the next poll."""
        with self._lock:
            self._lock.notify_all()


@dataclass(frozen=True)
class FreeSlot:
    """A free slot as the policy sees it."""

    index: int
    slot: PrefixCache
    last_used: float  # -inf when never used
    last_prompt: Sequence[int]  # the prompt of the last request it served (() when none)


def choose_slot(prompt: Sequence[int], free: Sequence[FreeSlot], now: float, shared: int = 0,
                half_life: float = IDLE_HALF_LIFE, min_copy: int = 1) -> int:
    """The index of the free slot to use for ``prompt``; see the module doc. ``shared``: the
    longest prefix of the prompt any slot holds and could copy into another (0 without sharing),
    copied only where that brings at least ``min_copy`` tokens more than the slot's own."""
    best_own: dict[int, int] = {}

    def own(entry: FreeSlot) -> int:
        if entry.index not in best_own:
            best_own[entry.index] = max(entry.slot.reusable_prefix(prompt), 0)
        return best_own[entry.index]

    continuing = [e for e in free if e.last_prompt and len(e.last_prompt) <= len(prompt)
                  and common_prefix_length(e.last_prompt, prompt) == len(e.last_prompt)]
    if continuing:
        return max(continuing, key=lambda e: (own(e), -e.last_used, -e.index)).index

    def worth(entry: FreeSlot) -> float:
        lost = max(0, entry.slot.cached_length - own(entry))
        idle = now - entry.last_used
        if lost == 0 or idle == float("inf"):
            return 0.0
        return lost * 0.5 ** (max(0.0, idle) / half_life)

    def served(entry: FreeSlot) -> int:  # prompt tokens the slot will not evaluate
        return shared if shared - own(entry) >= min_copy else own(entry)

    worthless = [e for e in free if worth(e) < 1.0]
    if worthless:
        return max(worthless, key=lambda e: (served(e), -e.last_used, -e.index)).index
    return min(free, key=lambda e: (len(prompt) - served(e) + worth(e), e.last_used, e.index)).index
