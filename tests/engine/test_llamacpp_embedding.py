"""LlamaCppEmbedder on the default model's original GGUF, against llama-cpp-python's own
high-level embedding of the same texts (``Llama(embedding=True, pooling_type=MEAN).embed``).

The default model is a generation model: it declares no pooling, so the embedder pools by
mean, as the reference is told to. Texts are tokenized with llama.cpp's own tokenizer the way
``Llama.embed`` does (beginning-of-sequence token added, markup not parsed).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from inference_service.errors import Cancelled, ContextLengthExceeded, InvalidRequest

pytestmark = pytest.mark.model

MODEL = "smollm2:135m"
THREADS = 2
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "你好，世界！今天天气很好。",
    "def add(a, b):\n    return a + b\n",
    "Embeddings map text to vectors; similar texts get nearby vectors.",
    "🙂",
]
COSINE = 0.999


@pytest.fixture(scope="module")
def llama():
    from inference_service.engine import llamacpp_runtime

    llamacpp_runtime.initialize()  # llama.cpp's log goes to Python logging, warnings and errors only
    return llamacpp_runtime.llama_cpp_module()


@pytest.fixture(scope="module")
def model_path():
    from inference_service.models.registry import ModelRegistry

    return ModelRegistry().pull(MODEL)


@pytest.fixture(scope="module")
def model(llama, model_path):
    params = llama.llama_model_default_params()
    pointer = llama.llama_model_load_from_file(str(model_path).encode(), params)
    assert pointer, f"llama.cpp could not load {model_path}"
    yield pointer
    llama.llama_model_free(pointer)


@pytest.fixture(scope="module")
def embedder(model):
    from inference_service.engine.llamacpp_embedding import LlamaCppEmbedder

    with LlamaCppEmbedder(model, context_length=512, threads=THREADS) as e:
        yield e


@pytest.fixture(scope="module")
def small(model):
    """A short context and tiny micro-batches: long sequences are decoded in chunks."""
    from inference_service.engine.llamacpp_embedding import LlamaCppEmbedder

    with LlamaCppEmbedder(model, context_length=256, threads=THREADS, max_batch_tokens=16) as e:
        yield e


@pytest.fixture(scope="module")
def tokenize(llama, model):
    vocab = llama.llama_model_get_vocab(model)

    def tokenize(text: str) -> list[int]:
        data = text.encode("utf-8")
        room = len(data) + 8
        ids = (llama.llama_token * room)()
        n = llama.llama_tokenize(vocab, data, len(data), ids, room, True, False)  # add BOS, no markup
        assert 0 < n <= room
        return list(ids[:n])

    return tokenize


@pytest.fixture(scope="module")
def reference(llama, model_path):
    """llama-cpp-python's own embedding of each text (high-level API, mean pooling, normalized)."""
    llm = llama.Llama(model_path=str(model_path), embedding=True, pooling_type=llama.LLAMA_POOLING_TYPE_MEAN,
                      n_ctx=512, n_threads=THREADS, verbose=False)
    try:
        return {text: np.asarray(llm.embed(text, normalize=True), dtype=np.float64) for text in TEXTS}
    finally:
        llm.close()


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- what it is -------------------------------------------------------------------------------


def test_attributes(embedder, llama, model):
    assert embedder.dimensions == llama.llama_model_n_embd(model) == 576
    assert (embedder.pooling, embedder.pooling_fallback) == ("mean", True)  # a generation model declares none
    assert embedder.causal and not embedder.uses_encoder
    assert embedder.vocab_size == llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))


def test_vectors_are_unit_length_float32(embedder, tokenize):
    (vector,) = embedder.embed([tokenize(TEXTS[0])])
    assert vector.dtype == np.float32 and vector.shape == (576,)
    assert abs(float(np.linalg.norm(vector.astype(np.float64))) - 1.0) < 1e-5


# --- against llama-cpp-python -------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_matches_llama_cpp_pythons_own_embedding(embedder, tokenize, reference, text):
    (vector,) = embedder.embed([tokenize(text)])
    assert cosine(vector, reference[text]) >= COSINE


def test_the_same_text_twice_gives_the_same_vector(embedder, tokenize):
    ids = tokenize(TEXTS[1])
    first, second = embedder.embed([ids])[0], embedder.embed([ids])[0]
    assert np.array_equal(first, second)
    a, b = embedder.embed([ids, ids])  # twice in one request
    assert np.array_equal(a, first) and np.array_equal(b, first)


def test_identical_text_gives_a_bit_identical_vector_in_any_position(embedder, small, tokenize):
    """Issue 21: four copies of one text among others, packed into one decode, came out with the
    third off by 1e-3. Each sequence is now computed alone, whatever surrounds it."""
    text = tokenize("I believe the meaning of life is")
    others = [tokenize(t) for t in TEXTS]
    for e in (embedder, small):
        alone = e.embed([text])[0]
        request = [text, others[0], text, others[3] * 3, text, text, others[5], *others, text]
        vectors = e.embed(request)
        for sequence, vector in zip(request, vectors):
            if sequence is text:
                assert np.array_equal(vector, alone)


def test_batched_equals_one_at_a_time(embedder, small, tokenize, reference):
    sequences = [tokenize(t) for t in TEXTS]
    for e in (embedder, small):  # micro-batches of 512 and of 16 tokens
        together = e.embed(sequences)
        alone = [e.embed([s])[0] for s in sequences]
        assert len(together) == len(sequences)
        for text, a, b in zip(TEXTS, together, alone):
            assert np.array_equal(a, b)
            assert cosine(a, reference[text]) >= COSINE


def test_a_sequence_longer_than_a_micro_batch_is_chunked_exactly(embedder, small, tokenize):
    """Mean pooling over chunks (positions and cache continue) equals pooling the whole."""
    text = " ".join(TEXTS) * 2
    ids = tokenize(text)
    assert 16 * 3 < len(ids) <= 256
    (chunked,) = small.embed([ids])
    (whole,) = embedder.embed([ids])
    print(f"\n{len(ids)} tokens in chunks of 16: max |chunked - whole| = {float(np.abs(chunked - whole).max()):.3g}")
    assert cosine(chunked, whole) >= COSINE
    # among short ones it is chunked the same way, and they are unaffected
    short = tokenize(TEXTS[0])
    mixed = small.embed([short, ids, short])
    assert np.array_equal(mixed[1], chunked)
    assert np.array_equal(mixed[0], mixed[2]) and np.array_equal(mixed[0], small.embed([short])[0])


# --- bounds, cancellation, threads, closing ------------------------------------------------------------


def test_a_sequence_longer_than_the_context_is_refused(small):
    with pytest.raises(ContextLengthExceeded) as info:
        small.embed([[1] * 10, [1] * 257])
    assert info.value.param == "input" and "257" in str(info.value)
    assert len(small.embed([[1] * 256])[0]) == small.dimensions  # the context itself fits


@pytest.mark.parametrize("sequence", [[1, -1], [1, 49152], [10**9]])
def test_unknown_token_ids_are_refused(small, sequence):
    with pytest.raises(InvalidRequest) as info:
        small.embed([[1, 2], sequence])
    assert info.value.param == "input"


class CancelAfter:
    """An Event stand-in that turns set after ``n`` looks."""

    def __init__(self, n: int):
        self.n, self.looks = n, 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > self.n


def test_cancellation_between_sequences(small, tokenize):
    sequences = [tokenize(t) for t in TEXTS]  # 6 sequences, one decode each
    already = threading.Event()
    already.set()
    with pytest.raises(Cancelled):
        small.embed(sequences, cancelled=already)
    later = CancelAfter(1)
    with pytest.raises(Cancelled):
        small.embed(sequences, cancelled=later)
    assert later.looks == 2  # looked before the first decode, stopped before the second
    # the context is left clean: the next call gives what it always gives
    assert np.array_equal(small.embed([sequences[0]])[0], small.embed(sequences)[0])


def test_cancellation_between_chunks_of_a_long_sequence(small, tokenize):
    ids = tokenize(" ".join(TEXTS))
    assert len(ids) > 32
    later = CancelAfter(1)
    with pytest.raises(Cancelled):
        small.embed([ids], cancelled=later)
    assert later.looks == 2


def test_concurrent_callers_are_serialized(embedder, tokenize):
    sequences = [tokenize(t) for t in TEXTS[:3]]
    expected = [embedder.embed([s])[0] for s in sequences]
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = [embedder.embed([s])[0] for s in sequences]
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    for vectors in results.values():
        assert all(np.array_equal(a, b) for a, b in zip(vectors, expected))


def test_close_is_idempotent_and_final(model, tokenize):
    from inference_service.engine.llamacpp_embedding import LlamaCppEmbedder

    e = LlamaCppEmbedder(model, context_length=64, threads=1)
    assert len(e.embed([tokenize("hi")])) == 1
    e.close()
    e.close()
    with pytest.raises(RuntimeError):
        e.embed([tokenize("hi")])
    e.set_threads(2)  # a no-op once closed
    LlamaCppEmbedder(model, context_length=64, threads=1)  # left to garbage collection
