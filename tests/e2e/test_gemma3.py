"""gemma3:270m end to end: a real service of its own (llama.cpp engine, 2 slots), real gunicorn
in front, the official openai client.

gemma3:270m is a *base* model with a SentencePiece vocabulary of 262k tokens: its text is odd,
so these tests check mechanics (status, shapes, counts), never what it says.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import start_edge, start_service, stop_process
from tests.engines import GEMMA3, gemma3_file  # noqa: F401  (fixture)

pytestmark = pytest.mark.model

MAX_TOKENS = 12
TIMEOUT = 300.0  # generous safety only: the machine is shared
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def gemma3_service(gemma3_file, tmp_path_factory):
    running = start_service(tmp_path_factory.mktemp("gemma3-service"), "--model", GEMMA3, "--slots", "2")
    yield running
    stop_process(running.process)


@pytest.fixture(scope="module")
def gemma3_edge(gemma3_service, tmp_path_factory):
    running = start_edge(gemma3_service.address, tmp_path_factory.mktemp("gemma3-edge") / "gunicorn.log")
    yield running
    stop_process(running.process)


@pytest.fixture(scope="module")
def oai(gemma3_edge):
    client = openai.OpenAI(base_url=gemma3_edge.base_url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
    yield client
    client.close()


def check_usage(usage, finish_reason: str) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if finish_reason == "length":
        assert usage.completion_tokens == MAX_TOKENS


def test_chat_non_stream(oai):
    response = oai.chat.completions.with_raw_response.create(
        model=GEMMA3, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
    assert response.status_code == 200
    completion = response.parse()
    assert completion.object == "chat.completion" and completion.model == GEMMA3
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    check_usage(completion.usage, choice.finish_reason)
    # the template's turn markers are control tokens: they never show as text
    assert "<end_of_turn>" not in choice.message.content and "<start_of_turn>" not in choice.message.content


def test_chat_stream(oai):
    response = oai.chat.completions.with_raw_response.create(
        model=GEMMA3, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True})
    assert response.status_code == 200
    *content, usage_chunk = list(response.parse())
    assert content and all(c.object == "chat.completion.chunk" and c.model == GEMMA3 for c in content)
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert text.strip()
    finish_reason = content[-1].choices[0].finish_reason
    assert finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert usage_chunk.choices == []
    check_usage(usage_chunk.usage, finish_reason)
    # greedy: the same text as without streaming
    again = oai.chat.completions.create(model=GEMMA3, messages=MESSAGES, temperature=0, max_tokens=MAX_TOKENS)
    assert again.choices[0].message.content == text
    assert again.usage.prompt_tokens == usage_chunk.usage.prompt_tokens


def test_completion_non_stream(oai):
    response = oai.completions.with_raw_response.create(
        model=GEMMA3, prompt=PROMPT, temperature=0, max_tokens=MAX_TOKENS)
    assert response.status_code == 200
    completion = response.parse()
    assert completion.object == "text_completion" and completion.model == GEMMA3
    choice = completion.choices[0]
    assert choice.text.strip()
    assert choice.finish_reason in ("stop", "length")
    check_usage(completion.usage, choice.finish_reason)


def test_completion_stream(oai):
    response = oai.completions.with_raw_response.create(
        model=GEMMA3, prompt=PROMPT, temperature=0, max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True})
    assert response.status_code == 200
    *content, usage_chunk = list(response.parse())
    assert content and all(c.object == "text_completion" and c.model == GEMMA3 for c in content)
    text = "".join(c.choices[0].text for c in content)
    assert text.strip()
    finish_reason = content[-1].choices[0].finish_reason
    assert finish_reason in ("stop", "length")
    assert usage_chunk.choices == []
    check_usage(usage_chunk.usage, finish_reason)
    again = oai.completions.create(model=GEMMA3, prompt=PROMPT, temperature=0, max_tokens=MAX_TOKENS)
    assert again.choices[0].text == text


def test_models_lists_it(oai, gemma3_edge):
    assert [m.id for m in oai.models.list().data] == [GEMMA3]
    body = httpx.get(gemma3_edge.base_url + "/v1/models", timeout=TIMEOUT).json()
    (entry,) = body["data"]
    # The reference's model object, nothing more (engine and architecture are gRPC's ListModels').
    assert list(entry) == ["id", "object", "created", "owned_by"]
    assert entry["id"] == GEMMA3 and entry["object"] == "model" and entry["owned_by"] == "google"


def test_grpc_list_models_names_the_engine_and_architecture(gemma3_service):
    with gemma3_service.channel() as channel:
        models = pb_grpc.InferenceServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=TIMEOUT).models
    assert [(m.name, m.engine, m.architecture, m.owned_by) for m in models] == [(GEMMA3, "llamacpp", "gemma3", "google")]
    assert models[0].has_chat_template
