"""Domain errors. The gRPC layer maps each to a status code; nothing here knows gRPC."""


class InferenceError(Exception):
    """Base class of the errors a caller can act on."""


class InvalidRequest(InferenceError):
    """A request field is missing or out of range."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class ContextLengthExceeded(InvalidRequest):
    """The prompt plus max_tokens does not fit the model's context."""

    def __init__(self, message: str, param: str = "messages"):
        super().__init__(message, param=param)


class ModelNotFound(InferenceError):
    """No model is served under that name."""


class ModelLoadError(InferenceError):
    """A model file cannot be loaded; the message names the file and the reason."""


class QueueFull(InferenceError):
    """Too many requests are waiting for a slot."""


class DeadlineExceeded(InferenceError):
    """The request's deadline passed while it waited for a slot."""


class Cancelled(InferenceError):
    """The caller went away."""


class ServiceUnavailable(InferenceError):
    """The service cannot take requests now (loading a model, or shutting down)."""
