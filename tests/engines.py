"""Fixtures shared by the tests of the two engines (ctransformers and llama.cpp).

Imported by the test modules that use them (``from tests.engines import ...``), not a conftest:

- ``smollm2_engines``: the default model loaded in process on each engine, lazily, once per
  session (``.get("ctransformers")``, ``.get("llamacpp")``), closed at the end;
- ``each_engine``: parametrized over the engines, so a test taking it runs once on each;
- ``batching_engine``: a separate 4-slot llama.cpp engine (continuous batching tests);
- ``gemma3_file``: the gemma3:270m GGUF (llama.cpp only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import pytest

from inference_service.engine.engine import Engine, EngineConfig, LoadedModel
from inference_service.engine.types import ChatMessage, GenerationChunk, GenerationRequest, SamplingParams

SMOLLM2 = "smollm2:135m"
GEMMA3 = "gemma3:270m"

ENGINE_NAMES = ("ctransformers", "llamacpp")
CONTEXT_LENGTH = 2048
GREEDY = SamplingParams(temperature=0.0)
# Bounds a hang on a busy 2-core machine; never a measured limit.
SAFETY_SECONDS = 120


class EngineCache:
    """One in-process engine per engine name, loaded on first use and kept for the session."""

    def __init__(self, model_file, config: EngineConfig):
        self._model_file = model_file
        self._config = config
        self._engines: dict[str, Engine] = {}

    def get(self, name: str) -> Engine:
        if name not in self._engines:
            self._engines[name] = Engine.load([self._model_file], self._config, engines=[name])
        return self._engines[name]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()


@pytest.fixture(scope="session")
def smollm2_engines(model_file):
    cache = EngineCache(model_file, EngineConfig(slots=2, max_waiting=4, context_length=CONTEXT_LENGTH))
    yield cache
    cache.close()


@pytest.fixture(scope="session", params=ENGINE_NAMES)
def each_engine(request, smollm2_engines) -> Engine:
    """The default model on one engine; a test taking this runs once per engine."""
    return smollm2_engines.get(request.param)


def four_slot_llamacpp(model_file, **config) -> Iterator[Engine]:
    """A 4-slot llama.cpp engine of its own with ``config`` (a fixture's body: yields, then closes)."""
    engine = Engine.load([model_file], EngineConfig(slots=4, max_waiting=4, context_length=CONTEXT_LENGTH, **config),
                         engines=["llamacpp"])
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def batching_engine(model_file):
    """A 4-slot llama.cpp engine of its own, drafting (``--speculative ngram``): its slots'
    caches belong to the batching tests."""
    yield from four_slot_llamacpp(model_file, speculative="ngram")


@pytest.fixture(scope="module")
def per_slot_engine(model_file):
    """A 4-slot llama.cpp engine with per-slot KV streams (``--llamacpp-kv per-slot``, the
    default) and no drafts."""
    yield from four_slot_llamacpp(model_file, kv_layout="per-slot")


@pytest.fixture(scope="module")
def unified_engine(model_file):
    """A 4-slot llama.cpp engine with one KV cache for all slots (``--llamacpp-kv unified``)."""
    yield from four_slot_llamacpp(model_file, kv_layout="unified")


@pytest.fixture(scope="session")
def gemma3_file():
    """gemma3:270m from the model registry (``make test`` pulls it: ``make test-models``)."""
    from inference_service.models.registry import ModelRegistry

    return ModelRegistry().resolve(GEMMA3)


# --- helpers ---------------------------------------------------------------------------------


@dataclass
class Run:
    chunks: list[GenerationChunk]

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    @property
    def token_ids(self) -> list[int]:
        return [i for c in self.chunks for i in c.token_ids]

    @property
    def last(self) -> GenerationChunk:
        return self.chunks[-1]

    @property
    def logprobs(self):
        return [lp for c in self.chunks for lp in c.logprobs]


def run(engine: Engine, request: GenerationRequest) -> Run:
    return Run(list(engine.generate(request)))


def chat(*turns: tuple[str, str], model: str = SMOLLM2, **fields) -> GenerationRequest:
    fields.setdefault("sampling", GREEDY)
    return GenerationRequest(model=model, messages=tuple(ChatMessage(r, c) for r, c in turns), **fields)


def loaded(engine: Engine, name: str = SMOLLM2) -> LoadedModel:
    return engine.model(name)


# SmolLM2's ChatML template made to think as Qwen3's does: the generation prompt opens a
# <think> block, or (enable_thinking false) writes an empty one; earlier answers lose theirs.
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip() %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + content + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}"
    "{% else %}{{ '<think>\n' }}{% endif %}{% endif %}"
)
THINKING = "smollm2-thinking:135m"


@pytest.fixture(scope="session")
def thinking_model_file(model_file, tmp_path_factory):
    """The default model's weights under a thinking chat template (a GGUF the tests write)."""
    from inference_service.models.gguf_compat import copy_with_metadata
    from inference_service.models.registry import ModelFile

    path = tmp_path_factory.mktemp("thinking") / "smollm2-thinking.gguf"
    copy_with_metadata(model_file.source_path, path, {"tokenizer.chat_template": THINKING_TEMPLATE})
    return ModelFile(name=THINKING, source_path=path, owned_by="tests")


@pytest.fixture(scope="session", params=ENGINE_NAMES)
def thinking_engine(request, thinking_model_file):
    engine = Engine.load([thinking_model_file], EngineConfig(slots=1, max_waiting=4, context_length=CONTEXT_LENGTH),
                         engines=[request.param])
    yield engine
    engine.close()
