from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import replace
from typing import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference_service.engine.sampler import SampledToken, Sampler
from inference_service.engine.types import SamplingParams


def logits_from_probs(probs: Sequence[float]) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def draw_counts(sampler: Sampler, logits: np.ndarray, n: int) -> Counter[int]:
    return Counter(sampler.sample(logits).token_id for _ in range(n))


def all_logprobs(sampler: Sampler, logits: np.ndarray) -> np.ndarray:
    """Full processed log-softmax, read back through top_logprobs == vocab size."""
    result = sampler.sample(logits)
    out = np.empty(len(logits))
    for token_id, logprob in result.top_logprobs:
        out[token_id] = logprob
    return out


PROBS = [0.5, 0.3, 0.15, 0.05]


# --- greedy -----------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1e-6, 1e-5])
def test_greedy_picks_argmax_without_warnings(temperature: float) -> None:
    logits = np.array([0.1, 3.0, -2.0, 2.9], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=temperature), vocab_size=4)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        results = [sampler.sample(logits).token_id for _ in range(20)]
    assert results == [1] * 20


def test_greedy_ties_pick_lowest_id() -> None:
    logits = np.array([0.0, 5.0, 1.0, 5.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0), vocab_size=4)
    assert sampler.sample(logits).token_id == 1


def test_greedy_with_negative_infinity_logits() -> None:
    logits = np.array([-np.inf, -1.0, -np.inf], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, logprobs=True), vocab_size=3)
    result = sampler.sample(logits)
    assert result.token_id == 1
    assert result.logprob == pytest.approx(0.0, abs=1e-6)


# --- seeds --------------------------------------------------------------------


def random_logits_sequence(n: int, vocab: int) -> list[np.ndarray]:
    rng = np.random.default_rng(999)
    return [rng.normal(0, 2, vocab).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(seed=123),
        SamplingParams(seed=123, top_k=50, top_p=0.9, min_p=0.01, temperature=0.8),
        SamplingParams(seed=123, top_p=0.95),
    ],
)
def test_same_seed_same_tokens(params: SamplingParams) -> None:
    sequence = random_logits_sequence(100, 1000)
    a = Sampler(params, vocab_size=1000)
    b = Sampler(params, vocab_size=1000)
    tokens_a = [a.sample(x).token_id for x in sequence]
    tokens_b = [b.sample(x).token_id for x in sequence]
    assert tokens_a == tokens_b


def test_different_seeds_differ() -> None:
    sequence = random_logits_sequence(100, 1000)
    a = Sampler(SamplingParams(seed=1), vocab_size=1000)
    b = Sampler(SamplingParams(seed=2), vocab_size=1000)
    assert [a.sample(x).token_id for x in sequence] != [b.sample(x).token_id for x in sequence]


def test_unseeded_samplers_differ() -> None:
    sequence = random_logits_sequence(100, 1000)
    a = Sampler(SamplingParams(), vocab_size=1000)
    b = Sampler(SamplingParams(), vocab_size=1000)
    assert [a.sample(x).token_id for x in sequence] != [b.sample(x).token_id for x in sequence]


def test_negative_seed_is_accepted_and_reproducible() -> None:
    logits = logits_from_probs([0.25] * 4)
    a = Sampler(SamplingParams(seed=-7), vocab_size=4)
    b = Sampler(SamplingParams(seed=-7), vocab_size=4)
    assert [a.sample(logits).token_id for _ in range(30)] == [
        b.sample(logits).token_id for _ in range(30)
    ]


# --- truncation -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_top_k_one_equals_greedy(seed: int) -> None:
    sequence = random_logits_sequence(50, 500)
    sampler = Sampler(SamplingParams(top_k=1, seed=seed, temperature=1.5), vocab_size=500)
    assert [sampler.sample(x).token_id for x in sequence] == [int(np.argmax(x)) for x in sequence]


@pytest.mark.parametrize("top_p", [0.0, 1e-9, 1e-3])
def test_tiny_top_p_equals_greedy(top_p: float) -> None:
    sequence = random_logits_sequence(50, 500)
    sampler = Sampler(SamplingParams(top_p=top_p, seed=3, temperature=2.0), vocab_size=500)
    assert [sampler.sample(x).token_id for x in sequence] == [int(np.argmax(x)) for x in sequence]


@pytest.mark.parametrize("extra", [{}, {"top_k": 2}, {"min_p": 0.5}, {"temperature": 2.0}])
def test_top_p_zero_keeps_only_the_most_likely_token(extra: dict) -> None:
    """top_p=0 is greedy over the top token (limits.RANGES accepts it at both entry points)."""
    logits = np.array([0.0, 2.0, 2.0, 1.9], dtype=np.float32)
    sampler = Sampler(replace(SamplingParams(top_p=0.0, seed=0), **extra), vocab_size=4)
    assert {sampler.sample(logits).token_id for _ in range(50)} == {1}  # the lowest id on ties, like argmax


def test_tiny_top_p_breaks_ties_like_greedy() -> None:
    logits = np.array([0.0, 2.0, 2.0, 1.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(top_p=1e-6, seed=0), vocab_size=4)
    assert {sampler.sample(logits).token_id for _ in range(50)} == {1}


def test_top_k_keeps_only_k_most_likely() -> None:
    sampler = Sampler(SamplingParams(top_k=2, seed=0), vocab_size=4)
    counts = draw_counts(sampler, logits_from_probs(PROBS), 2000)
    assert set(counts) == {0, 1}
    # renormalized: 0.5 / 0.8 = 0.625
    assert counts[0] / 2000 == pytest.approx(0.625, abs=0.04)


@pytest.mark.parametrize(
    ("top_p", "allowed"),
    [(0.5, {0}), (0.79, {0, 1}), (0.8, {0, 1}), (0.81, {0, 1, 2}), (0.95, {0, 1, 2}), (0.96, {0, 1, 2, 3})],
)
def test_top_p_keeps_smallest_set_reaching_mass(top_p: float, allowed: set[int]) -> None:
    sampler = Sampler(SamplingParams(top_p=top_p, seed=0), vocab_size=4)
    counts = draw_counts(sampler, logits_from_probs(PROBS), 3000)
    assert set(counts) == allowed


def test_top_p_after_top_k_renormalizes_within_top_k() -> None:
    # top_k=2 leaves probs 0.625 / 0.375, so top_p=0.6 keeps only token 0 ...
    sampler = Sampler(SamplingParams(top_k=2, top_p=0.6, seed=0), vocab_size=4)
    assert set(draw_counts(sampler, logits_from_probs(PROBS), 500)) == {0}
    # ... and top_p=0.7 keeps both.
    sampler = Sampler(SamplingParams(top_k=2, top_p=0.7, seed=0), vocab_size=4)
    assert set(draw_counts(sampler, logits_from_probs(PROBS), 500)) == {0, 1}


@pytest.mark.parametrize("nucleus_size", [3, 100, 1000, 20000])
def test_top_p_on_large_vocab_matches_reference_nucleus(nucleus_size: int) -> None:
    vocab = 49152
    rng = np.random.default_rng(5)
    # nucleus_size equally likely tokens hold 90% of the mass, the rest share 10%.
    probs = np.full(vocab, 0.1 / (vocab - nucleus_size))
    top_ids = rng.choice(vocab, size=nucleus_size, replace=False)
    probs[top_ids] = 0.9 / nucleus_size
    logits = logits_from_probs(probs)
    sampler = Sampler(SamplingParams(top_p=0.85, seed=1), vocab_size=vocab)
    drawn = {sampler.sample(logits).token_id for _ in range(300)}
    assert drawn <= set(top_ids.tolist())
    assert len(drawn) >= min(nucleus_size, 3)


def test_min_p_drops_tokens_below_fraction_of_max() -> None:
    # threshold 0.2 * 0.5 = 0.1: token 3 (0.05) is dropped
    sampler = Sampler(SamplingParams(min_p=0.2, seed=0), vocab_size=4)
    counts = draw_counts(sampler, logits_from_probs(PROBS), 3000)
    assert set(counts) == {0, 1, 2}
    assert counts[0] / 3000 == pytest.approx(0.5 / 0.95, abs=0.04)


@pytest.mark.parametrize("extra", [{}, {"top_k": 3}, {"top_p": 0.99}])
def test_min_p_high_keeps_only_top(extra: dict[str, float]) -> None:
    # threshold 0.7 * 0.5 = 0.35: only token 0 survives, on every code path
    sampler = Sampler(SamplingParams(min_p=0.7, seed=0, **extra), vocab_size=4)  # type: ignore[arg-type]
    assert set(draw_counts(sampler, logits_from_probs(PROBS), 500)) == {0}


def test_min_p_on_large_vocab() -> None:
    vocab = 49152
    logits = np.full(vocab, -10.0, dtype=np.float32)
    logits[[7, 30000, 49151]] = [0.0, -0.5, -1.0]  # probs relative to max: 1, 0.61, 0.37
    sampler = Sampler(SamplingParams(min_p=0.5, seed=0), vocab_size=vocab)
    assert set(draw_counts(sampler, logits, 1000)) == {7, 30000}


# --- logit bias -------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logit_bias_forces_token(temperature: float) -> None:
    logits = logits_from_probs(PROBS)
    params = SamplingParams(temperature=temperature, logit_bias={3: 100.0}, seed=0)
    sampler = Sampler(params, vocab_size=4)
    assert set(draw_counts(sampler, logits, 200)) == {3}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logit_bias_bans_token(temperature: float) -> None:
    logits = logits_from_probs(PROBS)
    params = SamplingParams(temperature=temperature, logit_bias={0: -100.0}, seed=0)
    sampler = Sampler(params, vocab_size=4)
    counts = draw_counts(sampler, logits, 2000)
    assert 0 not in counts
    if temperature == 0.0:
        assert set(counts) == {1}


def test_logit_bias_of_100_is_not_absolute() -> None:
    logits = np.array([150.0, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, logit_bias={1: 100.0}), vocab_size=2)
    assert sampler.sample(logits).token_id == 0
    sampler = Sampler(SamplingParams(temperature=0.0, logit_bias={0: -100.0}), vocab_size=2)
    # 150 - 100 = 50 > 0: the strongest ban the contract allows is not absolute
    assert sampler.sample(logits).token_id == 0


def test_logit_bias_values_are_exact() -> None:
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    params = SamplingParams(logit_bias={0: 2.5, 2: -1.0}, top_logprobs=3)
    got = all_logprobs(Sampler(params, vocab_size=3), logits)
    np.testing.assert_allclose(got, log_softmax(np.array([3.5, 2.0, 2.0])), atol=1e-5)


def test_sample_does_not_modify_input_logits() -> None:
    logits = np.array([1.0, -2.0, 3.0, 0.5], dtype=np.float32)
    original = logits.copy()
    params = SamplingParams(
        temperature=0.7,
        top_k=3,
        logit_bias={0: 5.0},
        repetition_penalty=1.3,
        frequency_penalty=0.5,
        presence_penalty=0.5,
    )
    sampler = Sampler(params, vocab_size=4, prompt_token_ids=[1, 2])
    sampler.accept(3)
    sampler.sample(logits)
    np.testing.assert_array_equal(logits, original)


@settings(max_examples=60, deadline=None)
@given(
    temperature=st.sampled_from([0.0, 0.7, 1.3]),
    top_k=st.sampled_from([0, 5]),
    top_p=st.sampled_from([1.0, 0.9]),
    bias=st.dictionaries(st.integers(0, 63), st.floats(-100, 100, width=32), max_size=4),
    repetition_penalty=st.sampled_from([1.0, 1.3]),
    frequency_penalty=st.sampled_from([0.0, 0.5]),
    top_logprobs=st.sampled_from([0, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sampling_in_place_is_sampling_a_copy(temperature, top_k, top_p, bias, repetition_penalty,
                                             frequency_penalty, top_logprobs, seed) -> None:
    """The decode loop lets the sampler work in its own row (``in_place``): same tokens, same
    logprobs, step after step, as sampling a copy; only the row it was given changes."""
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, logit_bias=bias,
                            repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                            logprobs=bool(top_logprobs), top_logprobs=top_logprobs, seed=seed)
    copying, in_place = (Sampler(params, vocab_size=64, prompt_token_ids=[1, 2, 3]) for _ in range(2))
    for logits in random_logits_sequence(20, 64):
        kept = logits.copy()
        a = copying.sample(logits)
        np.testing.assert_array_equal(logits, kept)
        b = in_place.sample(logits, in_place=True)
        assert (a.token_id, a.logprob, a.top_logprobs) == (b.token_id, b.logprob, b.top_logprobs)
        copying.accept(a.token_id)
        in_place.accept(b.token_id)


# --- penalties --------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = np.array([2.0, -1.0, 0.5, -0.5], dtype=np.float32)
    params = SamplingParams(repetition_penalty=2.0, top_logprobs=4)
    sampler = Sampler(params, vocab_size=4, prompt_token_ids=[0, 1, 0])
    expected = log_softmax(np.array([1.0, -2.0, 0.5, -0.5]))
    np.testing.assert_allclose(all_logprobs(sampler, logits), expected, atol=1e-5)


def test_repetition_penalty_counts_generated_tokens_once() -> None:
    logits = np.array([2.0, -1.0, 0.5, -0.5], dtype=np.float32)
    params = SamplingParams(repetition_penalty=2.0, top_logprobs=4)
    sampler = Sampler(params, vocab_size=4, prompt_token_ids=[0])
    for token in (2, 2, 2, 0):
        sampler.accept(token)
    expected = log_softmax(np.array([1.0, -1.0, 0.25, -0.5]))
    np.testing.assert_allclose(all_logprobs(sampler, logits), expected, atol=1e-5)


def test_repetition_penalty_changes_greedy_choice() -> None:
    logits = np.array([2.0, 1.9], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.5), 2, [0])
    assert sampler.sample(logits).token_id == 1
    negative = np.array([-1.0, -1.2], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.5), 2, [0])
    assert sampler.sample(negative).token_id == 1
    sampler = Sampler(SamplingParams(temperature=0.0, repetition_penalty=1.0), 2, [0])
    assert sampler.sample(logits).token_id == 0


def test_frequency_penalty_scales_with_generated_count() -> None:
    logits = np.zeros(4, dtype=np.float32)
    params = SamplingParams(frequency_penalty=0.5, top_logprobs=4)
    # prompt tokens do not count for frequency / presence penalties
    sampler = Sampler(params, vocab_size=4, prompt_token_ids=[3, 3, 3])
    for token in (0, 0, 0, 1):
        sampler.accept(token)
    expected = log_softmax(np.array([-1.5, -0.5, 0.0, 0.0]))
    np.testing.assert_allclose(all_logprobs(sampler, logits), expected, atol=1e-5)


def test_presence_penalty_is_flat() -> None:
    logits = np.zeros(4, dtype=np.float32)
    params = SamplingParams(presence_penalty=0.7, top_logprobs=4)
    sampler = Sampler(params, vocab_size=4, prompt_token_ids=[3])
    for token in (0, 0, 0, 1):
        sampler.accept(token)
    expected = log_softmax(np.array([-0.7, -0.7, 0.0, 0.0]))
    np.testing.assert_allclose(all_logprobs(sampler, logits), expected, atol=1e-5)


def test_negative_frequency_penalty_encourages_repetition() -> None:
    logits = np.array([1.0, 0.0], dtype=np.float32)
    sampler = Sampler(SamplingParams(temperature=0.0, frequency_penalty=-0.6), vocab_size=2)
    sampler.accept(1)
    sampler.accept(1)
    assert sampler.sample(logits).token_id == 1


def test_all_processors_compose_in_order() -> None:
    logits = np.array([1.0, 2.0, -1.0, 0.0], dtype=np.float32)
    params = SamplingParams(
        logit_bias={0: 1.0, 2: -1.0},
        repetition_penalty=2.0,
        frequency_penalty=0.25,
        presence_penalty=0.5,
        top_logprobs=4,
    )
    sampler = Sampler(params, vocab_size=4, prompt_token_ids=[1])
    for token in (0, 2, 2):
        sampler.accept(token)
    # bias: [2, 2, -2, 0]; repetition over {0, 1, 2}: [1, 1, -4, 0]
    # frequency/presence over generated {0: 1, 2: 2}: [1 - 0.75, 1, -4 - 1, 0]
    expected = log_softmax(np.array([0.25, 1.0, -5.0, 0.0]))
    np.testing.assert_allclose(all_logprobs(sampler, logits), expected, atol=1e-5)


# --- logprobs ---------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 2.0])
def test_chosen_logprob_matches_log_softmax_before_temperature(temperature: float) -> None:
    sequence = random_logits_sequence(30, 1000)
    params = SamplingParams(temperature=temperature, logprobs=True, seed=4, top_p=0.9)
    sampler = Sampler(params, vocab_size=1000)
    for logits in sequence:
        result = sampler.sample(logits)
        reference = log_softmax(logits)
        assert result.logprob == pytest.approx(reference[result.token_id], abs=1e-5)
        assert result.logprob <= 0.0


def test_logprobs_stable_for_huge_logits() -> None:
    logits = np.array([1000.0, 999.0, -1000.0], dtype=np.float32)
    params = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3)
    with np.errstate(over="raise", invalid="raise"):
        result = Sampler(params, vocab_size=3).sample(logits)
    assert result.token_id == 0
    assert result.logprob == pytest.approx(-np.log1p(np.exp(-1.0)), abs=1e-5)
    assert all(np.isfinite(lp) for _, lp in result.top_logprobs)


def test_no_logprobs_requested() -> None:
    result = Sampler(SamplingParams(seed=0), vocab_size=4).sample(logits_from_probs(PROBS))
    assert result.logprob == 0.0
    assert result.top_logprobs == ()


def test_top_logprobs_ordering_and_length() -> None:
    logits = random_logits_sequence(1, 1000)[0]
    params = SamplingParams(logprobs=True, top_logprobs=5, seed=0)
    result = Sampler(params, vocab_size=1000).sample(logits)
    reference = log_softmax(logits)
    expected_ids = list(np.argsort(-reference, kind="stable")[:5])
    assert [token_id for token_id, _ in result.top_logprobs] == expected_ids
    got = [lp for _, lp in result.top_logprobs]
    assert got == sorted(got, reverse=True)
    np.testing.assert_allclose(got, reference[expected_ids], atol=1e-5)
    assert all(isinstance(i, int) and isinstance(lp, float) for i, lp in result.top_logprobs)


def test_top_logprobs_ties_lowest_id_first() -> None:
    logits = np.array([0.0, 1.0, 3.0, 1.0, 3.0], dtype=np.float32)
    params = SamplingParams(temperature=0.0, top_logprobs=4)
    result = Sampler(params, vocab_size=5).sample(logits)
    assert [token_id for token_id, _ in result.top_logprobs] == [2, 4, 1, 3]


def test_top_logprobs_capped_at_vocab_size() -> None:
    params = SamplingParams(top_logprobs=10, seed=0)
    result = Sampler(params, vocab_size=3).sample(np.zeros(3, dtype=np.float32))
    assert [token_id for token_id, _ in result.top_logprobs] == [0, 1, 2]
    np.testing.assert_allclose([lp for _, lp in result.top_logprobs], [-np.log(3)] * 3, atol=1e-6)


def test_top_logprobs_without_logprobs_flag_still_reports_chosen_logprob() -> None:
    logits = logits_from_probs(PROBS)
    result = Sampler(SamplingParams(temperature=0.0, top_logprobs=2), 4).sample(logits)
    assert isinstance(result, SampledToken)
    assert result.token_id == 0
    assert result.logprob == pytest.approx(np.log(0.5), abs=1e-5)
    assert [i for i, _ in result.top_logprobs] == [0, 1]


# --- distribution -----------------------------------------------------------


def test_temperature_one_follows_probabilities() -> None:
    n = 20000
    sampler = Sampler(SamplingParams(seed=42), vocab_size=4)
    counts = draw_counts(sampler, logits_from_probs(PROBS), n)
    for token_id, p in enumerate(PROBS):
        assert counts[token_id] / n == pytest.approx(p, abs=0.015)


def test_temperature_scales_distribution() -> None:
    n = 20000
    logits = logits_from_probs(PROBS)
    expected = np.exp(log_softmax(logits / 2.0))
    sampler = Sampler(SamplingParams(seed=7, temperature=2.0), vocab_size=4)
    counts = draw_counts(sampler, logits, n)
    for token_id, p in enumerate(expected):
        assert counts[token_id] / n == pytest.approx(p, abs=0.015)


def test_large_vocab_sampling_follows_probabilities() -> None:
    # Mass spread over tokens in different 256-wide blocks, including the last
    # (partial) block, to exercise the blocked inverse-CDF draw.
    vocab = 1000
    logits = np.full(vocab, -30.0, dtype=np.float32)
    chosen = {0: 0.1, 255: 0.2, 256: 0.3, 700: 0.15, 999: 0.25}
    for token_id, p in chosen.items():
        logits[token_id] = np.log(p)
    n = 20000
    counts = draw_counts(Sampler(SamplingParams(seed=3), vocab_size=vocab), logits, n)
    assert set(counts) == set(chosen)
    for token_id, p in chosen.items():
        assert counts[token_id] / n == pytest.approx(p, abs=0.015)


def test_masked_tokens_never_sampled() -> None:
    logits = np.array([-np.inf, 0.0, -np.inf, 0.0], dtype=np.float32)
    for extra in ({}, {"top_k": 3}, {"top_p": 0.9}, {"min_p": 0.1}):
        sampler = Sampler(replace(SamplingParams(seed=0), **extra), vocab_size=4)  # type: ignore[arg-type]
        assert set(draw_counts(sampler, logits, 300)) == {1, 3}


# --- the request contract is asserted, not validated -------------------------


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=-0.1),
        SamplingParams(temperature=2.1),
        SamplingParams(top_p=1.5),
        SamplingParams(top_p=-0.1),
        SamplingParams(top_k=-1),
        SamplingParams(min_p=-0.1),
        SamplingParams(repetition_penalty=0.0),
        SamplingParams(repetition_penalty=10.5),
        SamplingParams(frequency_penalty=2.5),
        SamplingParams(top_logprobs=-1),
        SamplingParams(top_logprobs=21),
        SamplingParams(logit_bias={10: 1.0}),
        SamplingParams(logit_bias={1: 100.5}),
    ],
)
def test_params_outside_the_contract_are_asserted(params: SamplingParams) -> None:
    with pytest.raises(AssertionError):
        Sampler(params, vocab_size=4)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(top_p=0.0),
        SamplingParams(temperature=2.0, repetition_penalty=10.0, frequency_penalty=-2.0, presence_penalty=2.0),
        SamplingParams(min_p=1.0, top_logprobs=4, logit_bias={0: -100.0, 3: 100.0}),
    ],
)
def test_params_at_the_contract_bounds_pass(params: SamplingParams) -> None:
    Sampler(params, vocab_size=4).sample(np.zeros(4, dtype=np.float32))


def test_wrong_logits_shape_rejected() -> None:
    with pytest.raises(ValueError):
        Sampler(SamplingParams(), vocab_size=4).sample(np.zeros(5, dtype=np.float32))


def test_out_of_range_tokens_rejected() -> None:
    with pytest.raises(ValueError):
        Sampler(SamplingParams(), vocab_size=4, prompt_token_ids=[4])
    sampler = Sampler(SamplingParams(), vocab_size=4)
    with pytest.raises(ValueError):
        sampler.accept(-1)


# --- fast candidate searches: the same tokens as the full-vocabulary ones --------------------

def _reference_draws(params: SamplingParams, logits: np.ndarray, draws: int) -> list[int]:
    """The same pipeline with every candidate set found by sorting the whole vocabulary."""
    rng = np.random.default_rng(params.seed)
    x = logits.astype(np.float32) / np.float32(params.temperature)
    order = np.lexsort((np.arange(x.size), -x))  # most likely first, lowest id on ties
    ids = order[: params.top_k] if params.top_k else order
    probs = np.exp(x[ids] - x[ids].max())
    cumulative = np.cumsum(probs, dtype=np.float64)
    target = params.top_p * cumulative[-1] * (1.0 - 1e-6)
    keep = min(int(np.searchsorted(cumulative, target, side="left")) + 1, ids.size)
    ids, probs = ids[:keep], probs[:keep]
    out = []
    for _ in range(draws):
        c = np.cumsum(probs.astype(np.float64))
        out.append(int(ids[min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), ids.size - 1)]))
    return out


@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])
@pytest.mark.parametrize("fields", [dict(top_p=0.9), dict(top_p=0.5), dict(top_p=0.999),
                                    dict(top_k=40, top_p=0.95), dict(top_k=3, top_p=0.9), dict(top_k=2000, top_p=0.9)])
def test_top_p_and_top_k_candidates_are_those_of_a_full_sort(scale, fields):
    vocab = 49152
    logits = np.random.default_rng(int(scale * 10)).standard_normal(vocab).astype(np.float32) * np.float32(scale)
    params = SamplingParams(temperature=0.8, seed=3, **fields)
    sampler = Sampler(params, vocab)
    assert [sampler.sample(logits).token_id for _ in range(20)] == _reference_draws(params, logits, 20)
