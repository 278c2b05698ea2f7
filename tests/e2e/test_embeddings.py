"""Embeddings on the real models: every size the API allows is served (2,048 inputs on both
served models), and identical text gets a bit-identical vector in any position of any request,
alone or under concurrent users (issue 21).

The default model (smollm2:135m, 576 dimensions) goes through the real edge and over gRPC;
gemma3:270m (640 dimensions, llama.cpp engine) over gRPC. 2,048 vectors of either are more
than gRPC's default 4 MiB message, so these fail without the shared message limits.
"""

from __future__ import annotations

import threading

import grpc
import httpx
import numpy as np
import pytest

from inference_service import limits
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from rest_edge import replica as edge_replica
from tests.conftest import start_service, stop_process
from tests.engines import GEMMA3, gemma3_file  # noqa: F401  (fixture)
from tests.e2e.helpers import MODEL

pytestmark = pytest.mark.model

PHRASE = "I believe the meaning of life is"
TIMEOUT = 1800.0  # generous safety only: 2,048 inputs on a shared 2-core machine
# Where the phrase goes among 2,048 inputs: first, second, middle, last.
PHRASE_AT = (0, 2, 1000, limits.MAX_EMBEDDING_INPUTS - 1)


def many_inputs() -> list[str]:
    texts = [f"item {i}" for i in range(limits.MAX_EMBEDDING_INPUTS)]
    for i in PHRASE_AT:
        texts[i] = PHRASE
    return texts


def stub_of(address: str) -> pb_grpc.InferenceServiceStub:
    return pb_grpc.InferenceServiceStub(grpc.insecure_channel(address, options=limits.GRPC_MESSAGE_OPTIONS))


def embed(stub, model: str, texts: list[str]) -> list[np.ndarray]:
    reply = stub.Embed(pb.EmbedRequest(model=model, inputs=[pb.EmbedInput(text=t) for t in texts]), timeout=TIMEOUT)
    return [np.asarray(e.values, dtype=np.float32) for e in reply.embeddings]


@pytest.fixture(scope="module")
def gemma3_service(gemma3_file, tmp_path_factory):
    running = start_service(tmp_path_factory.mktemp("gemma3-embed"), "--model", GEMMA3, "--slots", "1")
    yield running
    stop_process(running.process)


def check_many(vectors: list[np.ndarray], alone: np.ndarray, dimensions: int) -> None:
    assert len(vectors) == limits.MAX_EMBEDDING_INPUTS
    assert all(v.shape == (dimensions,) for v in vectors)
    for i in PHRASE_AT:
        assert np.array_equal(vectors[i], alone), i


@pytest.mark.parametrize("which", ["default", "gemma3"])
def test_2048_inputs_over_grpc(which, request):
    service = request.getfixturevalue("service" if which == "default" else "gemma3_service")
    model = MODEL if which == "default" else GEMMA3
    stub = stub_of(service.address)
    info = next(m for m in stub.ListModels(pb.ListModelsRequest(), timeout=60).models if m.name == model)
    assert limits.embedding_answer_bytes(limits.MAX_EMBEDDING_INPUTS, info.embedding_dimensions) > 4 * 1024 * 1024
    (alone,) = embed(stub, model, [PHRASE])
    check_many(embed(stub, model, many_inputs()), alone, info.embedding_dimensions)


def test_the_edges_channels_take_the_largest_answer():
    assert dict(edge_replica.CHANNEL_OPTIONS)["grpc.max_receive_message_length"] == limits.MAX_MESSAGE_BYTES


def test_2048_inputs_through_the_edge(edge):
    with httpx.Client(base_url=edge.base_url, timeout=TIMEOUT) as http:
        alone = np.asarray(http.post("/v1/embeddings", json={"model": MODEL, "input": PHRASE}).json()["data"][0]
                           ["embedding"], dtype=np.float32)
        response = http.post("/v1/embeddings", json={"model": MODEL, "input": many_inputs()})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(limits.MAX_EMBEDDING_INPUTS))
    check_many([np.asarray(d["embedding"], dtype=np.float32) for d in data], alone, 576)


def test_identical_text_is_bit_identical_under_concurrent_users(edge):
    """Four users embed requests that hold the phrase in different places while two chats
    generate: every copy equals the phrase embedded alone."""
    with httpx.Client(base_url=edge.base_url, timeout=TIMEOUT) as http:
        def vectors(texts):
            response = http.post("/v1/embeddings", json={"model": MODEL, "input": texts})
            assert response.status_code == 200, response.text
            return [np.asarray(d["embedding"], dtype=np.float32) for d in response.json()["data"]]

        (alone,) = vectors([PHRASE])
        requests = [
            [PHRASE, PHRASE, PHRASE, PHRASE],
            ["The food was delicious.", PHRASE, "你好", PHRASE],
            ["word " * 200, PHRASE],
            [PHRASE, "x", "The quick brown fox jumps over the lazy dog."],
        ]
        results: dict[int, list] = {}
        failures: list[BaseException] = []

        def user(k: int) -> None:
            try:
                results[k] = vectors(requests[k])
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)

        def chat() -> None:
            try:
                http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 16,
                                                        "messages": [{"role": "user", "content": "Tell a story."}]})
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)

        threads = [threading.Thread(target=user, args=(k,)) for k in range(len(requests))]
        threads += [threading.Thread(target=chat) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert not failures
        for k, texts in enumerate(requests):
            for text, vector in zip(texts, results[k]):
                if text == PHRASE:
                    assert np.array_equal(vector, alone), (k, texts.index(text))
