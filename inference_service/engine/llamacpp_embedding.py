"""Embeddings with llama.cpp, through llama-cpp-python's low-level ctypes API.

:class:`LlamaCppEmbedder` owns one llama.cpp context made for embeddings (``embeddings``
on, one KV cache shared by every sequence of a batch) over a ``llama_model`` its caller
loaded and keeps alive. It embeds token sequences (tokenizing is the caller's job) and
returns one float32 vector per sequence, normalized to unit L2 length as OpenAI and
llama-server return them.

Pooling. The GGUF says how a sequence's token states become one vector
(``<arch>.pooling_type``): llama.cpp reads it when the context asks for
``LLAMA_POOLING_TYPE_UNSPECIFIED``. Embedding models declare ``mean``, ``cls`` or ``last``;
generation models declare nothing, which llama.cpp reads as ``none`` (one vector per token):
for them the embedder asks for ``mean`` (the average of the token states, llama-cpp-python's
and most servers' choice) and ``pooling_fallback`` says so. ``rank`` (rerankers: a relevance
score, not a vector) is refused.

Batching. One sequence per ``llama_decode``, the memory cleared before each: a vector must
not depend on what else was in its request or in the requests beside it (clients dedupe and
cache by vector). Packing several sequences into one decode, each under its own sequence id in
one KV cache, changes the order in which llama.cpp sums a sequence's attention and its pooled
mean (both run over every cell of the batch, a sequence's values landing in other SIMD lanes
at another offset): four copies of one text in one batch came out bit-identical but for one,
off by 1e-3 (and others by 3e-8). Alone, a sequence is computed the same way whatever surrounds
it: identical text, identical vector, in any position, under any load. The cost (weights read
once per sequence instead of once per batch) was 1.4x on 256 short texts of the default model.

llama.cpp pools per micro-batch, so:

* causal models (decoders: every generation model) decode in micro-batches of
  ``max_batch_tokens``; a sequence longer than that is decoded in chunks that continue its
  positions and cache, and its chunks' pooled states are combined (``mean``: averaged, weighted
  by their token counts, which is the mean over the whole sequence; ``last``: the last chunk's;
  ``cls``: the first's). A sequence is always chunked the same way (the micro-batch is fixed),
  so chunking leaves it deterministic too. Memory stays that of ``max_batch_tokens`` per step
  (llama.cpp computes the vocabulary logits of every token of an embedding batch, 4 bytes x
  vocabulary x tokens: 96 MiB for 512 tokens of a 49k vocabulary) plus the KV cache of
  ``context_length``.
* non-causal models (BERT-like embedders, whose every token sees every other) need a whole
  sequence in one micro-batch: their micro-batch is ``context_length``.

Numbers. With llama.cpp's CPU flash attention a sequence decoded in chunks of 16 tokens
differed from itself decoded whole by 0.002; without it, by 6e-8. So causal models run
without flash attention. Their micro-batch is small (``max_batch_tokens``), so the attention
matrix llama.cpp then materializes stays modest: micro-batch x cached tokens x heads x 4 bytes
(9 MiB for 512 tokens on the default model, 72 MiB for the last chunk of a 4096-token input;
measured resident memory after such an input: 484 MB against 444 MB with flash attention, the
model's 152 MB included). Whole-sequence models keep llama.cpp's default (flash attention where
supported): their micro-batch is the whole context.

Encoder-only models (``llama_model_has_encoder`` and not ``llama_model_has_decoder``, e.g.
T5's encoder) run ``llama_encode``; every other model runs ``llama_decode`` (BERT-like models,
which have no KV cache, are encoded by llama.cpp inside it). Encoder-decoder models (T5) are
refused: llama.cpp defines no embedding for them.

Threads: one llama context is not thread-safe; a lock serializes ``embed`` (and ``close``).
Cancellation is checked before each ``llama_decode`` (at most ``max_batch_tokens`` tokens of
work late). ``close()`` frees the context and the batch; so does garbage collection. At
interpreter exit nothing is freed (the process ends and the OS takes the memory back; a free
then could run after the caller freed the model or after llama.cpp's own teardown).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref
from typing import Callable, Optional, Sequence

import numpy as np

from inference_service.engine import compute_thread, llamacpp_runtime
from inference_service.errors import Cancelled, ContextLengthExceeded, InvalidRequest

log = logging.getLogger("inference_service.llamacpp")

# llama_pooling_type values (llama.h) and our names for them.
_UNSPECIFIED, _NONE, _MEAN, _CLS, _LAST, _RANK = -1, 0, 1, 2, 3, 4
POOLING_NAMES = {_MEAN: "mean", _CLS: "cls", _LAST: "last"}

_PROBE_CONTEXT = 256  # tokens of the throwaway context that asks llama.cpp how the model pools


def _free_native(llama, state: dict) -> None:
    """Frees what ``state`` holds (once); used by ``close()`` and by garbage collection."""
    batch, ctx = state.pop("batch", None), state.pop("ctx", None)
    if batch is not None:
        llama.llama_batch_free(batch)
    if ctx is not None:
        llama.llama_free(ctx)


class LlamaCppEmbedder:
    """One embedding context over a loaded ``llama_model`` (see the module's docstring).

    ``context_length`` is the longest sequence it embeds (and its KV cache); ``threads`` the
    compute threads; ``max_batch_tokens`` the most tokens one decode of a causal model takes
    (a longer sequence is decoded in chunks of that many).

    Attributes: ``dimensions`` (the vectors' length), ``pooling`` ("mean", "cls" or "last"),
    ``pooling_fallback`` (True when the model declared no pooling and "mean" was chosen),
    ``causal``, ``uses_encoder``, ``flash_attention``, ``context_length``, ``vocab_size``.
    """

    def __init__(self, model, *, context_length: int, threads: int, max_batch_tokens: int = 512):
        if context_length < 1 or threads < 1 or max_batch_tokens < 1:
            raise ValueError("context_length, threads and max_batch_tokens must be positive")
        llamacpp_runtime.initialize()
        llama = llamacpp_runtime.llama_cpp_module()
        self._llama = llama
        self._model = model
        self._lock = threading.Lock()
        self.context_length = context_length
        self.vocab_size = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))
        n_embd_out = getattr(llama, "llama_model_n_embd_out", None)  # differs from n_embd for a few
        self.dimensions = int(n_embd_out(model) if n_embd_out else llama.llama_model_n_embd(model))
        has_encoder, has_decoder = llama.llama_model_has_encoder(model), llama.llama_model_has_decoder(model)
        if has_encoder and has_decoder:
            raise InvalidRequest("encoder-decoder models (T5) cannot compute embeddings here", "model")
        self.uses_encoder = bool(has_encoder and not has_decoder)

        self._threads = threads
        self._threads_now: Optional[Callable[[], int]] = None
        declared, self.causal = self._probe(threads)
        if declared == _RANK:
            raise InvalidRequest("this model is a reranker (pooling 'rank'): it scores pairs and has no "
                                 "embedding vectors", "model")
        self.pooling_fallback = declared not in POOLING_NAMES
        pooling = _MEAN if self.pooling_fallback else declared
        self.pooling = POOLING_NAMES[pooling]
        if self.uses_encoder or not self.causal:  # a whole sequence in one micro-batch
            self._ubatch = context_length
            self.flash_attention = True  # llama.cpp's choice: the attention matrix grows with context²
        else:  # chunks of max_batch_tokens
            self._ubatch = min(max_batch_tokens, context_length)
            self.flash_attention = False  # see the module's docstring: chunks then leave vectors alone

        params = self._params(context_length, self._ubatch, pooling, threads)
        if not self.flash_attention:
            params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._state: dict = {}
        self._finalizer = weakref.finalize(self, _free_native, llama, self._state)
        self._finalizer.atexit = False  # see the module's docstring
        ctx = llama.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create an embedding context of {context_length} tokens")
        self._state["ctx"] = ctx
        self._state["batch"] = llama.llama_batch_init(self._ubatch, 0, 1)
        self._ctx, self._batch = ctx, self._state["batch"]
        if llama.llama_pooling_type(ctx) != pooling:  # never seen; a mismatch would be silent otherwise
            raise RuntimeError(f"llama.cpp pools with type {llama.llama_pooling_type(ctx)}, not {pooling}")
        log.info("embedding context: %d dimensions, pooling %s%s, %s, context %d, micro-batch %d",
                 self.dimensions, self.pooling, " (the model declares none)" if self.pooling_fallback else "",
                 "encoder" if self.uses_encoder else ("causal" if self.causal else "non-causal"),
                 context_length, self._ubatch)

    # --- construction -----------------------------------------------------------------------

    def _params(self, n_ctx: int, n_ubatch: int, pooling: int, threads: int):
        params = self._llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ubatch
        params.n_ubatch = n_ubatch
        params.n_seq_max = 1
        params.embeddings = True
        params.pooling_type = pooling
        params.n_threads = threads
        params.n_threads_batch = threads
        return params

    def _probe(self, threads: int) -> tuple[int, bool]:
        """The pooling the GGUF declares (as llama.cpp resolves it) and whether attention is causal."""
        llama = self._llama
        ctx = llama.llama_init_from_model(
            self._model, self._params(_PROBE_CONTEXT, _PROBE_CONTEXT, _UNSPECIFIED, threads))
        if not ctx:
            raise RuntimeError("llama.cpp could not create an embedding context")
        try:
            return int(llama.llama_pooling_type(ctx)), bool(llama.llama_get_causal_attn(ctx))
        finally:
            llama.llama_free(ctx)

    # --- embedding --------------------------------------------------------------------------

    def set_threads(self, threads: int) -> None:
        """Compute threads for the next decodes (an adaptive thread policy may call this)."""
        with self._lock:
            if self._state.get("ctx") is not None:
                self._threads = threads
                self._llama.llama_set_n_threads(self._ctx, threads, threads)

    def embed(self, sequences: Sequence[Sequence[int]], cancelled: Optional[threading.Event] = None,
              threads: Optional[Callable[[], int]] = None) -> list[np.ndarray]:
        """One unit-length float32 vector per sequence, in order.

        Each sequence holds at least one token: empty inputs are refused where requests come
        in (the service's ``request_checks``, ``Engine.embed``), not again here.
        Raises ContextLengthExceeded (param "input") for a sequence longer than the context,
        InvalidRequest for a token id outside the vocabulary, Cancelled
        once ``cancelled`` is set (checked before each decode). ``threads``, when given, says
        the compute threads before each decode (an adaptive policy's count: a request of
        2,048 inputs outlives any one estimate); vectors do not depend on it.
        """
        checked = [self._check(i, seq) for i, seq in enumerate(sequences)]
        with self._lock:
            if self._state.get("ctx") is None:
                raise RuntimeError("the embedder is closed")
            self._threads_now = threads
            try:
                return [self._embed_one(tokens, cancelled) for tokens in checked]
            finally:
                self._clear()

    def _check(self, i: int, seq: Sequence[int]) -> list[int]:
        tokens = [int(t) for t in seq]
        if len(tokens) > self.context_length:
            raise ContextLengthExceeded(
                f"input {i} has {len(tokens)} tokens, more than this model's embedding context of "
                f"{self.context_length} tokens", param="input")
        low, high = min(tokens), max(tokens)
        if low < 0 or high >= self.vocab_size:
            bad = low if low < 0 else high
            raise InvalidRequest(f"input {i} holds token id {bad}, outside the vocabulary (0..{self.vocab_size - 1})",
                                 "input")
        return tokens

    def _embed_one(self, tokens: list[int], cancelled: Optional[threading.Event]) -> np.ndarray:
        """One sequence, alone in a cleared context (see "Batching" in the module's docstring)."""
        self._clear()
        if len(tokens) > self._ubatch:
            return self._embed_long(tokens, cancelled)
        self._check_cancelled(cancelled)
        self._fill(tokens, 0)
        self._run()
        return _unit(self._pooled())

    def _embed_long(self, tokens: list[int], cancelled: Optional[threading.Event]) -> np.ndarray:
        """A causal model's sequence longer than a micro-batch: chunks at continuing positions."""
        total = np.zeros(self.dimensions, dtype=np.float64)
        first: Optional[np.ndarray] = None
        pooled = None
        for start in range(0, len(tokens), self._ubatch):
            self._check_cancelled(cancelled)
            chunk = tokens[start:start + self._ubatch]
            self._fill(chunk, start)
            self._run()
            pooled = self._pooled()
            if first is None:
                first = pooled
            total += pooled.astype(np.float64) * len(chunk)
        if self.pooling == "mean":
            return _unit(total / len(tokens))
        return _unit(first if self.pooling == "cls" else pooled)

    def _fill(self, tokens: list[int], position: int) -> None:
        """Puts ``tokens`` (sequence 0, from ``position`` on) into the batch; every token is an output."""
        batch = self._batch
        for offset, token in enumerate(tokens):
            batch.token[offset] = token
            batch.pos[offset] = position + offset
            batch.n_seq_id[offset] = 1
            batch.seq_id[offset][0] = 0
            batch.logits[offset] = 1
        batch.n_tokens = len(tokens)

    def _run(self) -> None:
        if self._threads_now is not None:
            n = max(1, int(self._threads_now()))
            if n != self._threads:
                self._threads = n
                self._llama.llama_set_n_threads(self._ctx, n, n)
        run = self._llama.llama_encode if self.uses_encoder else self._llama.llama_decode
        # On the process's one compute thread: a second thread running llama.cpp's compute
        # would halve the decoding speed of every model for as long as it lives (compute_thread).
        code = compute_thread.shared().call(lambda: run(self._ctx, self._batch))
        if code != 0:
            raise RuntimeError(f"llama.cpp failed to {'encode' if self.uses_encoder else 'decode'} an embedding "
                               f"batch of {self._batch.n_tokens} tokens (code {code})")

    def _pooled(self) -> np.ndarray:
        pointer = self._llama.llama_get_embeddings_seq(self._ctx, 0)
        if not pointer:
            raise RuntimeError("llama.cpp gave no pooled embedding")
        values = ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float))
        return np.ctypeslib.as_array(values, shape=(self.dimensions,)).astype(np.float32, copy=True)

    def _clear(self) -> None:
        memory = self._llama.llama_get_memory(self._ctx)
        if memory:
            self._llama.llama_memory_clear(memory, True)

    @staticmethod
    def _check_cancelled(cancelled: Optional[threading.Event]) -> None:
        if cancelled is not None and cancelled.is_set():
            raise Cancelled("the embedding was cancelled")

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the context and the batch (the model stays the caller's). Idempotent."""
        with self._lock:
            self._finalizer()

    def __enter__(self) -> "LlamaCppEmbedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` scaled to unit L2 length (computed in float64), as float32; zero stays zero."""
    v64 = np.asarray(vector, dtype=np.float64)
    norm = float(np.sqrt(np.dot(v64, v64)))
    return (v64 / norm if norm > 0 else v64).astype(np.float32)
