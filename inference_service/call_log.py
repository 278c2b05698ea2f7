"""What the service tells about each Generate call: its timing and outcome to an observer
(``inference_service.metrics`` counts them) and one log line with the caller's request id."""

from __future__ import annotations

import logging
import time

import grpc

log = logging.getLogger("inference_service.server")


class GenerateObserver:
    """Told about every Generate call (``inference_service.metrics`` counts them); does nothing.

    ``first_token``: seconds from the call's start to its first chunk with tokens;
    ``tokens``: a later chunk's tokens and the seconds since the previous chunk with tokens;
    ``finished``: the call's final gRPC status code name (``OK``, ``INVALID_ARGUMENT``,
    ``CANCELLED``...), once it has terminated. Called on gRPC's threads: keep them quick.
    """

    def first_token(self, seconds: float) -> None:
        pass

    def tokens(self, count: int, seconds: float) -> None:
        pass

    def finished(self, code: str) -> None:
        pass


class GenerateTiming:
    """One Generate call's timing and end, reported to a :class:`GenerateObserver`."""

    def __init__(self, observer: GenerateObserver, context: grpc.ServicerContext):
        self._observer = observer
        self._started = self._last = time.monotonic()
        self._first = True
        self.completed = False  # the stream ran to its end (gRPC then sends OK)
        if not context.add_callback(lambda: self._terminated(context)):
            self._terminated(context)

    def chunk(self, token_count: int) -> None:
        if not token_count:
            return
        now = time.monotonic()
        if self._first:
            self._first = False
            self._observer.first_token(now - self._started)
        else:
            self._observer.tokens(token_count, now - self._last)
        self._last = now

    def _terminated(self, context: grpc.ServicerContext) -> None:
        code = context.code()  # set by abort(); None when the handler did not set one
        if code is not None:
            name = code.name
        elif self.completed:
            name = "OK"
        elif context.time_remaining() == 0:  # grpcio gives 0 once a client's deadline passed
            name = "DEADLINE_EXCEEDED"
        else:
            name = "CANCELLED"  # the client went away
        self._observer.finished(name)


# The caller's request id (the REST edge sends it as metadata and as GenerateRequest.request_id).
REQUEST_ID_METADATA_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128


def for_log(text: str, limit: int) -> str:
    """A client's string made safe for one log line: printable ASCII (others escaped), bounded."""
    return ascii(text)[1:-1][:limit]


def request_id_of(request, context: grpc.ServicerContext) -> str:
    """The call's request id for logs: the ``x-request-id`` metadata, else ``request.request_id``;
    printable ASCII (others escaped), at most MAX_REQUEST_ID_CHARS."""
    found = ""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY and isinstance(value, str) and value:
            found = value
            break
    found = found or request.request_id
    return for_log(found, MAX_REQUEST_ID_CHARS)


class GenerateLog(GenerateObserver):
    """Passes a Generate call's events on to the observer and logs one INFO line when it ends:
    request id, model, outcome (status code name), tokens and duration (also as fields, for
    ``--log-format json``)."""

    def __init__(self, observer: GenerateObserver, request_id: str, model: str):
        self._observer = observer
        self._started = time.monotonic()
        self.request_id = request_id
        self.model = model
        self.prompt_tokens: int | None = None  # known from the last chunk's usage
        self.completion_tokens = 0

    def chunk(self, chunk) -> None:
        """Counts a GenerationChunk's tokens (the last one's usage has the totals)."""
        self.completion_tokens += len(chunk.token_ids)
        if chunk.usage is not None:
            self.prompt_tokens = chunk.usage.prompt_tokens
            self.completion_tokens = chunk.usage.completion_tokens

    def first_token(self, seconds: float) -> None:
        self._observer.first_token(seconds)

    def tokens(self, count: int, seconds: float) -> None:
        self._observer.tokens(count, seconds)

    def finished(self, code: str) -> None:
        try:
            self._observer.finished(code)
        finally:
            duration = time.monotonic() - self._started
            prompt = "-" if self.prompt_tokens is None else self.prompt_tokens
            log.info("generate %s: model %s, %s, %s prompt + %d completion tokens in %.3fs",
                     self.request_id or "-", self.model, code, prompt, self.completion_tokens, duration,
                     extra={"request_id": self.request_id, "model": self.model, "outcome": code,
                            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                            "duration_s": round(duration, 6)})
