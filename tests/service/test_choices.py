"""n answers to one prompt on both engines (the real default model): each in its own slot,
tagged by index, reproducible by seed + index; on llama.cpp the prompt is evaluated once and
copied; a request that cannot queue all its answers queues none."""

from __future__ import annotations

import pytest

from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams
from inference_service.errors import QueueFull
from tests.engines import SMOLLM2, batching_engine, each_engine, loaded, run, smollm2_engines  # noqa: F401

pytestmark = pytest.mark.model

QUESTION = (ChatMessage("user", "Write one short sentence about the sea."),)


def ask(engine, n: int, seed: int = 5, **fields):
    return run(engine, GenerationRequest(model=SMOLLM2, messages=QUESTION, max_tokens=8, n=n,
                                         sampling=SamplingParams(temperature=0.9, seed=seed), **fields))


def by_index(result) -> dict[int, list]:
    out: dict[int, list] = {}
    for chunk in result.chunks:
        out.setdefault(chunk.index, []).append(chunk)
    return out


def test_each_answer_ends_with_its_own_finish_and_usage(each_engine):
    choices = by_index(ask(each_engine, 3))
    assert sorted(choices) == [0, 1, 2]
    for chunks in choices.values():
        assert chunks[-1].finish_reason in ("stop", "length")
        assert chunks[-1].usage.completion_tokens == sum(len(c.token_ids) for c in chunks)
    assert loaded(each_engine).scheduler.load()[1:3] == (0, 0)  # slots and queue free again


def test_answer_i_is_the_single_answer_of_seed_plus_i(smollm2_engines):
    """ctransformers (exact prefix reuse): the same seed, the same text, whatever ran beside."""
    engine = smollm2_engines.get("ctransformers")
    choices = by_index(ask(engine, 3, seed=5))
    for i in range(3):
        alone = ask(engine, 1, seed=5 + i)
        assert "".join(c.text for c in choices[i]) == alone.text


def test_llamacpp_evaluates_the_prompt_once(batching_engine):
    decoder = loaded(batching_engine)._decoder
    for sequence in decoder.sequences:
        sequence.truncate(0)
    copied = decoder.prefixes_copied
    choices = by_index(ask(batching_engine, 3))
    usages = [choices[i][-1].usage for i in range(3)]
    assert usages[0].cached_prompt_tokens == 0
    assert all(u.cached_prompt_tokens == u.prompt_tokens - 1 for u in usages[1:])
    assert decoder.prefixes_copied - copied == 2 * (usages[0].prompt_tokens - 1)


def test_answers_that_cannot_all_queue_are_refused_whole(smollm2_engines):
    engine = smollm2_engines.get("ctransformers")  # 2 slots, 4 queue places
    with pytest.raises(QueueFull):
        ask(engine, 16)
    assert loaded(engine).scheduler.load()[1:3] == (0, 0)
