"""Continuous batching on one llama.cpp context: many sequences, one ``llama_decode`` per step.

Each slot of a llama.cpp model is a ``BatchedSequence`` (a sequence id in one shared
context, with its own KV cache stream). A generation thread calls ``evaluate(tokens)`` as it
would on a ctransformers context and blocks; the ``BatchedDecoder``, stepped on the process's
one compute thread (``compute_thread``), gathers what every sequence has submitted, decodes it
in one batch and hands each sequence the logits of its last token. While some sequences
decode token by token, a new prompt joins the running batch in chunks (chunked prefill), so
it neither waits for a free engine nor stalls the streams already running for the length of
its whole prompt.

Sampling, stop strings, logprobs and the queue stay in the shared engine code: a sequence
only turns tokens into logits.

The KV cache layout decides what concurrency costs and does to results (measured on the
default model, 2 cores, 4 slots, through the edge; ``make bench-engines``):
- ``per-slot`` (the default; llama.cpp's non-unified KV, as llama-server ``-np N`` runs):
  each sequence attends only to its own cache stream. A stream's text is the same alone or
  beside others (22 of 22 concurrent trials matched their solo runs exactly; a test asserts
  it). Batches pay off only when the sequences of a step have consecutive ids (llama.cpp's
  ``split_equal``), so a step's tokens go in sequence order: 4 and 8 streams then ran at
  1.37x and 1.45x the single-stream rate (0.91x and 0.88x before that ordering).
- ``unified``: every sequence's cells in one cache, and the attention of every sequence
  spans all of them, so its cost grows with what the other slots hold: a cold ~1,000-token
  chat prompt beside full slots took 5.7 s against 4.1 s per-slot. And when two prompts share
  a step, ggml's kernels take another code path and a prompt's logits move (up to 0.8 on one
  logit): greedy text under concurrent load differed from the same request alone in 9 of 12
  trials (never before the 6th token).
Either way prefix reuse keeps every cached token (decoded ones too), as llama-server does.

Prefix sharing (models without sliding-window or recurrent layers): a prompt that starts with
tokens another sequence holds (a system prompt, a tool preamble, few-shot examples shared by
many conversations, the prompt of ``n`` choices) gets those cells copied into its own
sequence (``llama_memory_seq_cp``) instead of evaluating them again. In a unified cache the
cells are shared, not duplicated; between per-slot streams llama.cpp copies a whole stream
(~15 ms for 4,096 cells, at the next decode) and the copy is cut back to the prefix. The
scheduler counts such a copyable prefix when it chooses a slot, so a new conversation takes an
empty slot and still skips the shared part.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from inference_service.engine import compute_thread
from inference_service.engine.llamacpp_runtime import LlamaModel
from inference_service.engine.model_context import common_prefix_length
from inference_service.errors import Cancelled, ModelLoadError

log = logging.getLogger(__name__)

# How long the decoder waits, after handing out logits, for those sequences to submit their
# next token (they are sampling), so that they share the next step instead of alternating.
_GATHER_SECONDS = 0.004
_POLL_SECONDS = 0.05  # a waiting sequence re-checks cancellation at least this often
KV_LAYOUTS = ("per-slot", "unified")
# Per-slot, a copied prefix costs a whole stream's buffers (~15 ms for 4,096 cells of the
# default model, against ~3.5-5 ms a prompt token evaluated): worth it from about one token
# per 1,024 cells of the stream.
_CELLS_PER_COPIED_TOKEN = 1024


@dataclass(eq=False)
class _Submission:
    sequence: "BatchedSequence"
    tokens: Sequence[int]
    rows: int = 1  # the last ``rows`` tokens get logits (more than one: a speculative draft)
    done_count: int = 0  # tokens already in the KV cache
    in_flight: bool = False  # part of the batch being decoded now
    withdrawn: bool = False
    logits: list[np.ndarray] = field(default_factory=list)  # one row per scored token, in order
    error: BaseException | None = None
    finished: bool = False
    enqueued: float = field(default_factory=time.monotonic)
    # Wakes this submission's waiter alone (on the decoder's lock): with one condition for all,
    # every submission and every step woke every waiting sequence, n² wake-ups a step.
    ready: threading.Condition | None = None

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.done_count


class BatchedDecoder:
    """One llama.cpp context with ``sequences`` KV streams, decoded in steps on the process's
    compute thread (``compute_thread``: one thread runs all of llama.cpp's compute)."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        sequences: int,
        context_length: int,
        threads: Callable[[], int],
        max_batch_tokens: int = 512,
        prefill_chunk: int = 128,
        kv_layout: str = "per-slot",
        compute: compute_thread.ComputeThread | None = None,
    ):
        if kv_layout not in KV_LAYOUTS:
            raise ValueError(f"kv_layout must be one of {', '.join(KV_LAYOUTS)}, not {kv_layout!r}")
        llama = model.llama
        self._llama = llama
        self.model = model
        self.context_length = context_length
        self.max_batch_tokens = max_batch_tokens
        # Prompt tokens per step while other sequences are decoding (all of the budget when
        # none is): bounds how long one step, hence one streamed token, can take.
        self.prefill_chunk = prefill_chunk
        self._threads = threads
        params = llama.llama_context_default_params()
        params.n_ctx = context_length * sequences
        params.n_batch = max_batch_tokens
        params.n_ubatch = max_batch_tokens
        params.n_seq_max = sequences
        params.kv_unified = kv_layout == "unified"
        params.embeddings = False
        initial = max(1, threads())
        params.n_threads = initial
        params.n_threads_batch = initial
        self._context = llama.llama_init_from_model(model.pointer, params)
        if not self._context:
            raise ModelLoadError(f"llama.cpp could not create a context of {params.n_ctx} tokens for {model.path}")
        self._memory = llama.llama_get_memory(self._context)
        # Partial sequences (a prefix copied, a draft's tail dropped) work only for plain attention.
        self.cuts_sequences = _can_copy_partial_sequences(llama, model)
        self._unified = kv_layout == "unified"
        # Fewest tokens worth copying: any in a unified cache (cells are shared), enough to
        # outweigh a whole stream's copy between per-slot streams.
        self.min_copy = 1 if self._unified else max(4, context_length // _CELLS_PER_COPIED_TOKEN)
        self.shares_prefixes = self.cuts_sequences
        self.prefixes_copied = 0  # tokens copied between sequences instead of evaluated (tests, logs)
        self.vocab_size = model.vocab_size
        self._batch = llama.llama_batch_init(max_batch_tokens, 0, 1)
        self._current_threads = initial
        self.sequences = [BatchedSequence(self, i) for i in range(sequences)]
        self._compute_thread = compute or compute_thread.shared()
        # The queue and the submissions' state; the compute thread's condition, so that a
        # submission wakes it.
        self._lock = self._compute_thread.condition
        self._compute = threading.Lock()  # every llama call on the context (it is not thread-safe)
        self._queue: list[_Submission] = []
        self._awaited: set[int] = set()  # sequences that just got logits and will likely submit again
        self._closed = False
        self.steps = 0  # decodes run (for tests and metrics)
        self.batched_sequences = 0  # sum over steps of the sequences in each
        self._compute_thread.register(self)

    # --- called from generation threads ---------------------------------------------------

    def submit(self, sequence: "BatchedSequence", tokens: Sequence[int], rows: int = 1) -> _Submission:
        if not 0 < rows <= len(tokens):  # an empty submission would never finish
            raise ValueError(f"{len(tokens)} tokens cannot give {rows} rows of logits")
        submission = _Submission(sequence, tokens, rows=rows, ready=self._compute_thread.waiter())
        with self._lock:
            if self._closed:
                raise RuntimeError("the llama.cpp decoder is closed")
            self._awaited.discard(sequence.seq_id)
            self._queue.append(submission)
            self._lock.notify_all()
        return submission

    def wait(self, submission: _Submission, cancelled: threading.Event | None) -> list[np.ndarray]:
        with self._lock:
            while not submission.finished:
                if cancelled is not None and cancelled.is_set() and not submission.withdrawn:
                    submission.withdrawn = True
                    if not submission.in_flight:
                        self._drop(submission)
                if submission.withdrawn and not submission.in_flight and not submission.finished:
                    self._drop(submission)
                    raise Cancelled("cancelled during evaluation")
                submission.ready.wait(_POLL_SECONDS)
            if submission.error is not None:
                raise submission.error
            assert len(submission.logits) == submission.rows
            return submission.logits

    def _drop(self, submission: _Submission) -> None:
        if submission in self._queue:
            self._queue.remove(submission)
        self._lock.notify_all()

    def others_decoding(self, sequence: "BatchedSequence") -> bool:
        """Whether any other sequence is generating (then a draft would slow its steps)."""
        with self._lock:
            return any(s != sequence.seq_id for s in self._awaited) or any(
                q.sequence is not sequence for q in self._queue)

    def detach(self, sequence: "BatchedSequence") -> None:
        """The sequence's generation ended: the decoder stops waiting for its next token."""
        with self._lock:
            self._awaited.discard(sequence.seq_id)
            self._lock.notify_all()

    def truncate(self, sequence: "BatchedSequence", length: int) -> None:
        """Drops the sequence's KV cells from ``length`` on (never during a decode); a cache
        that cannot drop part of a sequence (sliding window, recurrent) is cleared instead."""
        with self._lock:
            if length >= len(sequence.cached_tokens) or self._closed:
                return
            with self._compute:
                if not self._llama.llama_memory_seq_rm(self._memory, sequence.seq_id, length, -1):
                    self._llama.llama_memory_seq_rm(self._memory, sequence.seq_id, 0, -1)
                    length = 0
            del sequence.cached_tokens[length:]

    def longest_cached_prefix(self, prompt: Sequence[int]) -> int:
        """The longest prefix of ``prompt`` any sequence holds, busy or not (0 without sharing)."""
        if not self.shares_prefixes:
            return 0
        with self._lock:
            return max((common_prefix_length(s.cached_tokens, prompt) for s in self.sequences), default=0)

    def copy_longest_prefix(self, target: "BatchedSequence", prompt: Sequence[int], limit: int) -> int:
        """Gives ``target`` (whose cache holds the first ``len(target.cached_tokens)`` tokens of
        ``prompt``) the longest prefix of ``prompt``, at most ``limit`` tokens, another sequence
        holds, when that is longer than what it has: the cells are copied, not evaluated.
        Returns how many prompt tokens ``target`` now holds."""
        have = len(target.cached_tokens)
        if not self.shares_prefixes:
            return have
        with self._lock:
            best, source = have, None
            for sequence in self.sequences:
                if sequence is target:
                    continue
                shared = min(common_prefix_length(sequence.cached_tokens, prompt), limit)
                if shared > best:
                    best, source = shared, sequence
            if source is None or best - have < self.min_copy:
                return have
            # Lock order: _lock, then _compute (as in _finish). The source may be decoding: it
            # only appends cells, and removes its own only in truncate(), under _lock as well.
            with self._compute:
                self._llama.llama_memory_seq_rm(self._memory, target.seq_id, -1, -1)
                if self._unified:
                    self._llama.llama_memory_seq_cp(self._memory, source.seq_id, target.seq_id, 0, best)
                else:
                    # Between KV streams llama.cpp copies only whole streams (the buffers at the
                    # next decode, before it writes anything): copy all, then cut to the prefix.
                    self._llama.llama_memory_seq_cp(self._memory, source.seq_id, target.seq_id, -1, -1)
                    self._llama.llama_memory_seq_rm(self._memory, target.seq_id, best, -1)
            target.cached_tokens[:] = prompt[:best]
            self.prefixes_copied += best - have
        log.debug("sequence %d: %d prompt tokens copied from sequence %d", target.seq_id, best - have, source.seq_id)
        return best

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._compute_thread.unregister(self)
            self._fail_waiting()
            self._lock.notify_all()
        with self._compute:  # a step already running ends first
            self._llama.llama_batch_free(self._batch)
            self._llama.llama_free(self._context)
            self._context = None

    # --- steps, on the compute thread (compute_thread.Stepper) ----------------------------

    def has_work(self) -> bool:
        return bool(self._queue) and not self._closed

    def plan_step(self) -> list[tuple[_Submission, int]] | None:
        """(Holding the lock.) Waits up to _GATHER_SECONDS for the sequences that just got
        logits to submit again, then plans the step."""
        gather_until = time.monotonic() + _GATHER_SECONDS
        while self._awaited and not self._closed:
            left = gather_until - time.monotonic()
            if left <= 0:
                break
            self._lock.wait(left)
        if self._closed:
            return None
        # Withdrawn before they were decoded: their waiters see them gone and raise Cancelled.
        self._queue = [s for s in self._queue if not (s.withdrawn and not s.in_flight)]
        plan = self._plan()
        for submission, _ in plan:
            submission.in_flight = True
        return plan or None

    def run_step(self, plan: list[tuple[_Submission, int]]) -> BaseException | None:
        with self._compute:
            if self._context is None:
                return _closed_error()
            return self._decode(plan)

    def finish_step(self, plan: list[tuple[_Submission, int]], error: BaseException | None) -> None:
        self._finish(plan, error)
        if self._closed:  # closed during the step
            self._fail_waiting()
        for submission, _ in plan:
            submission.ready.notify()

    def _fail_waiting(self) -> None:
        """(Closed, holding the lock.) The queued submissions not being decoded now end with
        an error: nothing more will be decoded."""
        for submission in self._queue:
            if not submission.in_flight:
                submission.error = _closed_error()
                submission.finished = True
                submission.ready.notify()
        self._queue = [s for s in self._queue if s.in_flight]

    def _plan(self) -> list[tuple[_Submission, int]]:
        """(submission, tokens to take now) for this step, in sequence order.

        Single tokens (streams decoding) are taken first, then prompt chunks oldest first; a
        chunk ends on the submission's last token or on the step's budget. The batch goes in
        sequence order: with per-slot KV streams llama.cpp puts only consecutive sequence ids
        in one micro-batch (split_equal), so 3, 0, 1, 2 would take two graph runs.
        """
        live = [s for s in self._queue if not s.withdrawn]
        decoding = [s for s in live if s.remaining == 1]
        prompts = [s for s in live if s.remaining > 1]
        budget = self.max_batch_tokens
        plan: list[tuple[_Submission, int]] = []
        for submission in decoding:
            if budget == 0:
                break
            plan.append((submission, 1))
            budget -= 1
        chunk_cap = self.prefill_chunk if decoding else budget
        for submission in prompts:
            if budget == 0:
                break
            take = min(submission.remaining, budget, max(1, chunk_cap))
            plan.append((submission, take))
            budget -= take
            if decoding:
                chunk_cap = 0  # while streams decode, one prompt chunk per step
                break
        return sorted(plan, key=lambda entry: entry[0].sequence.seq_id)

    def _decode(self, plan: list[tuple[_Submission, int]]) -> BaseException | None:
        llama, batch = self._llama, self._batch
        n = 0
        scored: list[tuple[_Submission, int]] = []  # (submission, batch row) of each logits row
        for submission, take in plan:
            sequence = submission.sequence
            start = len(sequence.cached_tokens)
            first_scored = len(submission.tokens) - submission.rows
            for k in range(take):
                index = submission.done_count + k
                batch.token[n] = submission.tokens[index]
                batch.pos[n] = start + k
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = sequence.seq_id
                batch.logits[n] = index >= first_scored
                if index >= first_scored:
                    scored.append((submission, n))
                n += 1
        batch.n_tokens = n
        threads = max(1, self._threads())
        if threads != self._current_threads:
            llama.llama_set_n_threads(self._context, threads, threads)
            self._current_threads = threads
        result = llama.llama_decode(self._context, batch)
        self.steps += 1
        self.batched_sequences += len(plan)
        if result != 0:
            return RuntimeError(f"llama_decode failed ({result})")
        for submission, row in scored:
            pointer = llama.llama_get_logits_ith(self._context, row)
            submission.logits.append(np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy())
        return None

    def _finish(self, plan: list[tuple[_Submission, int]], error: BaseException | None) -> None:
        for submission, take in plan:
            submission.in_flight = False
            sequence = submission.sequence
            if error is not None:
                # The cache state of these sequences is unknown now: forget it all.
                with self._compute:
                    if self._context is not None:
                        self._llama.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
                sequence.cached_tokens.clear()
                submission.error = error
                submission.finished = True
                self._drop(submission)
                continue
            sequence.cached_tokens.extend(submission.tokens[submission.done_count : submission.done_count + take])
            submission.done_count += take
            if submission.remaining == 0:
                submission.finished = True
                self._drop(submission)
                self._awaited.add(sequence.seq_id)


def _closed_error() -> RuntimeError:
    return RuntimeError("the llama.cpp decoder closed")


def _can_copy_partial_sequences(llama, model: LlamaModel) -> bool:
    """Whether a prefix of one sequence's cells can be copied into another: not for
    sliding-window attention (the copied range may have lost cells the window needs) nor for
    recurrent or hybrid models (their state is per sequence, not per position)."""
    pointer = model.pointer
    for name in ("llama_model_is_recurrent", "llama_model_is_hybrid"):
        check = getattr(llama, name, None)
        if check is None or check(pointer):
            return False
    n_swa = getattr(llama, "llama_model_n_swa", None)
    return n_swa is not None and n_swa(pointer) == 0


class BatchedSequence:
    """One slot: a sequence id in the shared context and the tokens its KV stream holds.

    Same interface as ``ModelContext`` (the ctransformers slot), so the engine's generation
    loop drives either.
    """

    def __init__(self, decoder: BatchedDecoder, seq_id: int):
        self._decoder = decoder
        self.seq_id = seq_id
        self.context_length = decoder.context_length
        self.vocab_size = decoder.vocab_size
        self.cached_tokens: list[int] = []
        self.scores_many = decoder.cuts_sequences
        self._logits: np.ndarray | None = None

    @property
    def cached_length(self) -> int:
        return len(self.cached_tokens)

    def reusable_prefix(self, prompt: Sequence[int]) -> int:
        """Every cached token the prompt starts with, but one: sampling needs fresh logits."""
        return min(common_prefix_length(self.cached_tokens, prompt), len(prompt) - 1)

    def reuse_prefix(self, prompt: Sequence[int]) -> int:
        """Keeps the cached prefix ``prompt`` starts with, then takes a longer one from another
        sequence if one holds it (prefix sharing); returns how many prompt tokens are cached."""
        self.truncate(self.reusable_prefix(prompt))
        return self._decoder.copy_longest_prefix(self, prompt, limit=len(prompt) - 1)

    def truncate(self, length: int) -> None:
        self._decoder.truncate(self, length)

    def evaluate(
        self,
        tokens: Sequence[int],
        *,
        cancelled: threading.Event | None = None,
        threads: Callable[[], int] | None = None,  # the decoder sizes its own threads
        on_evaluated: Callable[[int], None] | None = None,
    ) -> None:
        if not tokens:
            return
        before = len(self.cached_tokens)
        submission = self._decoder.submit(self, list(tokens))
        try:
            self._logits = self._decoder.wait(submission, cancelled)[-1]
        finally:
            if on_evaluated is not None:
                on_evaluated(len(self.cached_tokens) - before)

    def evaluate_rows(self, tokens: Sequence[int], rows: int, *, cancelled: threading.Event | None = None) -> list[np.ndarray]:
        """Evaluates ``tokens`` and returns the logits after each of the last ``rows`` (a
        speculative draft's verification); ``truncate`` then drops what was not accepted."""
        submission = self._decoder.submit(self, list(tokens), rows=rows)
        scored = self._decoder.wait(submission, cancelled)
        self._logits = scored[-1]
        return scored

    def logits(self) -> np.ndarray:
        assert self._logits is not None, "evaluate() first"
        return self._logits

    def others_decoding(self) -> bool:
        return self._decoder.others_decoding(self)

    def detach(self) -> None:
        self._decoder.detach(self)
