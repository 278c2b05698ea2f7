"""SlotScheduler with fake slots: prefix choice, FIFO, queue cap, cancellation, deadlines.

No model, no timing assertions: threads are joined with generous safety timeouts only.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import pytest

from inference_service.engine.model_context import common_prefix_length
from inference_service.engine.scheduler import FreeSlot, SlotScheduler, choose_slot
from inference_service.errors import Cancelled, DeadlineExceeded, QueueFull
from tests.helpers import eventually

SAFETY = 30  # seconds; only ever a bound on a hang, never a measured limit


class FakeSlot:
    def __init__(self, name: str, cached: Sequence[int] = ()):
        self.name = name
        self.cached = list(cached)

    def reusable_prefix(self, prompt: Sequence[int]) -> int:
        return common_prefix_length(self.cached, prompt)

    @property
    def cached_length(self) -> int:
        return len(self.cached)

    def __repr__(self) -> str:
        return f"FakeSlot({self.name})"


def hold(scheduler: SlotScheduler, prompt: Sequence[int] = (0,)):
    """Enqueues and leases at once; returns (slot, context manager) so the test releases it."""
    ticket = scheduler.enqueue(prompt)
    lease = scheduler.lease(ticket)
    slot = lease.__enter__()
    return slot, lease


def release(lease) -> None:
    lease.__exit__(None, None, None)


class Waiter(threading.Thread):
    """Leases a ticket in a thread and records what happened."""

    def __init__(self, scheduler, ticket, *, cancelled=None, deadline=None, order=None, label=None, gate=None):
        super().__init__(daemon=True)
        self.scheduler, self.ticket = scheduler, ticket
        self.cancelled, self.deadline = cancelled, deadline
        self.order, self.label, self.gate = order, label, gate
        self.slot = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.scheduler.lease(self.ticket, cancelled=self.cancelled, deadline=self.deadline) as slot:
                self.slot = slot
                if self.order is not None:
                    self.order.append(self.label)
                if self.gate is not None:
                    self.gate.wait(SAFETY)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            self.error = exc


def finish(thread: threading.Thread) -> None:
    thread.join(SAFETY)
    assert not thread.is_alive(), "thread still blocked"


# --- prefix choice -------------------------------------------------------------


def test_free_slot_with_longest_shared_prefix_is_chosen():
    slots = [FakeSlot("a", [1, 2, 3]), FakeSlot("b", [1, 2, 3, 4, 5]), FakeSlot("c", [9, 9])]
    scheduler = SlotScheduler(slots, max_waiting=4)
    with scheduler.lease(scheduler.enqueue([1, 2, 3, 4, 5, 6])) as slot:
        assert slot is slots[1]
    with scheduler.lease(scheduler.enqueue([9, 9, 1])) as slot:
        assert slot is slots[2]
    with scheduler.lease(scheduler.enqueue([1, 2, 3, 7])) as slot:
        assert slot is slots[0] or slot is slots[1]  # both share 3 tokens
        assert slot.reusable_prefix([1, 2, 3, 7]) == 3


def test_prefix_choice_only_among_free_slots():
    slots = [FakeSlot("a", [1, 2]), FakeSlot("b", [1, 2, 3, 4])]
    scheduler = SlotScheduler(slots, max_waiting=4)
    held, lease = hold(scheduler, [1, 2, 3, 4, 5])
    assert held is slots[1]
    with scheduler.lease(scheduler.enqueue([1, 2, 3, 4, 5])) as slot:
        assert slot is slots[0]  # the better slot is busy: the free one is used, not waited for
    release(lease)
    assert scheduler.busy == 0


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def two_slots(**kwargs) -> tuple[Clock, list[FakeSlot], SlotScheduler]:
    clock = Clock()
    slots = [FakeSlot("a"), FakeSlot("b")]
    return clock, slots, SlotScheduler(slots, max_waiting=4, clock=clock, **kwargs)


def serve(scheduler: SlotScheduler, prompt: Sequence[int]) -> FakeSlot:
    """One request: lease a slot, 'evaluate' the prompt into it (what the engine does), release."""
    with scheduler.lease(scheduler.enqueue(prompt)) as slot:
        slot.cached = list(prompt)
        return slot


SYSTEM = list(range(100, 116))  # a 16-token system prompt every conversation starts with


def conversation(tag: int, length: int) -> list[int]:
    return SYSTEM + [tag * 10_000 + i for i in range(length)]


def test_a_shared_system_prompt_does_not_beat_an_empty_slot():
    """The bug of issue 15: two conversations sharing a system prompt evicted each other."""
    clock, slots, scheduler = two_slots()
    a, b = conversation(1, 650), conversation(2, 650)
    home_a = serve(scheduler, a)
    clock.now += 1
    home_b = serve(scheduler, b)
    assert home_b is not home_a
    for turn in range(3):  # turns taken in alternation, each history growing
        clock.now += 1
        a = a + [1_000 + turn] * 20
        assert serve(scheduler, a) is home_a
        clock.now += 1
        b = b + [2_000 + turn] * 20
        assert serve(scheduler, b) is home_b


def test_a_conversation_returns_to_its_slot_even_when_another_is_empty():
    clock = Clock()
    slots = [FakeSlot("a"), FakeSlot("b"), FakeSlot("c")]
    scheduler = SlotScheduler(slots, max_waiting=4, clock=clock)
    a = conversation(1, 300)
    home = serve(scheduler, a)
    clock.now += 5
    assert serve(scheduler, a + [7] * 30) is home


def test_with_more_conversations_than_slots_the_least_recently_used_is_evicted():
    clock, slots, scheduler = two_slots()
    first = serve(scheduler, conversation(1, 400))
    clock.now += 1
    second = serve(scheduler, conversation(2, 400))
    clock.now += 1
    third = serve(scheduler, conversation(3, 400))  # equal lengths: the older conversation goes
    assert third is first
    clock.now += 1
    assert serve(scheduler, conversation(2, 400) + [5]) is second


def test_a_long_idle_conversation_is_worth_less_than_a_recent_one():
    """Eviction weighs what it loses: a long history idle for many half-lives goes before a
    shorter one that is in use."""
    clock, slots, scheduler = two_slots()
    old_long = serve(scheduler, conversation(1, 2000))
    clock.now += 1
    recent_short = serve(scheduler, conversation(2, 300))
    assert recent_short is not old_long
    clock.now += 600  # ten half-lives
    assert serve(scheduler, conversation(2, 300) + [4] * 10) is recent_short  # its next turn
    clock.now += 1
    assert serve(scheduler, conversation(3, 300)) is old_long


def test_a_new_conversation_takes_an_empty_slot_even_when_another_holds_its_preamble():
    """Even a preamble that is most of the other slot's cache does not pull a new conversation
    into it while a slot is empty: the other conversation keeps its history (and with prefix
    sharing, llama.cpp, the preamble is copied into the empty slot, not evaluated)."""
    for sharing in (False, True):
        clock = Clock()
        preamble = list(range(500))
        slots = [FakeSlot("a"), FakeSlot("b")]

        def shared(prompt):
            return max(common_prefix_length(s.cached, prompt) for s in slots)

        scheduler = SlotScheduler(slots, max_waiting=4, clock=clock, shared_prefix=shared if sharing else None)
        first = serve(scheduler, preamble + [1] * 100)
        clock.now += 1
        assert serve(scheduler, preamble + [2] * 100) is not first


def test_when_every_slot_holds_a_conversation_the_cheapest_eviction_wins():
    """All slots hold active conversations: the one sharing a long preamble with the request
    costs least to take over (little to evaluate, a short tail lost)."""
    clock = Clock()
    preamble = list(range(500))
    slots = [FakeSlot("a"), FakeSlot("b")]
    scheduler = SlotScheduler(slots, max_waiting=4, clock=clock)
    with_preamble = serve(scheduler, preamble + [1] * 50)
    clock.now += 1
    serve(scheduler, conversation(2, 600))
    clock.now += 1
    assert serve(scheduler, preamble + [3] * 50) is with_preamble


def test_slot_states_report_cache_and_idle_time():
    clock, slots, scheduler = two_slots()
    serve(scheduler, [1, 2, 3])
    clock.now += 2.5
    held, lease = hold(scheduler, [9])
    states = {s.index: s for s in scheduler.slot_states()}
    busy_index = slots.index(held)
    assert states[busy_index].busy and states[busy_index].idle_seconds == 0.0
    idle = states[1 - busy_index]
    assert (idle.busy, idle.cached_tokens, idle.idle_seconds) == (False, 3, 2.5)
    release(lease)


def test_slot_is_released_when_the_block_raises():
    scheduler = SlotScheduler([FakeSlot("a")], max_waiting=1)
    with pytest.raises(RuntimeError):
        with scheduler.lease(scheduler.enqueue([1])):
            assert scheduler.busy == 1
            raise RuntimeError("boom")
    assert (scheduler.busy, scheduler.waiting) == (0, 0)


# --- FIFO ----------------------------------------------------------------------


def test_waiters_get_the_slot_in_enqueue_order():
    scheduler = SlotScheduler([FakeSlot("only")], max_waiting=8)
    _, lease = hold(scheduler)
    tickets = [scheduler.enqueue([i]) for i in range(1, 5)]
    order: list[int] = []
    # Threads start in reverse order; the queue, not thread timing, decides who goes first.
    waiters = [Waiter(scheduler, t, order=order, label=i) for i, t in reversed(list(enumerate(tickets, 1)))]
    for w in waiters:
        w.start()
    eventually(lambda: scheduler.waiting == 4, "four waiters queued")
    assert order == []
    release(lease)
    for w in waiters:
        finish(w)
    assert order == [1, 2, 3, 4]
    assert all(w.error is None for w in waiters)
    assert (scheduler.busy, scheduler.waiting) == (0, 0)


def test_later_ticket_waits_even_if_a_slot_is_free_for_an_earlier_one():
    scheduler = SlotScheduler([FakeSlot("only")], max_waiting=8)
    first = scheduler.enqueue([1])
    second = scheduler.enqueue([2])
    gate = threading.Event()
    order: list[str] = []
    late = Waiter(scheduler, second, order=order, label="second")
    late.start()
    # The slot is free, but "second" is behind "first" in the queue: it must keep waiting.
    # (A short join gives a broken scheduler the chance to hand it the slot; a correct one
    # never does, so this cannot fail spuriously.)
    late.join(0.2)
    assert late.is_alive() and order == []
    early = Waiter(scheduler, first, order=order, label="first", gate=gate)
    early.start()
    eventually(lambda: order == ["first"], "first holds the slot")
    assert order == ["first"]
    gate.set()
    finish(early)
    finish(late)
    assert order == ["first", "second"]


# --- queue cap ------------------------------------------------------------------


def test_queue_cap_raises_queue_full():
    scheduler = SlotScheduler([FakeSlot("only")], max_waiting=2)
    _, lease = hold(scheduler)
    scheduler.enqueue([1])
    scheduler.enqueue([2])
    with pytest.raises(QueueFull) as info:
        scheduler.enqueue([3])
    assert "limit 2" in str(info.value)
    assert scheduler.waiting == 2
    release(lease)


def test_request_that_can_start_at_once_never_gets_queue_full():
    scheduler = SlotScheduler([FakeSlot("a"), FakeSlot("b")], max_waiting=0)
    _, lease_a = hold(scheduler)  # a slot is free: no waiting room needed
    _, lease_b = hold(scheduler)
    assert scheduler.busy == 2
    with pytest.raises(QueueFull):
        scheduler.enqueue([1])  # no slot free and no waiting room
    release(lease_a)
    ticket = scheduler.enqueue([1])  # one slot free again: accepted despite max_waiting 0
    with scheduler.lease(ticket) as slot:
        assert slot.name == "a"
    release(lease_b)


def test_free_slots_count_against_tickets_not_yet_leased():
    # Two tickets enqueued but not yet leased will take both free slots,
    # so a third must wait and, with max_waiting 0, is refused.
    scheduler = SlotScheduler([FakeSlot("a"), FakeSlot("b")], max_waiting=0)
    scheduler.enqueue([1])
    scheduler.enqueue([2])
    with pytest.raises(QueueFull):
        scheduler.enqueue([3])


# --- cancellation and deadlines ---------------------------------------------------


def test_cancelled_waiter_leaves_the_queue_and_raises_cancelled():
    scheduler = SlotScheduler([FakeSlot("only")], max_waiting=1)
    _, lease = hold(scheduler)
    cancelled = threading.Event()
    waiter = Waiter(scheduler, scheduler.enqueue([1]), cancelled=cancelled)
    waiter.start()
    assert scheduler.waiting == 1
    with pytest.raises(QueueFull):
        scheduler.enqueue([2])
    cancelled.set()
    scheduler.wake()
    finish(waiter)
    assert isinstance(waiter.error, Cancelled)
    assert waiter.slot is None
    assert scheduler.waiting == 0
    scheduler.enqueue([3])  # the room it held is free again
    release(lease)


def test_already_cancelled_waiter_leaves_at_once():
    scheduler = SlotScheduler([FakeSlot("only")], max_waiting=1)
    _, lease = hold(scheduler)
    ticket = scheduler.enqueue([1])
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(Cancelled):
        with scheduler.lease(ticket, cancelled=cancelled):
            pass
    assert scheduler.waiting == 0
    release(lease)


def test_cancelled_waiter_does_not_block_the_one_behind_it():
    scheduler = SlotScheduler([FakeSlot("only")], max_waiting=4)
    _, lease = hold(scheduler)
    cancelled = threading.Event()
    first = Waiter(scheduler, scheduler.enqueue([1]), cancelled=cancelled)
    order: list[str] = []
    second = Waiter(scheduler, scheduler.enqueue([2]), order=order, label="second")
    first.start()
    second.start()
    cancelled.set()
    scheduler.wake()
    finish(first)
    assert isinstance(first.error, Cancelled)
    release(lease)
    finish(second)
    assert second.error is None and order == ["second"]
    assert (scheduler.busy, scheduler.waiting) == (0, 0)


def test_deadline_passed_while_waiting_raises_deadline_exceeded():
    scheduler = SlotScheduler([FakeSlot("only")], max_waiting=2)
    _, lease = hold(scheduler)
    ticket = scheduler.enqueue([1])
    with pytest.raises(DeadlineExceeded):
        with scheduler.lease(ticket, deadline=time.monotonic() - 1):
            pass
    assert scheduler.waiting == 0
    release(lease)


def test_deadline_reached_during_the_wait():
    scheduler = SlotScheduler([FakeSlot("only")], max_waiting=2)
    _, lease = hold(scheduler)
    waiter = Waiter(scheduler, scheduler.enqueue([1]), deadline=time.monotonic() + 0.2)
    waiter.start()
    finish(waiter)  # the slot is never released meanwhile
    assert isinstance(waiter.error, DeadlineExceeded)
    assert scheduler.waiting == 0
    release(lease)


def test_free_slot_is_granted_even_with_a_deadline():
    scheduler = SlotScheduler([FakeSlot("only")], max_waiting=0)
    with scheduler.lease(scheduler.enqueue([1]), deadline=time.monotonic() + SAFETY) as slot:
        assert slot.name == "only"


def test_a_burst_is_admitted_up_to_free_slots_plus_the_cap():
    # Four requests arrive before any producer thread has leased a slot: two will start
    # at once and two wait, which is within max_waiting 2; only the fifth is refused.
    scheduler = SlotScheduler([FakeSlot("a"), FakeSlot("b")], max_waiting=2)
    for prompt in ([1], [2], [3], [4]):
        scheduler.enqueue(prompt)
    with pytest.raises(QueueFull):
        scheduler.enqueue([5])


def test_a_prefix_too_short_to_copy_counts_as_evaluated():
    """Per-slot llama.cpp copies a prefix only when it brings ``min_copy`` tokens: a 3-token
    preamble held by slot a is no reason to take slot b (which would evaluate it) when a
    already holds it and costs about as much to take over."""
    prompt = [7, 7, 7] + [1000 + i for i in range(100)]
    a = FakeSlot("a", [7, 7, 7] + [2000 + i for i in range(50)])  # the preamble and 50 tokens of its own
    b = FakeSlot("b", [3000 + i for i in range(49)])  # 49 tokens of another conversation
    free = [FreeSlot(0, a, 999.0, a.cached), FreeSlot(1, b, 999.0, b.cached)]  # both active a second ago
    assert choose_slot(prompt, free, 1000.0, shared=3, min_copy=1) == 1  # b, with the preamble copied in
    assert choose_slot(prompt, free, 1000.0, shared=3, min_copy=4) == 0  # no copy: a evaluates 3 fewer
