"""More than one token per model step, on the real default model: grammar jump-forward and
n-gram speculative decoding (llama.cpp engine). Each must leave the answers as they were."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from inference_service.engine.engine import Engine
from inference_service.engine.types import Constraint, SamplingParams
from tests.engines import batching_engine, chat, four_slot_llamacpp, loaded, run  # noqa: F401  (fixture)

PARAGRAPH = ("The old lighthouse stood at the edge of the cliff for more than two hundred years. Every night its "
             "keeper climbed the narrow stairs, trimmed the wick and polished the great lens until it shone. Ships "
             "that passed the rocky coast trusted its steady beam.")
ECHO = chat(("user", f"Repeat the following text exactly.\n\n{PARAGRAPH}"), max_tokens=60)
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                           "species": {"enum": ["cat", "dog", "bear"]},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 30}},
          "required": ["name", "species", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def plain_engine(model_file):
    """The llama.cpp engine without speculation: the reference answers."""
    yield from four_slot_llamacpp(model_file, speculative="off")


def drafts(engine: Engine) -> tuple[int, int]:
    status = engine.status()
    return status.draft_tokens_proposed, status.draft_tokens_accepted


def test_speculation_drafts_from_the_prompt_and_keeps_the_greedy_answer(batching_engine, plain_engine):
    proposed, accepted = drafts(batching_engine)
    fast, plain = run(batching_engine, ECHO), run(plain_engine, ECHO)
    assert fast.text == plain.text and fast.token_ids == plain.token_ids
    assert fast.last.usage.completion_tokens == plain.last.usage.completion_tokens
    now_proposed, now_accepted = drafts(batching_engine)
    assert now_accepted > accepted and now_proposed >= now_accepted
    assert drafts(plain_engine) == (0, 0)


def test_the_cache_holds_the_text_not_a_rejected_draft(batching_engine):
    # Drafts fail where the answer leaves the copied text: the cells of their tails must go.
    request = chat(("user", f"Repeat the following text, then add a line of your own.\n\n{PARAGRAPH}"),
                   max_tokens=70)
    prompt = batching_engine.prepare(request).prompt_ids
    proposed, accepted = drafts(batching_engine)
    result = run(batching_engine, request)
    now_proposed, now_accepted = drafts(batching_engine)
    assert now_proposed - proposed > now_accepted - accepted  # some draft token was rejected
    holders = [c for c in loaded(batching_engine)._decoder.sequences if c.cached_tokens[:len(prompt)] == prompt]
    assert holders
    tail = holders[0].cached_tokens[len(prompt):]
    assert tail == result.token_ids[:len(tail)] and len(tail) >= len(result.token_ids) - 1
    # and llama.cpp agrees: the next turn decodes on top of those cells
    follow = chat(("user", request.messages[0].content), ("assistant", result.text), ("user", "Thanks."),
                  max_tokens=8)
    assert run(batching_engine, follow).last.usage.cached_prompt_tokens > len(prompt)


def test_seeded_sampling_is_the_same_with_drafts(batching_engine, plain_engine):
    request = chat(("user", f"Repeat the following text exactly.\n\n{PARAGRAPH}"), max_tokens=40,
                   sampling=SamplingParams(temperature=0.7, seed=11))
    assert run(batching_engine, request).text == run(plain_engine, request).text


def test_logprobs_come_with_every_token_when_drafts_are_verified(batching_engine):
    request = chat(("user", f"Repeat the following text exactly.\n\n{PARAGRAPH}"), max_tokens=30,
                   sampling=SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2))
    result = run(batching_engine, request)
    assert [lp.token_id for lp in result.logprobs] == result.token_ids
    assert all(lp.top_logprobs[0].token_id == lp.token_id for lp in result.logprobs)  # greedy: the top one


def test_concurrent_streams_with_drafts_each_get_their_own_answer(batching_engine, plain_engine):
    requests = [chat(("user", f"Repeat the following text exactly.\n\n{i}. {PARAGRAPH}"), max_tokens=40)
                for i in range(3)]
    alone = [run(plain_engine, r).last.usage.completion_tokens for r in requests]
    results: list = [None] * 3

    def one(i):
        results[i] = run(batching_engine, requests[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for result, tokens in zip(results, alone):
        assert result is not None and result.last.finish_reason in ("stop", "length")
        assert result.text.strip() and result.last.usage.completion_tokens > 0
    assert sum(alone) > 0


@pytest.mark.parametrize("seed", range(3))
def test_jump_forward_takes_the_grammars_forced_tokens_in_one_step(batching_engine, plain_engine, seed):
    request = chat(("user", "Describe a pet as JSON."), max_tokens=80,
                   sampling=SamplingParams(temperature=0.8, seed=seed),
                   constraint=Constraint("json_schema", json.dumps(SCHEMA)))
    decoder = loaded(plain_engine)._decoder  # no drafts there: every saved step is the grammar's
    steps_before = decoder.steps
    result = run(plain_engine, request)
    steps = decoder.steps - steps_before
    assert result.last.finish_reason == "stop"
    answer = json.loads(result.text)
    jsonschema.validate(answer, SCHEMA)
    assert result.text == json.dumps(answer, ensure_ascii=False)
    # {"name": " ... ", "species": " ... ", "age": ... } : keys and separators need no step
    assert steps < result.last.usage.completion_tokens
    jsonschema.validate(json.loads(run(batching_engine, request).text), SCHEMA)  # with drafts as well


def test_no_jump_forward_with_logprobs_every_token_has_its_own(batching_engine):
    request = chat(("user", "Describe a pet as JSON."), max_tokens=80,
                   sampling=SamplingParams(temperature=0.0, logprobs=True),
                   constraint=Constraint("json_schema", json.dumps(SCHEMA)))
    result = run(batching_engine, request)
    assert len(result.logprobs) == len(result.token_ids) == result.last.usage.completion_tokens
