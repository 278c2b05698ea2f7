"""One generation in a slot: the decode loop and its per-token steps.

The loop evaluates tokens and hands each row of logits to ``TokenSteps``, which owns
everything a token goes through once the model has scored it: end-of-turn bans, the grammar
mask, sampling (``choose``), then the grammar, the penalties, stop strings, tool-call
collection, logprobs and the reasoning split (``take``). The steps do not know how the
logits were computed, so the loop may feed them more than one token per model step:

* **jump-forward**: where the grammar allows exactly one continuation (a JSON key, ``": "``,
  a closing brace), llguidance reports its tokens; they are taken without sampling and
  evaluated together with the sampled token in one batch. Off with logprobs (a forced token
  has no distribution of its own to report).
* **speculative decoding** (slots that return logits for several positions and can drop
  cache cells: llama.cpp's): an n-gram of the recent text that appeared before proposes the
  tokens that followed it then (``NgramDrafter``, prompt lookup, its length following what
  was kept: on a CPU a draft pays only when nearly all of it is); the sampled token and the
  draft are evaluated in one batch and each row is sampled as usual, in order, while the
  sampled token equals the draft's. The first difference ends the step and the draft's
  remaining cells are dropped. Every token is still drawn by the sampler from its own
  logits, so greedy answers and seeded draws are those of plain decoding (up to the batch's
  rounding: a token scored in a batch can differ in the last bits from one scored alone).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np

from inference_service.engine.sampler import SampledToken, Sampler
from inference_service.engine.text_stream import TextStreamer
from inference_service.engine.tool_calls import CALL_OPEN, CallCollector
from inference_service.engine.types import GenerationChunk, TokenLogprob, TopLogprob, Usage
from inference_service.errors import Cancelled

if TYPE_CHECKING:
    from inference_service.engine.engine import EngineCounters, LoadedModel, PreparedGeneration
    from inference_service.engine.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

SPECULATION_MODES = ("ngram", "off")


class Slot(Protocol):
    """A KV cache that serves one sequence: a ctransformers context or a llama.cpp sequence."""

    cached_tokens: list[int]
    context_length: int
    # Whether ``evaluate_rows`` and dropping trailing cells work (speculative decoding).
    scores_many: bool

    def reusable_prefix(self, prompt: Sequence[int]) -> int: ...

    def reuse_prefix(self, prompt: Sequence[int]) -> int: ...

    def evaluate(self, tokens: Sequence[int], *, cancelled=None, threads=None, on_evaluated=None) -> None: ...

    def evaluate_rows(self, tokens: Sequence[int], rows: int, *, cancelled=None) -> list[np.ndarray]: ...

    def logits(self) -> np.ndarray: ...

    def truncate(self, length: int) -> None: ...

    def others_decoding(self) -> bool: ...

    def detach(self) -> None: ...


class NgramDrafter:
    """Prompt-lookup drafts: the tokens that followed the last occurrence of the text's
    current ending (its last 4 or 3 tokens, longest first).

    On a CPU a step's cost grows almost linearly with its tokens (measured on the default
    model, 2 cores, in steps of one token: 1.66 for two, 5.1 for nine, 8.8 for 17, 15.3 for
    33), so a draft pays only when nearly all of it is kept. The draft length follows what
    was kept: it starts at ``FIRST_SPAN`` and doubles (up to ``MAX_DRAFT``) after each draft
    kept whole. A whole draft of 16 gives 17 tokens for 8.8 steps (1.93x), against 1.75x for
    8; in pairs, the edit workload ran 1.19x faster with 16 than with 8 and no faster with 32
    (bench/paired.py). Any other draft (a token rejected costs more than the kept ones saved:
    1.66 steps for two tokens of which one is kept) resets the span and pauses drafting for a
    number of tokens that doubles each time (``FIRST_PAUSE`` to ``MAX_PAUSE``) until a draft
    is kept whole again; so free text, where lookups rarely hold, pays for a few drafts only.
    """

    SIZES = (4, 3)
    FIRST_SPAN = 2
    MAX_DRAFT = 16
    FIRST_PAUSE = 8
    MAX_PAUSE = 256

    def __init__(self, history: Sequence[int]):
        self._history: list[int] = []
        self._last_end: dict[tuple[int, ...], int] = {}
        self._span = self.FIRST_SPAN
        self._pause = 0
        self._next_pause = self.FIRST_PAUSE
        self.proposed = 0
        self.accepted = 0
        self.extend(history)

    @property
    def length(self) -> int:
        return len(self._history)

    def extend(self, tokens: Sequence[int]) -> None:
        history, index = self._history, self._last_end
        for token in tokens:
            # Register the n-grams ending at the previous token: their continuation is known now.
            end = len(history)
            for n in self.SIZES:
                if end >= n:
                    index[tuple(history[end - n:end])] = end
            history.append(token)
        if self._pause:
            self._pause = max(0, self._pause - len(tokens))

    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` tokens likely to follow (empty: no lookup holds, or paused)."""
        if self._pause or limit <= 0:
            return []
        history = self._history
        for n in self.SIZES:
            if len(history) <= n:
                continue
            start = self._last_end.get(tuple(history[-n:]))
            if start is not None:
                return history[start:start + min(limit, self._span)]
        return []

    def record(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        if accepted == proposed:
            self._span = min(self._span * 2, self.MAX_DRAFT)
            self._next_pause = self.FIRST_PAUSE
        else:  # even a partly kept draft cost more than it saved
            self._span = self.FIRST_SPAN
            self._pause = self._next_pause
            self._next_pause = min(self._next_pause * 2, self.MAX_PAUSE)


class TokenSteps:
    """What each token of one generation goes through; chunks come out of ``take``."""

    def __init__(self, model: "LoadedModel", prepared: "PreparedGeneration", counters: "EngineCounters"):
        request, plan = prepared.request, prepared.plan
        self.request = request
        self.max_tokens = prepared.max_tokens
        self._model = model
        self._tokenizer = model.tokenizer
        self._counters = counters
        self._plan = plan
        self._sampling = request.sampling
        self.sampler = Sampler(request.sampling, model.vocab_size, prepared.prompt_ids)
        self._splitter = model.reasoning_splitter(prepared)
        # auto tool choice: the call marker ends the text like a stop string, then calls follow.
        self._marker_stop = (CALL_OPEN,) if plan.tool_mode == "auto" else ()
        self._streamer = TextStreamer(self._tokenizer.token_bytes, request.stop + self._marker_stop)
        self.guide = model.grammar.get().guide(plan.grammar) if plan.grammar else None
        self._calls = CallCollector(plan.tools) if plan.tool_mode == "forced" else None
        self._call_ids: list[int] = []  # tokens of the call region (never streamed as text)
        self.generated_ids: list[int] = []
        self._end_of_turn = model.end_of_turn_ids
        self._banned_end_of_turn = np.fromiter(self._end_of_turn, dtype=np.intp)
        self._pending_ids: list[int] = []
        self._pending_logprobs: list[TokenLogprob] = []
        self._text = ""  # text of the final chunk
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def generated(self) -> int:
        return len(self.generated_ids)

    def choose(self, logits: np.ndarray) -> SampledToken:
        """Samples the next token from ``logits`` (modified in place: a row the caller owns)."""
        request = self.request
        if request.ignore_eos or self.generated < request.min_tokens:
            logits[self._banned_end_of_turn] = -np.inf
        if self.guide is not None:
            self.guide.mask(logits)
        return self.sampler.sample(logits, in_place=True)

    def forced_tokens(self) -> list[int]:
        """Tokens the grammar allows as the only continuation, within max_tokens (jump-forward)."""
        if self.guide is None or self._sampling.logprobs or self.done:
            return []
        return self.guide.forced_tokens()[: self.max_tokens - self.generated]

    def take(self, sampled: SampledToken) -> Iterator[GenerationChunk]:
        """Takes a sampled (or forced) token: streams what it completes, sets ``finish_reason``
        when the generation ends with it."""
        token_id = sampled.token_id
        request = self.request
        if token_id in self._end_of_turn:
            self.finish_reason = "stop"
            self._text = self._streamer.flush() if self._calls is None else ""
            return
        guide = self.guide
        if guide is not None:
            guide.accept(token_id)
        self.sampler.accept(token_id)
        self.generated_ids.append(token_id)
        self._counters.add("tokens_generated")
        self._pending_ids.append(token_id)
        if self._sampling.logprobs and self._calls is None:  # logprobs cover content only, never calls
            self._pending_logprobs.append(token_logprob(self._tokenizer, sampled))
        text = ""
        if self._calls is not None:  # inside tool calls: whole calls go out, never their markup
            self._call_ids.append(token_id)
            completed = self._calls.update(self._tokenizer.decode(self._call_ids))
            if completed:
                yield GenerationChunk(text="", token_ids=self._take_pending_ids(), logprobs=self._take_pending_logprobs(),
                                      tool_calls=tuple(completed))
            if self._calls.repeated or (guide is not None and guide.complete):
                self.finish_reason = "stop"  # tool_calls at the end: the calls so far
                return
        else:
            step = self._streamer.push(token_id, stops_armed=self.generated > request.min_tokens)
            text = step.text
            if step.stopped:
                if not self._open_call(text):
                    self._text = text
                    self.finish_reason = "stop"
                    return
                text = step.text
            elif guide is not None and guide.complete:
                self._text = text + self._streamer.flush()
                self.finish_reason = "stop"
                return
        if self.generated >= self.max_tokens:
            self._text = text + (self._streamer.flush() if self._calls is None else "")
            self.finish_reason = "length"
            return
        if text:
            reasoning, text = self._splitter.push(text) if self._splitter is not None else ("", text)
            if text or reasoning:
                yield GenerationChunk(text=text, token_ids=self._take_pending_ids(),
                                      logprobs=self._take_pending_logprobs(), reasoning=reasoning)

    def _open_call(self, text: str) -> bool:
        """A stop string matched: True when it was the tool-call marker of ``auto`` tool choice
        and a call follows (the rest is then constrained to calls), False to stop here."""
        if not self._marker_stop:
            return False
        tokenizer = self._tokenizer
        after_marker = text_after_marker(tokenizer.decode(self.generated_ids), self.request.stop)
        if after_marker is None:
            return False
        # The marker's tokens are no content: only tokens that begin before it keep logprobs.
        del self._pending_logprobs[tokens_starting_within(tokenizer, self._pending_ids, len(text.encode("utf-8"))):]
        # The model opened a tool call: the text so far is the content; the call's grammar
        # constrains the rest, starting from what followed the marker.
        self.guide = self._model.grammar.get().guide(self._plan.grammar_after_marker)
        if not self.guide.accept_text_tokens(tokenizer.encode_text(after_marker)):
            return False  # not a call after all: the text ends at the marker
        self._calls = CallCollector(self._plan.tools, prefix=CALL_OPEN + after_marker)
        return True

    def final_chunk(self, prompt_tokens: int, cached: int) -> GenerationChunk:
        finish_reason = self.finish_reason
        if self._calls is not None and self._calls.calls and finish_reason == "stop":
            finish_reason = "tool_calls"
        text, reasoning = self._text, ""
        if self._splitter is not None:
            reasoning, text = self._splitter.push(text)
            held_reasoning, held_text = self._splitter.flush()
            reasoning, text = reasoning + held_reasoning, text + held_text
        return GenerationChunk(
            text=text,
            reasoning=reasoning,
            token_ids=self._take_pending_ids(),
            logprobs=self._take_pending_logprobs(),
            finish_reason=finish_reason,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=self.generated, cached_prompt_tokens=cached),
        )

    def _take_pending_ids(self) -> tuple[int, ...]:
        ids = tuple(self._pending_ids)
        self._pending_ids.clear()
        return ids

    def _take_pending_logprobs(self) -> tuple[TokenLogprob, ...]:
        logprobs = tuple(self._pending_logprobs)
        self._pending_logprobs.clear()
        return logprobs


def run_in_slot(model: "LoadedModel", context: Slot, prepared: "PreparedGeneration", cancelled: threading.Event,
                counters: "EngineCounters", speculation: str = "off") -> Iterator[GenerationChunk]:
    """Evaluates the prompt in ``context`` and streams the generation; the last chunk has
    the finish reason and usage."""
    request = prepared.request
    prompt = prepared.prompt_ids
    started = time.monotonic()
    reused = context.reuse_prefix(prompt)
    context.evaluate(prompt[reused:], cancelled=cancelled, threads=model.threads_per_slot,
                     on_evaluated=lambda n: counters.add("prompt_tokens_evaluated", n))
    prompt_seconds = time.monotonic() - started

    steps = TokenSteps(model, prepared, counters)
    drafter = NgramDrafter(prompt) if speculation == "ngram" and context.scores_many else None
    rows = [context.logits()]
    draft: list[int] = []
    while True:
        accepted = 0
        for j, row in enumerate(rows):
            sampled = steps.choose(row)
            yield from steps.take(sampled)
            if steps.done or j >= len(draft) or sampled.token_id != draft[j]:
                break
            accepted += 1
        if draft:
            # The cache holds the draft: keep the accepted part, drop the rest.
            context.truncate(len(context.cached_tokens) - (len(draft) - accepted))
            drafter.record(len(draft), accepted)
            counters.add("draft_tokens_proposed", len(draft))
            counters.add("draft_tokens_accepted", accepted)
        if steps.done:
            break
        feed = [sampled.token_id]
        for token_id in steps.forced_tokens():  # jump-forward: the grammar's only continuation
            yield from steps.take(SampledToken(token_id, 0.0, ()))
            feed.append(token_id)
            if steps.done:
                break
        if steps.done:
            break
        if cancelled.is_set():
            raise Cancelled("cancelled during generation")
        draft = []
        if drafter is not None:
            drafter.extend(steps.generated_ids[drafter.length - len(prompt):])  # what came since
            if len(feed) == 1 and not context.others_decoding():
                draft = drafter.draft(min(steps.max_tokens - steps.generated - 1,
                                          context.context_length - len(context.cached_tokens) - 2))
        if draft:
            rows = context.evaluate_rows(feed + draft, len(draft) + 1, cancelled=cancelled)
        else:
            context.evaluate(feed, threads=model.threads_per_slot)
            rows = [context.logits()]

    log.debug(
        "request %s: %d prompt tokens (%d cached) in %.3fs, %d generated in %.3fs, finish %s",
        request.request_id, len(prompt), reused, prompt_seconds, steps.generated,
        time.monotonic() - started - prompt_seconds, steps.finish_reason,
    )
    yield steps.final_chunk(len(prompt), reused)


def tokens_starting_within(tokenizer: "TextTokenizer", token_ids: Sequence[int], n_bytes: int) -> int:
    """How many of ``token_ids`` (whose text follows what was already sent) begin within the
    first ``n_bytes`` bytes of their text."""
    offset = 0
    for k, token_id in enumerate(token_ids):
        if offset >= n_bytes:
            return k
        offset += len(tokenizer.token_bytes(token_id))
    return len(token_ids)


def text_after_marker(generated: str, stops: Sequence[str]) -> str | None:
    """What the model wrote after the tool-call marker, or None when one of the request's own
    stop strings came first (then the marker was never reached as a call)."""
    at = generated.find(CALL_OPEN)
    if at < 0:
        return None
    if any(0 <= generated.find(s) < at for s in stops if s):
        return None
    return generated[at + len(CALL_OPEN):]


def token_logprob(tokenizer: "TextTokenizer", sampled: SampledToken) -> TokenLogprob:
    return TokenLogprob(
        token_id=sampled.token_id,
        token=tokenizer.token_text(sampled.token_id),
        logprob=sampled.logprob,
        token_bytes=tokenizer.token_bytes(sampled.token_id),
        top_logprobs=tuple(
            TopLogprob(token_id=i, token=tokenizer.token_text(i), logprob=lp, token_bytes=tokenizer.token_bytes(i))
            for i, lp in sampled.top_logprobs
        ),
    )
