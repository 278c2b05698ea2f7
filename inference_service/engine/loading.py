"""The engine while the models load: the service binds first, so health can answer
NOT_SERVING meanwhile, and every call is UNAVAILABLE until the real engine is ready."""

from __future__ import annotations

from inference_service.engine.types import InferenceEngine
from inference_service.errors import ServiceUnavailable


class LoadingEngine(InferenceEngine):
    """The engine while it loads: every call is UNAVAILABLE until ``ready(engine)``.

    The server binds before the models load, so health can answer NOT_SERVING meanwhile.
    """

    def __init__(self):
        self._engine = None

    def ready(self, engine: InferenceEngine) -> None:
        self._engine = engine

    def _loaded(self):
        if self._engine is None:
            raise ServiceUnavailable("the model is still loading; retry shortly")
        return self._engine

    def generate(self, request, cancelled=None, deadline=None):
        return self._loaded().generate(request, cancelled=cancelled, deadline=deadline)

    def models(self):
        return self._loaded().models()

    def tokenize(self, model_name, text="", messages=(), raw=False):
        return self._loaded().tokenize(model_name, text, messages, raw=raw)

    def status(self):
        return self._loaded().status()

    def embed(self, model_name, inputs, cancelled=None):
        return self._loaded().embed(model_name, inputs, cancelled=cancelled)
