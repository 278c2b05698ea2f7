"""The slot policy with the real default model on both engines: conversations keep their caches
when users interleave and when they run at once; a prompt prefix another slot holds is copied,
not evaluated (llama.cpp). No timing assertions: cached token counts tell."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from inference_service.engine.types import GenerationRequest
from tests.engines import (  # noqa: F401  (fixtures)
    SAFETY_SECONDS,
    batching_engine,
    chat,
    each_engine,
    loaded,
    per_slot_engine,
    run,
    smollm2_engines,
    unified_engine,
)

pytestmark = pytest.mark.model

# Long enough that a shared system prompt is many ctransformers blocks: the case of issue 15,
# where it used to pull every conversation into the same slot.
SYSTEM = ("system", "You are a helpful assistant for a geography class. Answer in one short sentence, name "
                    "the city first, and do not add any commentary, lists or follow-up questions. " * 3)
QUESTIONS = {
    "a": ["What is the capital of France?", "And of Italy?", "And of Spain?"],
    "b": ["Which river flows through Cairo?", "And through Vienna?", "And through Paris?"],
    "c": ["Name a large desert.", "And a small one?", "And a cold one?"],
    "d": ["What do bees make?", "And ants?", "And spiders?"],
}


class Conversation:
    def __init__(self, name: str):
        self.name = name
        self.turns: list[tuple[str, str]] = [SYSTEM]
        self.usages = []

    def next_turn(self, engine, turn: int) -> GenerationRequest:
        self.turns.append(("user", QUESTIONS[self.name][turn]))
        return chat(*self.turns, max_tokens=6)

    def answered(self, result) -> None:
        self.turns.append(("assistant", result.text))
        self.usages.append(result.last.usage)


def slack(engine) -> int:
    """Tokens of the previous prompt a next turn may evaluate again: a partial block on
    ctransformers (whole aligned blocks only are reused), the last token on llama.cpp."""
    model = loaded(engine)
    return model.config.block_size if model.engine == "ctransformers" else 1


def assert_kept(conversation: Conversation, engine) -> None:
    for before, after in zip(conversation.usages, conversation.usages[1:]):
        assert after.cached_prompt_tokens >= before.prompt_tokens - slack(engine), (
            conversation.name, [(u.prompt_tokens, u.cached_prompt_tokens) for u in conversation.usages])


def test_interleaved_conversations_keep_their_caches(each_engine):
    """Two users taking turns on a 2-slot engine: each next turn finds its history cached."""
    a, b = Conversation("a"), Conversation("b")
    for turn in range(3):
        for conversation in (a, b):
            conversation.answered(run(each_engine, conversation.next_turn(each_engine, turn)))
    assert_kept(a, each_engine)
    assert_kept(b, each_engine)


def test_concurrent_conversations_keep_their_caches(each_engine):
    """The same with both users' turns running at once."""
    a, b = Conversation("a"), Conversation("b")
    for turn in range(3):
        requests = {c.name: c.next_turn(each_engine, turn) for c in (a, b)}
        results: dict = {}

        def go(name: str) -> None:
            results[name] = run(each_engine, requests[name])

        threads = [threading.Thread(target=go, args=(name,)) for name in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SAFETY_SECONDS)
        assert set(results) == {"a", "b"}
        a.answered(results["a"])
        b.answered(results["b"])
    assert_kept(a, each_engine)
    assert_kept(b, each_engine)


def test_slot_states_show_what_each_slot_holds(each_engine):
    conversation = Conversation("a")
    result = run(each_engine, conversation.next_turn(each_engine, 0))
    states = each_engine.status().models[0].slot_states
    assert len(states) == loaded(each_engine).config.slots
    assert not any(s.busy for s in states)
    # The slot that served it holds the prompt and the answer but its last token.
    held = result.last.usage.prompt_tokens + len(result.token_ids) - 1
    assert held in [s.cached_tokens for s in states], states
    assert all(s.idle_seconds > 0 for s in states if s.cached_tokens == held)


@pytest.mark.parametrize("layout", ["per-slot", "unified"])
def test_a_new_conversation_copies_a_shared_system_prompt(layout, request):
    """llama.cpp: the second conversation takes an empty slot (the first keeps its own) and
    gets the system prompt's cells copied from the first one's sequence instead of evaluating
    them; the first conversation's next turn still finds its whole history."""
    engine = request.getfixturevalue("batching_engine" if layout == "per-slot" else "unified_engine")
    model = loaded(engine)
    decoder = model._decoder
    assert decoder.shares_prefixes
    for sequence in decoder.sequences:  # start from empty caches (the fixture is shared)
        sequence.truncate(0)
    a, b = Conversation("a"), Conversation("b")
    a.answered(run(engine, a.next_turn(engine, 0)))
    copied_before = decoder.prefixes_copied
    b.answered(run(engine, b.next_turn(engine, 0)))
    shared = _shared_prefix(engine, a, b)
    assert shared > 50  # the system prompt and the template's opening
    assert b.usages[0].cached_prompt_tokens >= shared - 1
    assert decoder.prefixes_copied - copied_before >= shared - 1
    held = sorted(s.cached_tokens for s in engine.status().models[0].slot_states if s.cached_tokens)
    assert len(held) == 2, held  # two slots, one conversation each
    a.answered(run(engine, a.next_turn(engine, 1)))
    assert_kept(a, engine)


def test_a_prefix_copied_between_streams_gives_the_logits_of_one_evaluated(per_slot_engine):
    """Per-slot streams: llama.cpp copies a whole stream, then the copy is cut to the prefix.
    The next logits are bit for bit those of a sequence that evaluated the same prefix itself,
    even though the source stream holds more than the prefix."""
    decoder = loaded(per_slot_engine)._decoder
    source, copied, evaluated = decoder.sequences[:3]
    for sequence in decoder.sequences:
        sequence.truncate(0)
    prefix = [(i * 37) % 5000 + 100 for i in range(80)]
    source.evaluate(prefix + [7, 8, 9, 10])  # more than the prefix: the copy must drop it
    suffix = [11, 12, 13]
    copies_before = decoder.prefixes_copied
    assert decoder.copy_longest_prefix(copied, prefix + suffix, len(prefix)) == len(prefix)
    assert decoder.prefixes_copied - copies_before == len(prefix)
    copied.evaluate(suffix)
    evaluated.evaluate(prefix)
    evaluated.evaluate(suffix)
    over_copy, from_itself = copied.logits(), evaluated.logits()
    assert np.array_equal(over_copy, from_itself)
    assert copied.cached_tokens == evaluated.cached_tokens == prefix + suffix


def test_new_conversations_arriving_together_all_get_the_prefix_copied(per_slot_engine):
    """Three conversations start at once beside one that holds the system prompt (per-slot
    streams): each gets its own slot with the prompt copied, not evaluated, and then keeps
    its own history over the next turns, run concurrently as well."""
    engine = per_slot_engine
    decoder = loaded(engine)._decoder
    for sequence in decoder.sequences:
        sequence.truncate(0)
    first = Conversation("a")
    first.answered(run(engine, first.next_turn(engine, 0)))
    others = [Conversation(name) for name in "bcd"]
    copied_before = decoder.prefixes_copied
    for turn in range(2):
        requests = [c.next_turn(engine, turn) for c in others]
        results: dict[int, object] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(engine, requests[i])))
                   for i in range(len(others))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SAFETY_SECONDS)
        assert sorted(results) == [0, 1, 2]
        for i, conversation in enumerate(others):
            conversation.answered(results[i])
    shared = _shared_prefix(engine, first, others[0])
    assert shared > 50
    for conversation in others:
        assert conversation.usages[0].cached_prompt_tokens >= shared - 1, conversation.usages[0]
        assert_kept(conversation, engine)
    assert decoder.prefixes_copied - copied_before >= 3 * (shared - 1)
    held = [s.cached_tokens for s in engine.status().models[0].slot_states]
    assert all(held), held  # four conversations, a slot each


def _shared_prefix(engine, a: Conversation, b: Conversation) -> int:
    from inference_service.engine.model_context import common_prefix_length
    from inference_service.engine.types import ChatMessage

    name = loaded(engine).name
    ids_a = engine.tokenize(name, messages=[ChatMessage(r, c) for r, c in a.turns[:2]])[0]
    ids_b = engine.tokenize(name, messages=[ChatMessage(r, c) for r, c in b.turns[:2]])[0]
    return common_prefix_length(ids_a, ids_b)
