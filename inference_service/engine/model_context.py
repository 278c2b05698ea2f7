"""One ctransformers context: a KV cache that serves one sequence at a time.

ctransformers is not thread-safe: an ``LLM`` object and its KV cache belong to one
sequence. The scheduler gives each request a whole context; this class only knows
which tokens its cache holds, so a new prompt can skip their shared prefix.
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
    def __init__(self, path: Path, *, context_length: int, batch_size: int, threads: int):
        from ctransformers import AutoModelForCausalLM  # heavy import, engine side only

        try:
            self._llm = AutoModelForCausalLM.from_pretrained(
                str(path),
                model_type="llama",
                context_length=context_length,
                batch_size=batch_size,
                threads=threads,
                gpu_layers=0,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"ctransformers could not load {path}: {exc}") from exc
        self.context_length = context_length
        self.batch_size = batch_size
        self.threads = threads
        self.vocab_size = self._llm.vocab_size
        self.cached_tokens: list[int] = []

    def reusable_prefix(self, prompt: Sequence[int]) -> int:
        """How many leading prompt tokens this cache already holds.

        At least one prompt token is always evaluated again, because sampling needs
        the logits that only an evaluation produces.
        """
        return min(common_prefix_length(self.cached_tokens, prompt), len(prompt) - 1)

    def evaluate(
        self,
        tokens: Sequence[int],
        *,
        cancelled: threading.Event | None = None,
        threads: Callable[[], int] | None = None,
    ) -> None:
        """Appends ``tokens`` to the cache, one batch at a time.

        Cancellation is checked between batches, so a long prompt stops promptly.
        """
        for start in range(0, len(tokens), self.batch_size):
            if cancelled is not None and cancelled.is_set():
                raise Cancelled("cancelled during prompt evaluation")
            batch = tokens[start : start + self.batch_size]
            array = (ctypes.c_int * len(batch))(*batch)
            ok = self._llm.ctransformers_llm_batch_eval(
                array,
                len(batch),
                len(self.cached_tokens),
                self.batch_size,
                threads() if threads else self.threads,
            )
            if not ok:
                self.cached_tokens.clear()  # the cache state is unknown now
                raise RuntimeError("ctransformers failed to evaluate tokens")
            self.cached_tokens.extend(batch)

    def truncate(self, length: int) -> None:
        """Forgets cached tokens past ``length``; the next evaluation overwrites them."""
        del self.cached_tokens[length:]

    def logits(self) -> np.ndarray:
        """The last evaluated position's logits: a zero-copy view, valid until the next evaluation."""
        pointer = self._llm.ctransformers_llm_logits_data()
        size = self._llm.ctransformers_llm_logits_size()
        return np.ctypeslib.as_array(pointer, shape=(size,))[-self.vocab_size :]
