"""Paced streams (``--stream-interval-ms``) on the real model: pieces after the first hold the
tokens of an interval, and nothing is lost, doubled or reordered, with several streams at once."""

from __future__ import annotations

import threading

import pytest

from inference_service.engine.types import SamplingParams
from tests.engines import chat, four_slot_llamacpp, loaded, run

INTERVAL = 0.2  # a step of the default model takes far less, so each piece holds several tokens
TOKENS = 48


@pytest.fixture(scope="module")
def paced_engine(model_file):
    yield from four_slot_llamacpp(model_file, stream_interval=INTERVAL)


def _check_whole(engine, result, logprobs: bool = False) -> None:
    tokenizer = loaded(engine).tokenizer
    assert result.last.finish_reason == "length"
    assert len(result.token_ids) == result.last.usage.completion_tokens == TOKENS
    assert result.text == tokenizer.decode(result.token_ids)
    assert len(result.chunks) < TOKENS  # pieces were joined
    if logprobs:
        assert [lp.token_id for lp in result.logprobs] == result.token_ids


def test_concurrent_paced_streams_arrive_whole(paced_engine):
    results: dict[int, object] = {}

    def one(i: int) -> None:
        request = chat(("user", f"Story {i}: tell me about a lighthouse keeper."), max_tokens=TOKENS, ignore_eos=True,
                       sampling=SamplingParams(temperature=0.8, seed=i, logprobs=i == 0))
        results[i] = run(paced_engine, request)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(results) == [0, 1, 2]
    for i, result in results.items():
        _check_whole(paced_engine, result, logprobs=i == 0)
        assert len(result.chunks[0].token_ids) <= 2  # the first piece is not held back
