"""A thinking model through the real stack (a GGUF the tests write: the default model's weights
under a Qwen3-style thinking template; a real service and gunicorn; the official openai
client): its thinking comes apart from the answer and never inside it, streamed or not, and
``reasoning_effort: "none"`` gives the answer only."""

from __future__ import annotations

import openai
import pytest

from harness.processes import stop_process
from tests.conftest import start_edge, start_service
from tests.engines import THINKING, thinking_model_file  # noqa: F401  (fixture)

pytestmark = pytest.mark.model

SAFETY = 300.0  # seconds; a bound on a hang, never a measured limit
USER = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def oai(thinking_model_file, tmp_path_factory):
    service = start_service(tmp_path_factory.mktemp("thinking"), "--model",
                            f"{THINKING}={thinking_model_file.source_path}", "--slots", "1")
    try:
        edge = start_edge(service.address, tmp_path_factory.mktemp("thinking-edge") / "gunicorn.log")
        try:
            client = openai.OpenAI(base_url=edge.base_url + "/v1", api_key="unused", max_retries=0, timeout=SAFETY)
            yield client
            client.close()
        finally:
            stop_process(edge.process)
    finally:
        stop_process(service.process)


def test_thinking_comes_as_reasoning_not_content(oai):
    answer = oai.chat.completions.create(model=THINKING, messages=USER, max_tokens=24, temperature=0)
    message = answer.choices[0].message
    assert message.model_extra["reasoning"].strip()
    assert "<think>" not in (message.content or "") and "</think>" not in (message.content or "")


def test_streamed_thinking_never_leaks_a_tag(oai):
    reasoning, content = [], []
    for chunk in oai.chat.completions.create(model=THINKING, messages=USER, max_tokens=24, temperature=0,
                                             stream=True):
        delta = chunk.choices[0].delta
        reasoning.append((delta.model_extra or {}).get("reasoning") or "")
        content.append(delta.content or "")
    assert "".join(reasoning).strip()
    assert all("think>" not in piece for piece in reasoning + content)


def test_reasoning_effort_none_is_the_answer_only(oai):
    answer = oai.chat.completions.create(model=THINKING, messages=USER, max_tokens=24, temperature=0,
                                         reasoning_effort="none")
    message = answer.choices[0].message
    assert message.content and "reasoning" not in (message.model_extra or {})
