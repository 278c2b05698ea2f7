"""Plain data passed between the transport and the engine."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Literal, Optional, Protocol, Sequence, Union

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: ``arguments`` is JSON text (an object), as OpenAI sends it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant turn that called tools
    tool_call_id: str = ""  # a "tool" turn: the call this is the result of
    name: str = ""  # a "tool" turn: the function's name (optional)


@dataclass(frozen=True)
class Tool:
    """A function the model may call; ``parameters`` is a JSON schema as JSON text."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object"}'


@dataclass(frozen=True)
class Constraint:
    """What every generated token must keep valid (grammar-constrained decoding).

    ``kind``: "json_object" (any JSON object), "json_schema" (``source`` is the schema as
    JSON text), "regex", "lark" (llguidance's Lark dialect) or "gbnf" (llama.cpp's grammar
    format) with ``source`` the pattern.
    """

    kind: Literal["json_object", "json_schema", "regex", "lark", "gbnf"]
    source: str = ""
    param: str = "response_format"  # the request field errors about it name


ToolChoiceMode = Literal["none", "auto", "required", "function"]


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy (argmax)
    top_p: float = 1.0
    top_k: int = 0  # 0 means no limit
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # 1.0 means off; applies to prompt and generated tokens
    penalty_last_n: int = -1  # the repetition penalty's window: the last n tokens; -1 all, 0 off
    typical_p: float = 1.0  # locally typical sampling; 1.0 means off
    frequency_penalty: float = 0.0  # OpenAI semantics, over generated tokens
    presence_penalty: float = 0.0  # OpenAI semantics, over generated tokens
    seed: Optional[int] = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: Optional[str] = None
    messages: tuple[ChatMessage, ...] = ()
    raw: bool = False
    max_tokens: Optional[int] = None  # None: up to the end of the context
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    ignore_eos: bool = False  # end-of-turn tokens banned: runs to max_tokens
    min_tokens: int = 0  # no end of turn and no stop string before this many tokens
    constraint: Optional[Constraint] = None  # grammar-constrained output (response_format)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoiceMode = "auto"  # with tools: "none", "auto", "required" or "function"
    tool_choice_name: str = ""  # the function forced when tool_choice == "function"
    parallel_tool_calls: bool = True  # may one answer hold several calls
    thinking: Optional[bool] = None  # False: ask a thinking template not to think; None: its default
    n: int = 1  # answers to the prompt, each in its own slot (chunks tell them apart by index)


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float
    token_bytes: bytes


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    token_bytes: bytes
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class GenerationChunk:
    """One piece of a generation: whole UTF-8 text and the tokens it came from.

    The last chunk of a generation has ``finish_reason`` and ``usage`` set.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: Optional[FinishReason] = None
    usage: Optional[Usage] = None
    tool_calls: tuple[ToolCall, ...] = ()  # calls completed in this piece (never as text)
    reasoning: str = ""  # text inside the template's thinking block (never in ``text``)
    index: int = 0  # which of the request's n answers this piece belongs to

    def followed_by(self, later: "GenerationChunk") -> "GenerationChunk":
        """This piece and the next one of the same answer as one piece."""
        assert later.index == self.index and self.finish_reason is None, "only a running answer's pieces join"
        return GenerationChunk(
            text=self.text + later.text,
            token_ids=self.token_ids + later.token_ids,
            logprobs=self.logprobs + later.logprobs,
            finish_reason=later.finish_reason,
            usage=later.usage,
            tool_calls=self.tool_calls + later.tool_calls,
            reasoning=self.reasoning + later.reasoning,
            index=self.index,
        )


def joined_chunks(chunks: Sequence[GenerationChunk]) -> list[GenerationChunk]:
    """``chunks`` with each run of consecutive pieces of one running answer joined into one."""
    joined: list[GenerationChunk] = []
    for chunk in chunks:
        last = joined[-1] if joined else None
        if last is not None and last.index == chunk.index and last.finish_reason is None:
            joined[-1] = last.followed_by(chunk)
        else:
            joined.append(chunk)
    return joined


@dataclass(frozen=True)
class ModelDescription:
    name: str
    created: int
    owned_by: str
    context_length: int
    has_chat_template: bool
    engine: str = ""  # "ctransformers" or "llamacpp": what computes this model
    architecture: str = ""  # the GGUF's general.architecture ("llama", "gemma3", "qwen2"...)
    can_embed: bool = False  # serves Embed (/v1/embeddings)
    embedding_dimensions: int = 0  # length of its embedding vectors (0 when it cannot embed)


# One input of an embedding request: text, or token ids the caller already has.
EmbeddingInput = Union[str, Sequence[int]]


@dataclass(frozen=True)
class EmbeddingResult:
    """One vector per input, in input order, and the tokens they took."""

    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int


@dataclass(frozen=True)
class SlotState:
    """One slot at one moment: held by a generation or not, what its cache holds."""

    index: int
    busy: bool
    cached_tokens: int
    idle_seconds: float  # since its last generation ended (0 while busy or never used)


@dataclass(frozen=True)
class ModelStatus:
    """A served model's capacity and load at one moment."""

    name: str
    slots: int
    busy_slots: int
    waiting: int
    max_waiting: int
    slot_states: tuple[SlotState, ...] = ()


@dataclass(frozen=True)
class EngineStatus:
    """Load now, and totals since the engine started (see ``GetStatusResponse`` in the proto)."""

    models: tuple[ModelStatus, ...]
    generations_started: int = 0
    generations_finished: int = 0
    generations_cancelled: int = 0
    generations_failed: int = 0
    prompt_tokens_evaluated: int = 0
    tokens_generated: int = 0
    # Speculative decoding (llama.cpp engine): draft tokens verified, and those the model kept.
    draft_tokens_proposed: int = 0
    draft_tokens_accepted: int = 0


class InferenceEngine(Protocol):
    """What the gRPC servicer needs from an engine; every engine, the loading stand-in and
    the test and bench fakes implement it.

    Errors are ``inference_service.errors.InferenceError`` subclasses, raised before the
    first chunk when knowable up front. ``generate`` returns at once; its work runs on a
    thread of its own that stops before the next token once ``cancelled`` is set or the
    iterator is closed; ``deadline`` (``time.monotonic()``) bounds the wait for a slot.
    """

    def models(self) -> list[ModelDescription]: ...

    def status(self) -> EngineStatus: ...

    def tokenize(self, model_name: str, text: str = "", messages: Sequence[ChatMessage] = (),
                 raw: bool = False) -> tuple[list[int], list[str]]: ...

    def generate(self, request: GenerationRequest, cancelled: Optional[threading.Event] = None,
                 deadline: Optional[float] = None) -> Iterator[GenerationChunk]: ...

    def embed(self, model_name: str, inputs: Sequence[EmbeddingInput],
              cancelled: Optional[threading.Event] = None) -> EmbeddingResult: ...
