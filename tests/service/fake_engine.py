"""A fake engine for the real gRPC server: scripted by the request's model name.

It has the engine's interface (``generate``, ``models``, ``tokenize``) and honours the
``cancelled`` event the servicer passes, like the real engine: it checks it before every
chunk and records that it stopped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator

from inference_service.engine.handoff import run_on_thread
from inference_service.engine.types import (
    EngineStatus,
    GenerationChunk,
    GenerationRequest,
    ModelDescription,
    ModelStatus,
    Usage,
)
from inference_service.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    ServiceUnavailable,
)

CHUNK_PAUSE = 0.02  # seconds between chunks of a "slow" stream (pacing only, never asserted)

# Errors raised before the first chunk, by model name.
ERRORS = {
    "invalid": lambda: InvalidRequest("temperature must be in [0.0, 2.0], got 3.0", "temperature"),
    "context": lambda: ContextLengthExceeded(
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(3000 in the prompt, 2000 for the completion)."
    ),
    "missing": lambda: ModelNotFound("model 'missing' not found; served: fake"),
    "full": lambda: QueueFull("2 requests are already waiting for a model slot (limit 2); retry later"),
    "expired": lambda: DeadlineExceeded("the deadline passed while waiting for a model slot"),
    "loading": lambda: ServiceUnavailable("the model is still loading; retry shortly"),
    "crash": lambda: RuntimeError('Traceback (most recent call last):\n  File "/secret/path.py", line 1'),
}


@dataclass
class Call:
    request: GenerationRequest
    cancelled: threading.Event
    deadline: float | None
    chunks_sent: int = 0
    stopped_by_cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)


class FakeEngine:
    def __init__(self):
        self.calls: list[Call] = []
        self.call_started = threading.Semaphore(0)
        self.release = threading.Event()  # lets "gated" streams finish

    # --- engine interface ---------------------------------------------------------------

    def models(self) -> list[ModelDescription]:
        return [ModelDescription(name="fake", created=1700000000, owned_by="tests", context_length=4096, has_chat_template=True)]

    def status(self) -> EngineStatus:
        busy = sum(1 for c in self.calls if not (c.finished.is_set() or c.stopped_by_cancel.is_set()))
        return EngineStatus(
            models=(ModelStatus("fake", slots=64, busy_slots=busy, waiting=0, max_waiting=0),),
            generations_started=len(self.calls),
            generations_finished=sum(1 for c in self.calls if c.finished.is_set()),
            generations_cancelled=sum(1 for c in self.calls if c.stopped_by_cancel.is_set()),
        )

    def tokenize(self, model_name, text="", messages=(), raw=False):
        if model_name != "fake":
            raise ModelNotFound(f"model {model_name!r} not found; served: fake")
        source = text or "".join(m.content for m in messages)
        return [ord(c) for c in source], list(source)

    def generate(self, request: GenerationRequest, cancelled=None, deadline=None) -> Iterator[GenerationChunk]:
        if request.model in ERRORS:
            raise ERRORS[request.model]()
        call = Call(request=request, cancelled=cancelled or threading.Event(), deadline=deadline)
        self.calls.append(call)
        self.call_started.release()
        # Like the real engine, the work runs on its own thread driven by the cancel event:
        # gRPC stops pulling from a cancelled handler's generator and never closes it.
        return run_on_thread(lambda: self._script(call), name="fake-generate")

    def _script(self, call: Call) -> Iterator[GenerationChunk]:
        behaviour = call.request.model
        if behaviour == "midway":
            yield GenerationChunk(text="partial", token_ids=(1,))
            raise InvalidRequest("something about the request became clear late", "stop")
        if behaviour == "midway-crash":
            yield GenerationChunk(text="partial", token_ids=(1,))
            raise RuntimeError("secret internal detail")
        if behaviour == "gated":
            # one chunk, then wait for the test to release the end
            yield self._chunk(call, "first ")
            while not self.release.wait(CHUNK_PAUSE):
                if call.cancelled.is_set():
                    call.stopped_by_cancel.set()
                    return
            yield self._last(call, "last")
            return
        # "slow" (default): many chunks, stopping before the next one once cancelled
        total = call.request.max_tokens or 10_000
        for i in range(total):
            if call.cancelled.is_set():
                call.stopped_by_cancel.set()
                return
            if i == total - 1:
                yield self._last(call, f"t{i}")
                return
            yield self._chunk(call, f"t{i} ")
            call.cancelled.wait(CHUNK_PAUSE)

    def _chunk(self, call: Call, text: str) -> GenerationChunk:
        call.chunks_sent += 1
        return GenerationChunk(text=text, token_ids=(call.chunks_sent,))

    def _last(self, call: Call, text: str) -> GenerationChunk:
        call.chunks_sent += 1
        call.finished.set()
        return GenerationChunk(
            text=text, token_ids=(call.chunks_sent,), finish_reason="stop",
            usage=Usage(prompt_tokens=4, completion_tokens=call.chunks_sent, cached_prompt_tokens=1),
        )
