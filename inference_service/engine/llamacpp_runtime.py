"""llama.cpp through llama-cpp-python's low-level ctypes API: loading a model, its metadata.

Only this module and the other ``llamacpp_*`` modules import ``llama_cpp``, and only when a
model is served by the llama.cpp engine: the ctransformers engine never needs it installed.
llama.cpp's own log is routed to Python logging (warnings and errors only), so a load
error says why instead of a bare failure.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

from inference_service.errors import ModelLoadError

log = logging.getLogger("inference_service.llamacpp")

_init_lock = threading.Lock()
_initialized = False
_log_callback = None  # kept referenced: llama.cpp holds the C function pointer
_recent_errors: list[str] = []  # the last error lines llama.cpp logged (quoted in load errors)
_LOG_WARN, _LOG_ERROR, _LOG_CONTINUE = 3, 4, 5  # ggml_log_level (NONE 0, DEBUG 1, INFO 2)


def llama_cpp_module():
    """The ``llama_cpp`` module, or a ModelLoadError saying how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(
            "the llama.cpp engine needs llama-cpp-python: pip install -e '.[llamacpp]' "
            f"(compiles llama.cpp once, about 6 minutes on 2 cores) ({exc})"
        ) from exc
    return llama_cpp


def initialize() -> None:
    """Backend init and log routing, once per process."""
    global _initialized, _log_callback
    with _init_lock:
        if _initialized:
            return
        llama = llama_cpp_module()

        pending = {"level": 0, "text": ""}  # a message arrives in pieces; emitted per line

        @llama.llama_log_callback
        def route(level, text, user_data):
            if level != _LOG_CONTINUE:
                pending["level"], pending["text"] = level, ""
            pending["text"] += text.decode("utf-8", errors="replace")
            if not pending["text"].endswith("\n"):
                return
            message, pending["text"] = pending["text"].strip(), ""
            if message and pending["level"] == _LOG_ERROR:
                _recent_errors.append(message)
                del _recent_errors[:-5]
                log.error("%s", message)
            elif message and pending["level"] == _LOG_WARN:
                log.warning("%s", message)

        _log_callback = route
        llama.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama.llama_backend_init()
        _initialized = True


class LlamaModel:
    """A loaded ``llama_model`` (weights, vocabulary, metadata), shared by its contexts."""

    def __init__(self, path: Path):
        initialize()
        llama = llama_cpp_module()
        self.llama = llama
        self.path = path
        params = llama.llama_model_default_params()
        params.n_gpu_layers = 0
        _recent_errors.clear()
        self.pointer = llama.llama_model_load_from_file(str(path).encode(), params)
        if not self.pointer:
            reason = "; ".join(_recent_errors) or "see the log"
            raise ModelLoadError(f"llama.cpp could not load {path}: {reason}")
        self.vocab = llama.llama_model_get_vocab(self.pointer)
        self.vocab_size = llama.llama_vocab_n_tokens(self.vocab)
        self.embedding_length = llama.llama_model_n_embd(self.pointer)
        self.trained_context = llama.llama_model_n_ctx_train(self.pointer)
        self._closed = False

    def metadata(self, key: str) -> str | None:
        buffer = ctypes.create_string_buffer(4096)
        n = self.llama.llama_model_meta_val_str(self.pointer, key.encode(), buffer, len(buffer))
        if n < 0:
            return None
        if n >= len(buffer):  # long values (chat templates): ask again with room
            buffer = ctypes.create_string_buffer(n + 1)
            self.llama.llama_model_meta_val_str(self.pointer, key.encode(), buffer, len(buffer))
        return buffer.value.decode("utf-8", errors="replace")

    @property
    def architecture(self) -> str:
        return self.metadata("general.architecture") or ""

    def chat_template(self) -> str | None:
        template = self.llama.llama_model_chat_template(self.pointer, None)
        return template.decode("utf-8", errors="replace") if template else None

    def close(self) -> None:
        if not self._closed and self.pointer:
            self._closed = True
            self.llama.llama_model_free(self.pointer)
