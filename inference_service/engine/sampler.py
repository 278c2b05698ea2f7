"""Token sampling over raw logits, with OpenAI / llama.cpp / vLLM semantics.

One :class:`Sampler` per request: it owns the request's RNG and the counts of
generated tokens used by the penalties.  Pipeline per token::

    copy -> logit_bias -> repetition_penalty -> frequency/presence penalties
         -> (logprobs, from these processed logits)
         -> greedy argmax  |  temperature -> top_k -> typical_p -> top_p -> min_p -> draw

The repetition penalty covers every prompt and generated token, or with ``penalty_last_n``
only the last that many (llama.cpp's window; 0 turns it off). ``typical_p`` keeps the tokens
whose surprise is closest to the distribution's entropy until their mass exceeds it, as
llama.cpp's typical sampler does (here on the temperature-scaled candidates).

Greedy is temperature 0 or top_p 0 (keep only the most likely token, as llama.cpp's top_p keeps
at least one). Parameters come validated (``inference_service.engine.validation`` applies the
contract of ``inference_service.limits``); the sampler only asserts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from inference_service.engine.types import SamplingParams
from inference_service.limits import LOGIT_BIAS_RANGE, MAX_TOP_LOGPROBS, RANGES

GREEDY_TEMPERATURE = 1e-5

# Inverse-CDF draws over the full vocabulary sum fixed-size blocks first and
# only take a running sum inside the chosen block: np.cumsum over ~50k float32
# values is sequential and costs ~150 us, the blocked version ~15 us.
_BLOCK = 256
# Relative slack for the top_p comparison so that float32 rounding does not
# add a token when the cumulative probability lands exactly on top_p.
_TOP_P_RTOL = 1e-6
# Candidate counts tried (by partitioning) before falling back to a full sort
# when top_p is used without top_k.
_NUCLEUS_STEPS = (64, 512, 4096)
# Probability thresholds (relative to the most likely token) tried first, by value.
_NUCLEUS_THRESHOLDS = (1e-2, 1e-4)
# Logit distances below the maximum tried for top_k candidates before the full partition.
_TOP_K_WIDTHS = (4.0, 8.0, 16.0)

_F32 = np.float32
_F64 = np.float64


@dataclass(frozen=True)
class SampledToken:
    token_id: int
    # Log-probability of the chosen token under the processed logits (before
    # temperature and truncation); 0.0 when logprobs were not requested.
    logprob: float
    # (token_id, logprob), most likely first; empty unless params.top_logprobs > 0.
    top_logprobs: tuple[tuple[int, float], ...]


class Sampler:
    """Samples one token at a time for a single request."""

    def __init__(
        self,
        params: SamplingParams,
        vocab_size: int,
        prompt_token_ids: Sequence[int] = (),
    ) -> None:
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        _assert_valid(params, vocab_size)
        self._params = params
        self._vocab_size = vocab_size
        self._rng = np.random.default_rng(
            None if params.seed is None else params.seed & 0xFFFF_FFFF_FFFF_FFFF
        )

        self._greedy = params.temperature <= GREEDY_TEMPERATURE or params.top_p == 0.0
        self._inv_temperature = 1.0 if self._greedy else 1.0 / params.temperature
        self._top_k = params.top_k if 0 < params.top_k < vocab_size else 0
        self._top_p = params.top_p if params.top_p < 1.0 else 1.0
        self._min_p = params.min_p
        self._typical_p = params.typical_p
        self._want_logprobs = params.logprobs or params.top_logprobs > 0
        self._n_top = min(params.top_logprobs, vocab_size)

        if params.logit_bias:
            ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64)
            values = np.fromiter(params.logit_bias.values(), dtype=_F64)
            self._bias_ids: Optional[np.ndarray] = ids
            self._bias_values = values.astype(_F32)
        else:
            self._bias_ids = None
            self._bias_values = np.empty(0, dtype=_F32)

        # Generated-token counts, plus the distinct ids in insertion order so the
        # penalties touch only those ids rather than the whole vocabulary.
        self._counts = np.zeros(vocab_size, dtype=np.int32)
        self._generated_ids = np.empty(vocab_size, dtype=np.int32)
        self._n_generated_ids = 0
        # Distinct ids of prompt + generated tokens, for the repetition penalty.
        self._seen = np.zeros(vocab_size, dtype=bool)
        self._seen_ids = np.empty(vocab_size, dtype=np.int32)
        self._n_seen_ids = 0
        prompt = np.asarray(prompt_token_ids, dtype=np.int64).reshape(-1)
        # Every token in order, for a windowed repetition penalty (penalty_last_n > 0).
        self._history: list[int] = [int(t) for t in prompt] if params.penalty_last_n > 0 else []
        if prompt.size:
            if prompt.min() < 0 or prompt.max() >= vocab_size:
                raise ValueError("prompt token id out of range for the vocabulary")
            self._seen[prompt] = True
            unique = np.flatnonzero(self._seen)
            self._seen_ids[: unique.size] = unique
            self._n_seen_ids = unique.size

        n_blocks = -(-vocab_size // _BLOCK)
        # Zero-padded so the probabilities reshape into whole blocks.
        self._probs = np.zeros(n_blocks * _BLOCK, dtype=_F32)

    def accept(self, token_id: int) -> None:
        """Record a generated token so later penalties account for it."""
        if not 0 <= token_id < self._vocab_size:
            raise ValueError(f"token id {token_id} out of range for vocab {self._vocab_size}")
        if self._counts[token_id] == 0:
            self._generated_ids[self._n_generated_ids] = token_id
            self._n_generated_ids += 1
        self._counts[token_id] += 1
        if self._params.penalty_last_n > 0:
            self._history.append(token_id)
        if not self._seen[token_id]:
            self._seen[token_id] = True
            self._seen_ids[self._n_seen_ids] = token_id
            self._n_seen_ids += 1

    def sample(self, logits: np.ndarray, *, in_place: bool = False) -> SampledToken:
        """The next token. ``in_place``: ``logits`` is a float32 row the caller owns and no
        longer needs, so bias and penalties go into it instead of a copy (of a 49k-entry
        row: ~10 us a token saved, measured in the decode loop)."""
        if logits.shape != (self._vocab_size,):
            raise ValueError(
                f"expected logits of shape ({self._vocab_size},), got {logits.shape}"
            )
        x = self._processed(logits if in_place and logits.dtype == _F32 else np.array(logits, dtype=_F32))

        log_z = _log_sum_exp(x) if self._want_logprobs else 0.0

        token_id: Optional[int] = None
        if not self._greedy:
            token_id = self._draw(x)
        if token_id is None:
            token_id = int(np.argmax(x))  # first maximum, i.e. lowest id on ties

        logprob = float(x[token_id]) - log_z if self._want_logprobs else 0.0
        top: tuple[tuple[int, float], ...] = ()
        if self._n_top:
            top = self._top_logprobs(x, log_z)
        return SampledToken(token_id=token_id, logprob=logprob, top_logprobs=top)

    def _processed(self, x: np.ndarray) -> np.ndarray:
        """Bias and penalties applied to ``x`` (float32), in place."""
        params = self._params

        if self._bias_ids is not None:
            x[self._bias_ids] += self._bias_values  # dict keys: no duplicate ids

        if params.repetition_penalty != 1.0 and self._n_seen_ids and params.penalty_last_n != 0:
            if params.penalty_last_n > 0:
                ids = np.unique(np.asarray(self._history[-params.penalty_last_n:], dtype=np.int64))
            else:
                ids = self._seen_ids[: self._n_seen_ids]
            values = x[ids]
            penalty = _F32(params.repetition_penalty)
            x[ids] = np.where(values > 0, values / penalty, values * penalty)

        if (params.frequency_penalty or params.presence_penalty) and self._n_generated_ids:
            ids = self._generated_ids[: self._n_generated_ids]
            x[ids] -= (
                params.frequency_penalty * self._counts[ids] + params.presence_penalty
            ).astype(_F32)
        return x

    def _draw(self, x: np.ndarray) -> Optional[int]:
        """Temperature + truncation + draw; None if the distribution is degenerate."""
        if self._inv_temperature != 1.0:
            x = x * _F32(self._inv_temperature)  # not in place: logprobs read x afterwards

        if not self._top_k and self._top_p >= 1.0 and self._typical_p >= 1.0:
            return self._draw_full_vocab(x)

        ids: Optional[np.ndarray] = None  # None: candidates are the whole vocabulary
        z = x
        if self._top_k:
            ids = self._top_k_ids(x)
            z = x[ids]
        if not np.isfinite(z.max()):
            return None
        probs = np.exp(z - z.max())

        if self._typical_p < 1.0:
            ids, probs = self._typical(ids, probs)
        if self._top_p < 1.0:
            ids, probs = self._nucleus(ids, probs)
        if self._min_p > 0.0:
            keep = probs >= self._min_p * probs.max()
            assert ids is not None  # set by top_k or top_p on this path
            ids, probs = ids[keep], probs[keep]

        index = _draw_index(probs, self._rng)
        if index is None:
            return None
        return int(index if ids is None else ids[index])

    def _top_k_ids(self, x: np.ndarray) -> np.ndarray:
        """The ids of the top_k largest logits. When top_p sorts them afterwards (their order
        then does not matter) they are found among the logits near the maximum first: a
        comparison pass (~30 us) instead of a partition of the whole vocabulary (~400 us)."""
        k = self._top_k
        if self._top_p < 1.0 and self._typical_p >= 1.0:
            top = x.max()
            for width in _TOP_K_WIDTHS:
                near = np.flatnonzero(x >= top - width)
                if near.size >= k:
                    if near.size > 8 * k:
                        break
                    return near[np.argpartition(x[near], near.size - k)[-k:]]
        return np.argpartition(x, self._vocab_size - k)[-k:]

    def _draw_full_vocab(self, x: np.ndarray) -> Optional[int]:
        top = x.max()
        if not np.isfinite(top):
            return None
        probs = self._probs[: self._vocab_size]
        np.subtract(x, top, out=probs)
        np.exp(probs, out=probs)
        if self._min_p > 0.0:
            probs[probs < _F32(self._min_p)] = 0.0  # the max probability is exp(0) == 1

        blocks = self._probs.reshape(-1, _BLOCK)
        cumulative = np.cumsum(blocks.sum(axis=1).astype(_F64))
        total = cumulative[-1]
        if not (0.0 < total < math.inf):
            return None
        u = self._rng.random() * total
        block = int(np.searchsorted(cumulative, u, side="right"))
        if block >= len(cumulative):  # u rounded up to total
            block = int(np.flatnonzero(np.diff(cumulative, prepend=0.0))[-1])
            u = cumulative[block]
        start = cumulative[block - 1] if block else 0.0
        index = _draw_index(blocks[block], None, u - start)
        if index is None:
            return None
        return block * _BLOCK + index

    def _typical(self, ids: Optional[np.ndarray], probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Locally typical candidates: by |surprise - entropy|, until their mass exceeds typical_p."""
        p = probs.astype(_F64) / probs.sum(dtype=_F64)
        with np.errstate(divide="ignore"):
            surprise = -np.log(p)
        present = p > 0
        entropy = float(np.sum(p[present] * surprise[present]))
        order = np.argsort(np.abs(surprise - entropy), kind="stable")
        cumulative = np.cumsum(p[order])
        keep = min(int(np.searchsorted(cumulative, self._typical_p, side="right")) + 1, len(order))
        order = order[:keep]
        return (order if ids is None else ids[order]), probs[order]

    def _nucleus(
        self, ids: Optional[np.ndarray], probs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keep the smallest most-likely set whose mass reaches top_p, sorted desc."""
        total = probs.sum(dtype=_F64)
        target = self._top_p * total * (1.0 - _TOP_P_RTOL)

        if ids is None:
            order = _descending_until(probs, target)
            ids = order
        else:
            order = np.lexsort((ids, -probs))
            ids = ids[order]

        sorted_probs = probs[order]
        cumulative = np.cumsum(sorted_probs, dtype=_F64)
        keep = min(int(np.searchsorted(cumulative, target, side="left")) + 1, len(order))
        return ids[:keep], sorted_probs[:keep]

    def _top_logprobs(self, x: np.ndarray, log_z: float) -> tuple[tuple[int, float], ...]:
        n = self._n_top
        if n < self._vocab_size:
            ids = np.argpartition(x, self._vocab_size - n)[-n:]
        else:
            ids = np.arange(self._vocab_size)
        ids = ids[np.lexsort((ids, -x[ids]))]
        return tuple((int(i), float(x[i]) - log_z) for i in ids)


def _assert_valid(params: SamplingParams, vocab_size: int) -> None:
    """The request contract holds: the engine validated the request before it got here."""
    for name, bounds in RANGES.items():
        value = getattr(params, name)
        assert value in bounds, f"{name} must be {bounds.describe()}, got {value}"
    assert params.top_k >= 0, f"top_k must be >= 0, got {params.top_k}"
    assert params.penalty_last_n >= -1, f"penalty_last_n must be >= -1, got {params.penalty_last_n}"
    assert 0 <= params.top_logprobs <= MAX_TOP_LOGPROBS, f"top_logprobs out of range: {params.top_logprobs}"
    for token_id, bias in params.logit_bias.items():
        assert 0 <= token_id < vocab_size, f"logit_bias token id {token_id} out of range"
        assert bias in LOGIT_BIAS_RANGE, f"logit_bias value {bias} out of range"


def _log_sum_exp(x: np.ndarray) -> float:
    top = float(x.max())
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.exp(x - _F32(top)).sum(dtype=_F64)))


def _descending_until(probs: np.ndarray, target: float) -> np.ndarray:
    """Indices of probs, most likely first (lowest index on ties), covering >= target mass.

    Most of the mass usually sits in a few tokens, so try growing candidate
    sets before sorting the whole vocabulary.  Candidates are found by value
    (np.partition + threshold), which is cheaper than np.argpartition.
    """
    n = probs.size
    # First by value (probs are relative to the most likely token, which is 1): a comparison
    # pass costs ~30 us where a partition of 49k values costs ~300 us. Any candidate set that
    # holds every token at or above a threshold and reaches the target sorts to the same
    # prefix, so the nucleus is the same whichever set found it.
    for threshold in _NUCLEUS_THRESHOLDS:
        candidates = np.flatnonzero(probs >= threshold)
        if candidates.size > 2 * _NUCLEUS_STEPS[-1]:
            break
        if probs[candidates].sum(dtype=_F64) >= target:
            return candidates[np.lexsort((candidates, -probs[candidates]))]
    for k in _NUCLEUS_STEPS:
        if k >= n:
            break
        threshold = np.partition(probs, n - k)[n - k]
        candidates = np.flatnonzero(probs >= threshold)
        if candidates.size > 2 * _NUCLEUS_STEPS[-1]:
            break  # massive ties at the threshold: sorting everything is cheaper
        if probs[candidates].sum(dtype=_F64) >= target:
            return candidates[np.lexsort((candidates, -probs[candidates]))]
    # Rare (huge nucleus); a stable sort of the full vocabulary costs ~3 ms, so
    # ties keep whatever order the default sort gives (still deterministic).
    return np.argsort(-probs)


def _draw_index(
    probs: np.ndarray, rng: Optional[np.random.Generator], u: Optional[float] = None
) -> Optional[int]:
    """Inverse-CDF draw from unnormalized probs, with u drawn from rng if not given."""
    cumulative = np.cumsum(probs.astype(_F64))
    total = cumulative[-1]
    if not (0.0 < total < math.inf):
        return None
    if u is None:
        assert rng is not None
        u = rng.random() * total
    index = int(np.searchsorted(cumulative, u, side="right"))
    if index >= len(cumulative):  # rounding put u at or past the total
        index = int(np.flatnonzero(probs)[-1])
    return index
