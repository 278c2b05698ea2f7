"""The slot policy with the real default model on both engines: conversations keep their caches
when users interleave and when they run at once; a prompt prefix another slot holds is copied,
not evaluated (llama.cpp). No timing assertions: cached token counts tell."""

from __future__ import annotations

import threading

import pytest

from inference_service.engine.types import GenerationRequest
from tests.engines import (  # noqa: F401  (fixtures)
    SAFETY_SECONDS,
    batching_engine,
    chat,
    each_engine,
    loaded,
    run,
    smollm2_engines,
)

pytestmark = pytest.mark.model

# Long enough that a shared system prompt is many ctransformers blocks: the case of issue 15,
# where it used to pull every conversation into the same slot.
SYSTEM = ("system", "You are a helpful assistant for a geography class. Answer in one short sentence, name "
                    "the city first, and do not add any commentary, lists or follow-up questions. " * 3)
QUESTIONS = {
    "a": ["What is the capital of France?", "And of Italy?", "And of Spain?"],
    "b": ["Which river flows through Cairo?", "And through Vienna?", "And through Paris?"],
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


def test_a_new_conversation_copies_a_shared_system_prompt(batching_engine):
    """llama.cpp: the second conversation takes an empty slot (the first keeps its own) and
    gets the system prompt's cells copied from the first one's sequence instead of evaluating
    them; the first conversation's next turn still finds its whole history."""
    model = loaded(batching_engine)
    decoder = model._decoder
    assert decoder.shares_prefixes
    for sequence in decoder.sequences:  # start from empty caches (the fixture is shared)
        sequence.truncate(0)
    a, b = Conversation("a"), Conversation("b")
    a.answered(run(batching_engine, a.next_turn(batching_engine, 0)))
    copied_before = decoder.prefixes_copied
    b.answered(run(batching_engine, b.next_turn(batching_engine, 0)))
    shared = _shared_prefix(batching_engine, a, b)
    assert shared > 50  # the system prompt and the template's opening
    assert b.usages[0].cached_prompt_tokens >= shared - 1
    assert decoder.prefixes_copied - copied_before >= shared - 1
    held = sorted(s.cached_tokens for s in batching_engine.status().models[0].slot_states if s.cached_tokens)
    assert len(held) == 2, held  # two slots, one conversation each
    a.answered(run(batching_engine, a.next_turn(batching_engine, 1)))
    assert_kept(a, batching_engine)


def _shared_prefix(engine, a: Conversation, b: Conversation) -> int:
    from inference_service.engine.model_context import common_prefix_length
    from inference_service.engine.types import ChatMessage

    name = loaded(engine).name
    ids_a = engine.tokenize(name, messages=[ChatMessage(r, c) for r, c in a.turns[:2]])[0]
    ids_b = engine.tokenize(name, messages=[ChatMessage(r, c) for r, c in b.turns[:2]])[0]
    return common_prefix_length(ids_a, ids_b)
