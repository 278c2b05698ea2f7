"""Every llama.cpp compute call of the process runs on one thread (``compute_thread``), whatever
calls it: concurrent chats on two models and embeddings from threads that stay alive.

A second thread calling ``llama_decode`` would become a second OpenMP master and halve every
model's decoding speed for as long as it lives (measured; see compute_thread's docstring).
Interleaved on the one thread, each answer stays what it is alone.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from inference_service.engine.engine import Engine, EngineConfig
from tests.engines import CONTEXT_LENGTH, GEMMA3, SAFETY_SECONDS, SMOLLM2, chat, gemma3_file, run  # noqa: F401  (fixture)

pytestmark = pytest.mark.model

QUESTION = ("user", "Name three rivers of Europe and say one thing about each.")
TEXTS = ["The quick brown fox jumps over the lazy dog.", "What is the capital of France?"]


@pytest.fixture(scope="module")
def two_models(model_file, gemma3_file):
    engine = Engine.load([model_file, gemma3_file], EngineConfig(slots=2, max_waiting=8, context_length=CONTEXT_LENGTH),
                         engines=["llamacpp", "llamacpp"])
    yield engine
    engine.close()


@pytest.fixture
def compute_callers(monkeypatch):
    """The ids of the threads that call llama_decode / llama_encode from now on."""
    from inference_service.engine import llamacpp_runtime

    llama = llamacpp_runtime.llama_cpp_module()
    callers: set[int] = set()
    for name in ("llama_decode", "llama_encode"):
        original = getattr(llama, name)

        def recorded(*args, _original=original):
            callers.add(threading.get_ident())
            return _original(*args)

        monkeypatch.setattr(llama, name, recorded)
    return callers


def test_chats_on_two_models_and_embeddings_compute_on_one_thread(two_models, compute_callers):
    smollm2_alone = run(two_models, chat(QUESTION, max_tokens=24))
    gemma3_alone = run(two_models, chat(QUESTION, model=GEMMA3, max_tokens=24))
    vectors_alone = two_models.embed(SMOLLM2, TEXTS).vectors

    answers: dict[str, object] = {}
    stay = threading.Event()

    def chat_on(key, model):
        answers[key] = run(two_models, chat(QUESTION, model=model, max_tokens=24))

    def embed_and_stay(key):
        answers[key] = two_models.embed(SMOLLM2, TEXTS).vectors
        stay.wait(SAFETY_SECONDS)  # a gRPC worker thread lives on after its request

    workers = [threading.Thread(target=chat_on, args=("smollm2", SMOLLM2)),
               threading.Thread(target=chat_on, args=("gemma3", GEMMA3)),
               threading.Thread(target=embed_and_stay, args=("embed-1",)),
               threading.Thread(target=embed_and_stay, args=("embed-2",))]
    for worker in workers:
        worker.start()
    for worker in workers[:2]:
        worker.join(SAFETY_SECONDS)
    deadline = time.monotonic() + SAFETY_SECONDS
    while not all(k in answers for k in ("embed-1", "embed-2")) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = run(two_models, chat(QUESTION, max_tokens=24))  # with the embedding threads alive
    stay.set()

    assert answers["smollm2"].token_ids == smollm2_alone.token_ids == after.token_ids
    assert answers["gemma3"].token_ids == gemma3_alone.token_ids
    for key in ("embed-1", "embed-2"):
        np.testing.assert_allclose(np.asarray(answers[key]), np.asarray(vectors_alone), atol=1e-5)
    assert len(compute_callers) == 1 and threading.get_ident() not in compute_callers


def test_the_embeddings_share_of_the_config_is_the_compute_threads(model_file):
    from inference_service.engine import compute_thread

    engine = Engine.load([model_file], EngineConfig(slots=1, context_length=CONTEXT_LENGTH, embeddings_share=0.6),
                         engines=["llamacpp"])
    try:
        assert compute_thread.shared().job_share == 0.6
        assert engine.embed(SMOLLM2, TEXTS).vectors
    finally:
        engine.close()
        compute_thread.shared().set_job_share(compute_thread.JOB_SHARE)
