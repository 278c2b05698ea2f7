"""The engine: turns a GenerationRequest into a stream of GenerationChunks.

Plain Python, no transport. Each generation runs on a producer thread (``handoff``) that
holds its model slot in a ``with`` block and checks the cancel event before every token
(and between prompt blocks); the consumer only reads a queue. So a consumer that vanishes
without closing its iterator (as gRPC does with a cancelled handler) still frees the
slot at once: cancellation is driven by the event, never by garbage collection.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

from inference_service import limits
from inference_service.engine import compute_thread
from inference_service.engine.chat_template import FALLBACK_TEMPLATES, ChatTemplate
from inference_service.engine.cpu_budget import shared_budget
from inference_service.engine.decode_loop import SPECULATION_MODES, run_in_slot
from inference_service.engine.engine_choice import GGUFIdentity, choose_engine, llama_cpp_available
from inference_service.engine.grammar import LazyGrammarTokenizer
from inference_service.engine.handoff import Pacing, run_on_thread
from inference_service.engine.memory import TRIM_AFTER_CHARS, release_freed_memory
from inference_service.engine.model_context import ModelContext
from inference_service.engine.output_plan import NO_PLAN, OutputPlan, plan_output
from inference_service.engine.prompt import PromptEncoder
from inference_service.engine.reasoning import ReasoningSplitter, prompt_opens_thinking, template_thinks
from inference_service.engine.scheduler import SlotScheduler, Ticket
from inference_service.engine.tokenizer import TextTokenizer
from inference_service.engine.tool_calls import history_as_text, tool_specs, with_preamble
from inference_service.engine.types import (
    ChatMessage,
    EmbeddingInput,
    EmbeddingResult,
    EngineStatus,
    GenerationChunk,
    GenerationRequest,
    InferenceEngine,
    ModelDescription,
    ModelStatus,
    SamplingParams,
    joined_chunks,
)
from inference_service.engine.validation import unknown_model, validate_request
from inference_service.errors import (
    Cancelled,
    ContextLengthExceeded,
    DeadlineExceeded,
    InvalidRequest,
    QueueFull,
)
from inference_service.models.registry import ModelFile

log = logging.getLogger(__name__)

# Control tokens that end a turn in the chat formats we know (llama.cpp's "end of generation").
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


@dataclass(frozen=True)
class EngineConfig:
    context_length: int = 4096
    # Prompt evaluation block, also the unit of exact prefix reuse. Measured here: blocks
    # of 16 to 512 evaluate long prompts at 296-310 tok/s; 16 also reuses most of a short
    # chat's template prefix (64-token chat TTFT 158 ms vs 190 ms at 32).
    block_size: int = 16
    # The cap on compute threads, further capped by CPU affinity and the cgroup quota.
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    slots: int = 2
    max_waiting: int = 32
    exact_prefix_reuse: bool = True
    # "adaptive": use fewer threads while other processes take our cores (ggml's threads
    # spin-wait on each other, so one without a core stalls every token); "fixed": always
    # the cap. See engine/cpu_budget.py.
    thread_policy: str = "adaptive"
    # "auto" (ctransformers for what it loads, llama.cpp for the rest), "ctransformers" or
    # "llamacpp"; a model spec may name its own (see engine_choice).
    engine: str = "auto"
    # llama.cpp: tokens per batched decode, and prompt tokens per step while other streams
    # decode (bounds the pause a joining prompt causes them; see llamacpp_batch).
    max_batch_tokens: int = 512
    prefill_chunk: int = 128
    # llama.cpp: "per-slot" (results independent of what else runs) or "unified" (one cache,
    # results may vary with concurrent load); see llamacpp_batch.
    kv_layout: str = "per-slot"
    # llama.cpp: "ngram" speculative decoding (prompt lookup, see decode_loop) or "off".
    speculative: str = "off"
    # Seconds between the pieces ``generate`` hands out after the first (0: each as it comes);
    # the tokens of an interval go out as one piece (see handoff).
    stream_interval: float = 0.0
    # llama.cpp: the share of the process's compute time embeddings get while chat streams
    # decode (all of it when none does); see compute_thread.
    embeddings_share: float = compute_thread.JOB_SHARE

    def __post_init__(self):
        if self.thread_policy not in ("adaptive", "fixed"):
            raise ValueError(f"thread_policy must be 'adaptive' or 'fixed', not {self.thread_policy!r}")
        if not 0 <= self.stream_interval <= 1:
            raise ValueError(f"stream_interval must be 0 to 1 second, not {self.stream_interval!r}")
        if not 0 < self.embeddings_share < 1:
            raise ValueError(f"embeddings_share must be between 0 and 1, not {self.embeddings_share!r}")
        if self.speculative not in SPECULATION_MODES:
            raise ValueError(f"speculative must be one of {', '.join(SPECULATION_MODES)}, not {self.speculative!r}")


@dataclass(frozen=True)
class PreparedGeneration:
    request: GenerationRequest
    prompt_ids: list[int]
    max_tokens: int
    plan: OutputPlan = NO_PLAN


def effective_context_length(configured: int, model_context: int | None) -> int:
    """The context a model is served with: the configured one, but never more than the model's
    own (``<arch>.context_length`` in its GGUF; positions beyond it were never trained)."""
    if model_context is None or model_context <= 0:
        return configured
    return min(configured, model_context)


class LoadedModel:
    """A model's tokenizer, template and slots, on the engine that computes it.

    ctransformers: one context per slot, each a whole model instance with its own KV cache.
    llama.cpp: one context whose sequences are the slots, decoded together in batches
    (``llamacpp_batch``). Everything above the slots (prompts, sampling, stop strings,
    logprobs, the queue) is the same code for both.
    """

    def __init__(self, model_file: ModelFile, config: EngineConfig, engine: str | None = None):
        self.name = model_file.name
        self.file = model_file
        self.config = config
        self.identity = GGUFIdentity.read(model_file.source_path)
        self.engine = choose_engine(engine or config.engine, self.identity, self.name)
        self._llama_model = None
        self._decoder = None
        self._embedder = None
        self._embedder_lock = threading.Lock()
        if self.engine == "llamacpp":
            from inference_service.engine.llamacpp_runtime import LlamaModel
            from inference_service.engine.llamacpp_tokenizer import LlamaCppTokenizer

            self._llama_model = LlamaModel(model_file.source_path)
            self.tokenizer = LlamaCppTokenizer(self._llama_model)
        else:
            self.tokenizer = TextTokenizer.from_gguf(model_file.source_path)
        vocab = self.tokenizer.vocab
        self.context_length = effective_context_length(config.context_length, vocab.context_length)
        if self.context_length < config.context_length:
            log.warning("%s: serving a context of %d tokens, the model's own, not the configured %d",
                        self.name, self.context_length, config.context_length)
        self.template = None
        template_source = vocab.chat_template or FALLBACK_TEMPLATES.get(self.identity.architecture)
        if template_source:
            if not vocab.chat_template:
                log.info("%s: the file has no chat template; using the %s one", self.name, self.identity.architecture)

            def token(i):
                return vocab.tokens[i] if i is not None and 0 <= i < len(vocab.tokens) else ""
            self.template = ChatTemplate(template_source, token(vocab.bos_token_id), token(vocab.eos_token_id))
        self.prompts = PromptEncoder(self.tokenizer, self.template)
        self.thinks = self.template is not None and template_thinks(self.template.source)
        self._opens_thinking: dict[bool | None, bool] = {}
        eot = {self.tokenizer.token_id(t) for t in END_OF_TURN_TOKENS}
        eot.add(vocab.eos_token_id)
        eot |= getattr(self.tokenizer, "end_of_generation_ids", frozenset())
        self.end_of_turn_ids = frozenset(i for i in eot if i is not None)
        self.grammar = LazyGrammarTokenizer(self.tokenizer, self.end_of_turn_ids)
        if self.engine == "llamacpp":
            from inference_service.engine.llamacpp_batch import BatchedDecoder

            budget = shared_budget(config.threads, config.thread_policy)
            self._decoder = BatchedDecoder(
                self._llama_model,
                sequences=config.slots,
                context_length=self.context_length,
                threads=budget.threads,
                max_batch_tokens=config.max_batch_tokens,
                prefill_chunk=config.prefill_chunk,
                kv_layout=config.kv_layout,
            )
            contexts = self._decoder.sequences
            self.vocab_size = self._llama_model.vocab_size
        else:
            contexts = [
                ModelContext(
                    model_file.loadable_path,
                    context_length=self.context_length,
                    block_size=config.block_size,
                    threads=config.threads,
                    exact_reuse=config.exact_prefix_reuse,
                )
                for _ in range(config.slots)
            ]
            self.vocab_size = contexts[0].vocab_size
        # No text longer than this fits the context, whatever its tokens: refused untokenized.
        self.max_prompt_chars = self.context_length * self.tokenizer.longest_token_bytes
        # llama.cpp: a prompt prefix one sequence holds is copied into another, not evaluated.
        self.shares_prefixes = self._decoder is not None and self._decoder.shares_prefixes
        shared_prefix = self._decoder.longest_cached_prefix if self.shares_prefixes else None
        self.scheduler = SlotScheduler(contexts, max_waiting=config.max_waiting, shared_prefix=shared_prefix,
                                       min_copy=self._decoder.min_copy if self.shares_prefixes else 1)
        self.created = int(model_file.source_path.stat().st_mtime)

    @property
    def can_embed(self) -> bool:
        """Embeddings come from llama.cpp, whichever engine generates: a ctransformers model
        gets a llama.cpp instance of the same file on its first embedding request."""
        return self._llama_model is not None or llama_cpp_available()

    def describe(self) -> ModelDescription:
        can_embed = self.can_embed
        return ModelDescription(
            name=self.name,
            created=self.created,
            owned_by=self.file.owned_by,
            context_length=self.context_length,
            has_chat_template=self.template is not None,
            engine=self.engine,
            architecture=self.identity.architecture,
            can_embed=can_embed,
            embedding_dimensions=self.identity.embedding_length if can_embed else 0,
        )

    def prompt_ids(self, request: GenerationRequest, plan: OutputPlan = NO_PLAN) -> list[int]:
        """The request's prompt as token ids; user text never becomes control tokens."""
        if request.messages:
            if self.template is None:
                raise InvalidRequest(f"model {self.name!r} has no chat template; send a prompt instead", "messages")
            messages = history_as_text(request.messages)
            thinking = request.thinking
            if not plan.renders_tools:
                return self.prompts.encode_chat(messages, thinking=thinking)
            if self.template.renders_tools:
                return self.prompts.encode_chat(messages, tools=tool_specs(plan.tools), thinking=thinking)
            return self.prompts.encode_chat(with_preamble(messages, plan.tools), thinking=thinking)
        assert request.prompt is not None
        return self.prompts.encode_prompt(request.prompt, raw=request.raw)

    def reasoning_splitter(self, prepared: PreparedGeneration) -> ReasoningSplitter | None:
        """For a chat on a thinking template whose answer is free text: the splitter of its
        thinking from its answer (None otherwise: grammar-constrained output has no block)."""
        request, plan = prepared.request, prepared.plan
        if not (self.thinks and request.messages) or plan.grammar or plan.tool_mode == "forced":
            return None
        return ReasoningSplitter(inside=self.generation_prompt_opens_thinking(request.thinking))

    def generation_prompt_opens_thinking(self, thinking: bool | None) -> bool:
        """Whether the template's generation prompt ends inside an open <think> block (then the
        model's first words are thinking); asked once per setting."""
        if thinking not in self._opens_thinking:
            assert self.template is not None
            rendered = self.template.render((ChatMessage("user", "x"),), thinking=thinking)
            self._opens_thinking[thinking] = prompt_opens_thinking(rendered)
        return self._opens_thinking[thinking]

    def threads_per_slot(self) -> int:
        """Splits the CPU budget among the slots computing now (oversubscription is ruinous).

        The budget is ``config.threads`` capped by affinity and cgroup quota and, under the
        adaptive policy, by the cores other processes leave us right now; it is asked
        before every evaluation (microseconds), so a slot changes thread count between tokens.
        (A llama.cpp model computes all its slots in one batch and asks the budget itself.)
        """
        budget = shared_budget(self.config.threads, self.config.thread_policy)
        return max(1, budget.threads() // max(1, self.scheduler.busy_now()))

    def embedder(self):
        """The model's embedding context and the tokenizer its inputs need, made on first use
        (a context of its own; for a ctransformers model, llama.cpp's instance of the file)."""
        if not self.can_embed:
            raise InvalidRequest(
                f"model {self.name!r} cannot compute embeddings here: they need the llama.cpp engine "
                "(pip install -e '.[llamacpp]')", "model")
        with self._embedder_lock:
            if self._embedder is None:
                from inference_service.engine.llamacpp_embedding import LlamaCppEmbedder
                from inference_service.engine.llamacpp_runtime import LlamaModel
                from inference_service.engine.llamacpp_tokenizer import LlamaCppTokenizer

                if self._llama_model is None:
                    self._llama_model = LlamaModel(self.file.source_path)
                tokenizer = self.tokenizer if self.engine == "llamacpp" else LlamaCppTokenizer(self._llama_model)
                budget = shared_budget(self.config.threads, self.config.thread_policy)
                self._embedder = (
                    LlamaCppEmbedder(self._llama_model.pointer, context_length=self.context_length,
                                     threads=budget.threads()),
                    tokenizer,
                )
            return self._embedder

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
        if self._embedder is not None:
            self._embedder[0].close()
        if self._llama_model is not None:
            self._llama_model.close()


class EngineCounters:
    """Running totals of what the engine did; read by ``Engine.status()``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._totals = dict(
            generations_started=0, generations_finished=0, generations_cancelled=0,
            generations_failed=0, prompt_tokens_evaluated=0, tokens_generated=0,
            draft_tokens_proposed=0, draft_tokens_accepted=0,
        )

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._totals[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)


class Engine(InferenceEngine):
    """The real engine: models loaded on ctransformers or llama.cpp, behind one interface."""

    def __init__(self, models: Sequence[LoadedModel]):
        self._models = {m.name: m for m in models}
        self.counters = EngineCounters()

    @classmethod
    def load(cls, model_files: Sequence[ModelFile], config: EngineConfig | None = None,
             engines: Sequence[str | None] | None = None) -> "Engine":
        """Loads each model on its engine (``engines[i]``, or ``config.engine`` when None)."""
        config = config or EngineConfig()
        engines = list(engines) if engines is not None else [None] * len(model_files)
        compute_thread.shared().set_job_share(config.embeddings_share)  # one thread per process
        return cls([LoadedModel(f, config, engine) for f, engine in zip(model_files, engines)])

    def close(self) -> None:
        for model in self._models.values():
            model.close()

    def models(self) -> list[ModelDescription]:
        return [m.describe() for m in self._models.values()]

    def status(self) -> EngineStatus:
        models = []
        for model in self._models.values():
            slots, busy, waiting, max_waiting = model.scheduler.load()
            models.append(ModelStatus(model.name, slots, busy, waiting, max_waiting,
                                      slot_states=tuple(model.scheduler.slot_states())))
        return EngineStatus(models=tuple(models), **self.counters.snapshot())

    def model(self, name: str) -> LoadedModel:
        try:
            return self._models[name]
        except KeyError:
            # ModelNotFound quoting a short prefix of the name; InvalidRequest for a name no
            # model could have (too long, not valid Unicode): never echoed into gRPC trailers.
            raise unknown_model(name, self._models) from None

    def embed(self, model_name: str, inputs: Sequence[EmbeddingInput],
              cancelled: threading.Event | None = None) -> EmbeddingResult:
        """One unit-length vector per input (text, or token ids), pooled as the model says."""
        model = self.model(model_name)  # inputs come checked (request_checks.embedding_inputs)
        if model.can_embed:  # else embedder() says why not
            too_big = limits.embedding_answer_problem(len(inputs), model.identity.embedding_length)
            if too_big is not None:
                raise InvalidRequest(too_big, "input")
        embedder, tokenizer = model.embedder()
        sequences: list[list[int]] = []
        for i, item in enumerate(inputs):
            param = f"input[{i}]" if len(inputs) > 1 else "input"
            if isinstance(item, str):
                if len(item) > model.max_prompt_chars:
                    raise ContextLengthExceeded(
                        f"This model's maximum context length is {model.context_length} tokens. However, "
                        f"{param} has {len(item)} characters, more than that many tokens can hold.", param=param)
                ids = tokenizer.encode_for_embedding(item)
            else:
                ids = list(item)
                bad = next((t for t in ids if not 0 <= t < model.vocab_size), None)
                if bad is not None:
                    raise InvalidRequest(f"token id {bad} is not in the vocabulary (0..{model.vocab_size - 1})", param)
            if not ids:
                raise InvalidRequest("an input must hold at least one token", param)
            if len(ids) > model.context_length:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {model.context_length} tokens. However, {param} "
                    f"has {len(ids)} tokens. Please reduce the length of the input.", param=param)
            sequences.append(ids)
        # The budget of each moment (adaptive: fewer threads while other processes take our
        # cores; a spinning thread pool on a taken core made 256 embeddings 25x slower).
        budget = shared_budget(model.config.threads, model.config.thread_policy)
        vectors = embedder.embed(sequences, cancelled, threads=budget.threads)
        return EmbeddingResult(
            vectors=tuple(tuple(vector.tolist()) for vector in vectors),
            prompt_tokens=sum(map(len, sequences)),
        )

    def tokenize(self, model_name: str, text: str = "", messages: Sequence[ChatMessage] = (),
                 raw: bool = False) -> tuple[list[int], list[str]]:
        """Token ids of a chat (through the template), of raw markup, or of plain text."""
        model = self.model(model_name)
        if messages:
            if model.template is None:
                raise InvalidRequest(f"model {model_name!r} has no chat template", "messages")
            ids = model.prompts.encode_chat(messages)
        elif raw:
            ids = model.tokenizer.encode_markup(text)
        else:
            ids = model.tokenizer.encode_text(text)
        return ids, [model.tokenizer.vocab.tokens[i] for i in ids]

    def prepare(self, request: GenerationRequest) -> PreparedGeneration:
        """Everything knowable before the first token: validation, template, tokens, context fit."""
        model = self.model(request.model)
        validate_request(request, model.vocab_size)
        context = model.context_length
        param = "messages" if request.messages else "prompt"
        chars = len(request.prompt or "") + sum(len(m.content) for m in request.messages)
        if chars > model.max_prompt_chars:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, the prompt has {chars} "
                f"characters, more than {context} tokens can hold (at most {model.max_prompt_chars}). "
                "Please reduce the length of the prompt.",
                param=param,
            )
        plan = plan_output(request, model.grammar.get)
        prompt_ids = model.prompt_ids(request, plan)
        if chars > TRIM_AFTER_CHARS:
            release_freed_memory()  # the tokenizer's temporaries for a large text
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", "prompt")
        n_prompt = len(prompt_ids)
        room = context - n_prompt
        wanted = request.max_tokens if request.max_tokens is not None else max(room, 1)
        if n_prompt + wanted > context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{n_prompt + wanted} tokens ({n_prompt} in the prompt, {wanted} for the completion). "
                "Please reduce the length of the prompt or max_tokens.",
                param=param,
            )
        if request.min_tokens > wanted:
            raise InvalidRequest(
                f"min_tokens ({request.min_tokens}) is more than the {wanted} tokens this request may generate "
                f"({'max_tokens' if request.max_tokens is not None else 'the room left in the context'})",
                "min_tokens",
            )
        return PreparedGeneration(request=request, prompt_ids=prompt_ids, max_tokens=wanted, plan=plan)

    def generate(
        self,
        request: GenerationRequest,
        cancelled: threading.Event | None = None,
        deadline: float | None = None,
    ) -> Iterator[GenerationChunk]:
        """Streams chunks; errors knowable up front are raised before the first chunk.

        ``deadline`` is a ``time.monotonic()`` value bounding the wait for a slot.
        Closing the iterator, or setting ``cancelled``, stops generation before the next token.
        With the config's ``stream_interval``, the pieces after the first come at most that often,
        each holding the tokens since the last (the last piece of an answer comes at once).
        """
        prepared = self.prepare(request)
        model = self._models[request.model]
        tickets: list[Ticket] = []
        try:  # QueueFull raised here, synchronously, for all n answers or none
            for _ in range(request.n):
                tickets.append(model.scheduler.enqueue(prepared.prompt_ids))
        except QueueFull:
            for ticket in tickets:
                model.scheduler.withdraw(ticket)
            raise
        self.counters.add("generations_started", len(tickets))
        cancelled = cancelled or threading.Event()

        def stop() -> None:
            cancelled.set()
            model.scheduler.wake()

        if len(tickets) == 1:
            produce = lambda: _generate_in_slot(model, prepared, tickets[0], cancelled, deadline, self.counters)  # noqa: E731
        else:
            produce = lambda: _generate_choices(model, prepared, tickets, cancelled, deadline, self.counters)  # noqa: E731
        # Started here, not at the first next(): a consumer that never iterates must not
        # leave its ticket blocking the queue.
        return run_on_thread(produce, name=f"generate-{request.request_id or tickets[0].number}", on_close=stop,
                             pacing=Pacing(model.config.stream_interval, joined_chunks, _ends_an_answer))

    def warm_up(self) -> None:
        """Runs one short generation per model so the first real request is not the slow one."""
        for model in self._models.values():
            request = GenerationRequest(model=model.name, prompt="Hello", raw=True, max_tokens=1,
                                        sampling=SamplingParams(temperature=0.0))
            for _ in self.generate(request):
                pass


_CHOICE_DONE = object()


def _generate_choices(model: LoadedModel, prepared: PreparedGeneration, tickets: Sequence[Ticket], cancelled,
                      deadline, counters: EngineCounters) -> Iterator[GenerationChunk]:
    """The request's n answers, each in its own slot (its own thread), chunks tagged with their
    index as they come. With prefix sharing (llama.cpp) the others start once the first has
    evaluated the prompt, so they copy its cells instead of evaluating it again; otherwise all
    start at once. An error in one stops all; places never leased are given back."""
    out: queue.SimpleQueue = queue.SimpleQueue()
    started: set[int] = set()

    def answer(i: int) -> None:
        try:
            for chunk in _generate_in_slot(model, _choice(prepared, i), tickets[i], cancelled, deadline, counters):
                out.put(replace(chunk, index=i))
        except BaseException as error:  # noqa: BLE001 - raised in the consumer
            out.put(error)
        finally:
            out.put((_CHOICE_DONE, i))

    def start(i: int) -> None:
        started.add(i)
        threading.Thread(target=answer, args=(i,), name=f"choice-{i}-{tickets[i].number}", daemon=True).start()

    staggered = model.shares_prefixes
    start(0)
    if not staggered:
        for i in range(1, len(tickets)):
            start(i)
    running = len(started)
    try:
        while running:
            item = out.get()
            if isinstance(item, tuple) and item[0] is _CHOICE_DONE:
                running -= 1
                item = None
            elif isinstance(item, BaseException):
                raise item
            if staggered and len(started) < len(tickets):  # the first answer has its prompt in the cache
                for i in range(len(started), len(tickets)):
                    start(i)
                    running += 1
            if item is not None:
                yield item
    finally:
        cancelled.set()  # whatever ended us ends the others; finished ones ignore it
        model.scheduler.wake()
        for i in range(len(tickets)):
            if i not in started:
                model.scheduler.withdraw(tickets[i])


def _choice(prepared: PreparedGeneration, index: int) -> PreparedGeneration:
    """The index-th answer: the same prompt, its own seed (seed + index) when one is set."""
    if index == 0 or prepared.request.sampling.seed is None:
        return prepared
    sampling = replace(prepared.request.sampling, seed=prepared.request.sampling.seed + index)
    return replace(prepared, request=replace(prepared.request, sampling=sampling))


def _ends_an_answer(chunk: GenerationChunk) -> bool:
    return chunk.finish_reason is not None


def _generate_in_slot(model: LoadedModel, prepared: PreparedGeneration, ticket: Ticket, cancelled,
                      deadline, counters: EngineCounters) -> Iterator[GenerationChunk]:
    final = None
    try:
        with model.scheduler.lease(ticket, cancelled=cancelled, deadline=deadline) as context:
            try:
                for chunk in run_in_slot(model, context, prepared, cancelled, counters, model.config.speculative):
                    if chunk.finish_reason is None:
                        yield chunk
                    else:
                        final = chunk
            finally:
                context.detach()
    except (Cancelled, DeadlineExceeded):
        counters.add("generations_cancelled")
        raise
    except BaseException:
        counters.add("generations_failed")
        raise
    counters.add("generations_finished")
    # Delivered after the slot is free: a client that sends its next request as soon as
    # this one ends must find the slot released, not still held.
    if final is not None:
        yield final
