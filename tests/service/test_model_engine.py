"""The real engine in process (default model, 2 slots, max_waiting 4): prefix reuse,
cancellation and slot release, seen from the scheduler's side."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams
from inference_service.errors import Cancelled, InvalidRequest
from tests.helpers import eventually
from tests.service.helpers import MODEL, SAFETY, SYSTEM

LONG_SYSTEM = (
    "system",
    "You are a helpful assistant for a geography class. Answer in one short sentence, "
    "name the city first, and do not add any commentary, lists or follow-up questions.",
)

pytestmark = pytest.mark.model

GREEDY = SamplingParams(temperature=0.0)


def no_eos(engine) -> dict[int, float]:
    """``logit_bias`` banning the end-of-turn tokens the engine itself stops on."""
    return {token_id: -100.0 for token_id in engine.model(MODEL).end_of_turn_ids}


def chat_request(*turns, max_tokens=30, sampling=GREEDY) -> GenerationRequest:
    return GenerationRequest(
        model=MODEL, messages=tuple(ChatMessage(r, c) for r, c in turns), max_tokens=max_tokens, sampling=sampling
    )


def run(engine, req):
    chunks = list(engine.generate(req))
    return "".join(c.text for c in chunks), chunks[-1]


def scheduler(engine):
    return engine.model(MODEL).scheduler


def occupy_both_slots(engine):
    """Two unrelated raw generations holding both slots at once (so both caches change)."""
    holders = []
    for prompt in ("Once upon a time", "The weather today"):
        req = GenerationRequest(model=MODEL, prompt=prompt, raw=True, max_tokens=400,
                                sampling=SamplingParams(temperature=0.0, logit_bias=no_eos(engine)))
        it = engine.generate(req)
        next(it)  # now holds a slot
        holders.append(it)
    assert scheduler(engine).busy == 2
    return holders


def release(engine, holders) -> None:
    for it in holders:
        it.close()  # closing the iterator sets the cancel event
    eventually(lambda: scheduler(engine).busy == 0, "both slots released after close()", timeout=SAFETY)


def block_size(engine) -> int:
    return engine.model(MODEL).config.block_size


def test_next_turn_reuses_the_cached_prefix(engine):
    first_turn = (LONG_SYSTEM, ("user", "What is the capital of France?"))
    answer, last = run(engine, chat_request(*first_turn))
    first_prompt_tokens = last.usage.prompt_tokens
    block = block_size(engine)
    assert first_prompt_tokens > block

    longer = chat_request(*first_turn, ("assistant", answer), ("user", "And what is the capital of Italy?"))
    warm_text, warm = run(engine, longer)
    # Exact reuse: the whole prompt blocks of the first turn's prompt come from the cache;
    # its last partial block and the answer (decoded one token at a time) are evaluated again
    # so the result cannot depend on what the slot served before.
    assert warm.usage.cached_prompt_tokens == first_prompt_tokens // block * block
    assert warm.usage.prompt_tokens > warm.usage.cached_prompt_tokens

    release(engine, occupy_both_slots(engine))  # both caches now hold unrelated raw text
    cold_text, cold = run(engine, longer)
    assert cold.usage.cached_prompt_tokens == 0
    assert cold.usage.prompt_tokens == warm.usage.prompt_tokens
    assert cold_text == warm_text
    assert cold.usage.completion_tokens == warm.usage.completion_tokens
    assert cold.finish_reason == warm.finish_reason


def test_cached_tokens_still_count_as_prompt_tokens(engine):
    req = chat_request(LONG_SYSTEM, ("user", "Name a color."), max_tokens=3)
    _, first = run(engine, req)
    _, second = run(engine, req)  # same prompt: its whole blocks come from the cache
    n = first.usage.prompt_tokens
    block = block_size(engine)
    assert second.usage.prompt_tokens == n > block
    # at least one token is evaluated again (sampling needs fresh logits)
    assert second.usage.cached_prompt_tokens == min(n - 1, n // block * block) // block * block


def test_closing_the_iterator_frees_the_slot(engine):
    holders = occupy_both_slots(engine)
    release(engine, holders)
    assert (scheduler(engine).busy, scheduler(engine).waiting) == (0, 0)
    text, last = run(engine, chat_request(SYSTEM, ("user", "Hi"), max_tokens=3, sampling=SamplingParams(temperature=0.0, logit_bias=no_eos(engine))))
    assert last.finish_reason == "length" and last.usage.completion_tokens == 3


def test_cancelled_waiter_leaves_the_queue_at_once(engine):
    holders = occupy_both_slots(engine)
    try:
        cancelled = threading.Event()
        outcome: list = []

        def wait_for_slot():
            try:
                for _ in engine.generate(chat_request(SYSTEM, ("user", "Hi"), max_tokens=3), cancelled=cancelled):
                    outcome.append("chunk")
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        waiter = threading.Thread(target=wait_for_slot, daemon=True)
        waiter.start()
        eventually(lambda: scheduler(engine).waiting == 1, "the third request waits", timeout=SAFETY)
        cancelled.set()
        waiter.join(SAFETY)
        assert not waiter.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
        assert scheduler(engine).waiting == 0
        assert scheduler(engine).busy == 2  # the running generations were not disturbed
        for it in holders:
            assert next(it).text is not None
    finally:
        release(engine, holders)


def test_cancel_event_stops_a_running_generation(engine):
    cancelled = threading.Event()
    req = chat_request(SYSTEM, ("user", "Tell me a story."), max_tokens=400,
                       sampling=SamplingParams(temperature=0.0, logit_bias=no_eos(engine)))
    it = engine.generate(req, cancelled=cancelled)
    received = [next(it), next(it)]
    cancelled.set()
    with pytest.raises(Cancelled):
        for chunk in it:
            received.append(chunk)
            assert chunk.finish_reason is None, "a cancelled generation never finishes"
    assert len(received) < 400
    eventually(lambda: scheduler(engine).busy == 0, "slot released after cancel", timeout=SAFETY)


def test_ignore_eos_runs_to_max_tokens(engine):
    short = chat_request(SYSTEM, ("user", "Say hi."), max_tokens=60)
    text, last = run(engine, short)
    assert last.finish_reason == "stop" and last.usage.completion_tokens < 60  # it would end by itself
    text, last = run(engine, replace(short, ignore_eos=True))
    assert (last.finish_reason, last.usage.completion_tokens) == ("length", 60)
    assert "<|im_end|>" not in text


def test_min_tokens_holds_off_the_end_of_turn_and_stop_strings(engine):
    short = chat_request(SYSTEM, ("user", "Say hi."), max_tokens=60)
    _, natural = run(engine, short)
    wanted = natural.usage.completion_tokens + 5
    _, last = run(engine, replace(short, min_tokens=wanted))
    assert last.usage.completion_tokens >= wanted
    # A stop string that occurs early does not end the generation before min_tokens.
    text, _ = run(engine, short)
    stop = text.strip()[:2]
    _, stopped_early = run(engine, replace(short, stop=(stop,)))
    _, held = run(engine, replace(short, stop=(stop,), min_tokens=wanted))
    assert stopped_early.usage.completion_tokens < wanted <= held.usage.completion_tokens


def test_min_tokens_beyond_max_tokens_is_refused(engine):
    with pytest.raises(InvalidRequest) as info:
        engine.prepare(GenerationRequest(model=MODEL, prompt="Hi", max_tokens=5, min_tokens=6))
    assert info.value.param == "min_tokens"
