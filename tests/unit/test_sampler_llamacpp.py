"""llama.cpp's sampler settings the sampler honours: the repetition penalty's window
(``penalty_last_n``) and locally typical sampling (``typical_p``)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from inference_service.engine.sampler import Sampler
from inference_service.engine.types import SamplingParams


def logits_from_probs(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def penalized(params: SamplingParams, prompt, generated=()) -> set[int]:
    """The tokens whose logit the repetition penalty changed (positive logits: divided)."""
    sampler = Sampler(params, 6, prompt)
    for token in generated:
        sampler.accept(token)
    logits = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=np.float32)
    processed = sampler._processed(logits.copy())
    return {i for i in range(6) if processed[i] != logits[i]}


def test_penalty_last_n_limits_the_window_to_the_last_tokens():
    assert penalized(SamplingParams(repetition_penalty=2.0), [0, 1, 2], [3]) == {0, 1, 2, 3}
    assert penalized(SamplingParams(repetition_penalty=2.0, penalty_last_n=-1), [0, 1, 2], [3]) == {0, 1, 2, 3}
    assert penalized(SamplingParams(repetition_penalty=2.0, penalty_last_n=2), [0, 1, 2], [3]) == {2, 3}
    assert penalized(SamplingParams(repetition_penalty=2.0, penalty_last_n=2), [0, 1, 2], [3, 3]) == {3}
    assert penalized(SamplingParams(repetition_penalty=2.0, penalty_last_n=0), [0, 1, 2], [3]) == set()
    assert penalized(SamplingParams(repetition_penalty=2.0, penalty_last_n=64), [5, 0], [1]) == {0, 1, 5}


def test_typical_p_keeps_the_typical_tokens_not_the_likeliest():
    # p = .5 .2 .2 .1: entropy 1.22 nats; |surprise - entropy| = .53 .39 .39 1.08, so the
    # typical order is 1, 2, 0, 3 and a mass above 0.3 is reached with tokens 1 and 2.
    logits = logits_from_probs([0.5, 0.2, 0.2, 0.1])
    sampler = Sampler(SamplingParams(typical_p=0.3, seed=7), 4)
    counts = Counter(sampler.sample(logits).token_id for _ in range(300))
    assert set(counts) == {1, 2}
    sampler = Sampler(SamplingParams(typical_p=0.95, seed=7), 4)
    counts = Counter(sampler.sample(logits).token_id for _ in range(300))
    assert set(counts) == {0, 1, 2, 3}
    sampler = Sampler(SamplingParams(typical_p=1.0, seed=7), 4)  # off
    assert set(Counter(sampler.sample(logits).token_id for _ in range(300))) == {0, 1, 2, 3}


def test_typical_p_runs_on_top_ks_candidates():
    # top_k 3 leaves .56 .22 .22: entropy 1.0 nats, token 0 is now the most typical one.
    logits = logits_from_probs([0.5, 0.2, 0.2, 0.1])
    sampler = Sampler(SamplingParams(typical_p=0.3, top_k=3, top_p=0.9, seed=3), 4)
    assert set(Counter(sampler.sample(logits).token_id for _ in range(200))) == {0}
