"""One ctransformers context: a KV cache that serves one sequence at a time.

ctransformers is not thread-safe: an ``LLM`` object and its KV cache belong to one
sequence. The scheduler gives each request a whole context; this class knows which
tokens its cache holds, so a new prompt can skip the part it shares with them.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from inference_service.errors import Cancelled, ModelLoadError


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ModelContext:
    """A ctransformers context and the tokens its KV cache holds.

    Prompt evaluation is bit-for-bit reproducible only for the same evaluation schedule:
    ggml's results for a token depend on the batch it was evaluated in (a token decoded
    alone, or a prompt split at another point, gives slightly different logits, enough to
    change a greedy answer). So prompts are always evaluated in blocks aligned to absolute
    positions (multiples of ``block_size``), and with ``exact_reuse`` only whole blocks
    that were evaluated as whole prompt blocks are reused. A request then gives the same
    tokens whatever the cache held before it: the same seed, the same text. Thread count
    does not change results (measured).

    With ``exact_reuse=False`` every cached token is reused, tokens decoded one at a time
    included, as llama.cpp's server does: faster next chat turns, but the text can then
    depend on what the slot served before.
    """

    def __init__(
        self,
        path: Path,
        *,
        context_length: int,
        block_size: int,
        threads: int,
        exact_reuse: bool = True,
    ):
        from ctransformers import AutoModelForCausalLM  # heavy import, engine side only

        try:
            self._llm = AutoModelForCausalLM.from_pretrained(
                str(path),
                model_type="llama",
                context_length=context_length,
                batch_size=block_size,
                threads=threads,
                gpu_layers=0,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"ctransformers could not load {path}: {exc}") from exc
        self.context_length = context_length
        self.block_size = block_size
        self.threads = threads
        self.exact_reuse = exact_reuse
        self.vocab_size = self._llm.vocab_size
        self.cached_tokens: list[int] = []
        self.scores_many = False  # ctransformers keeps the logits of the last position only
        # Leading cached tokens evaluated as whole aligned prompt blocks (reproducible to reuse).
        self.canonical_length = 0

    @property
    def cached_length(self) -> int:
        return len(self.cached_tokens)

    def reuse_prefix(self, prompt: Sequence[int]) -> int:
        """Keeps the reusable prefix of the cache for ``prompt`` (drops the rest); its length."""
        reused = self.reusable_prefix(prompt)
        self.truncate(reused)
        return reused

    def reusable_prefix(self, prompt: Sequence[int]) -> int:
        """How many leading prompt tokens this cache can serve.

        At least one prompt token is always evaluated again, because sampling needs
        the logits that only an evaluation produces.
        """
        shared = min(common_prefix_length(self.cached_tokens, prompt), len(prompt) - 1)
        if not self.exact_reuse:
            return shared
        shared = min(shared, self.canonical_length)
        return shared - shared % self.block_size

    def evaluate(
        self,
        tokens: Sequence[int],
        *,
        cancelled: threading.Event | None = None,
        threads: Callable[[], int] | None = None,
        on_evaluated: Callable[[int], None] | None = None,
    ) -> None:
        """Appends ``tokens`` to the cache in blocks aligned to absolute positions.

        Cancellation is checked between blocks, so a long prompt stops promptly;
        ``on_evaluated`` hears of each block's token count as it is done.
        """
        block = self.block_size
        done = 0
        while done < len(tokens):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled("cancelled during prompt evaluation")
            position = len(self.cached_tokens)
            size = min(block - position % block, len(tokens) - done)
            batch = tokens[done : done + size]
            array = (ctypes.c_int * size)(*batch)
            ok = self._llm.ctransformers_llm_batch_eval(
                array, size, position, block, threads() if threads else self.threads
            )
            if not ok:
                self.truncate(0)  # the cache state is unknown now
                raise RuntimeError("ctransformers failed to evaluate tokens")
            self.cached_tokens.extend(batch)
            if on_evaluated is not None:
                on_evaluated(size)
            if size == block and self.canonical_length == position:
                self.canonical_length = position + size
            done += size

    def truncate(self, length: int) -> None:
        """Forgets cached tokens past ``length``; the next evaluation overwrites them."""
        del self.cached_tokens[length:]
        self.canonical_length = min(self.canonical_length, length)

    def detach(self) -> None:
        """The generation using this slot ended (nothing to do: no shared decoder to tell)."""

    def others_decoding(self) -> bool:
        return False  # a context of its own: nothing else decodes in it

    def evaluate_rows(self, tokens: Sequence[int], rows: int, *, cancelled=None) -> list[np.ndarray]:
        raise NotImplementedError("ctransformers returns the logits of the last position only")

    def logits(self) -> np.ndarray:
        """The last evaluated position's logits: a zero-copy view, valid until the next evaluation."""
        pointer = self._llm.ctransformers_llm_logits_data()
        size = self._llm.ctransformers_llm_logits_size()
        return np.ctypeslib.as_array(pointer, shape=(size,))[-self.vocab_size :]
