"""A thinking chat template on both engines (a GGUF the tests write: the default model's
weights, Qwen3's way of thinking): what the model writes inside <think> comes as reasoning,
never as text, and enable_thinking false gives the answer only."""

from __future__ import annotations

import pytest

from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams
from tests.engines import THINKING, run, thinking_engine, thinking_model_file  # noqa: F401  (fixtures)

pytestmark = pytest.mark.model

QUESTION = (ChatMessage("user", "What is the capital of France?"),)


def ask(engine, **fields) -> object:
    request = GenerationRequest(model=THINKING, messages=QUESTION, max_tokens=24,
                                sampling=SamplingParams(temperature=0.0), **fields)
    return run(engine, request)


def test_thinking_is_reasoning_not_text(thinking_engine):
    result = ask(thinking_engine)
    reasoning = "".join(c.reasoning for c in result.chunks)
    # The 135M model never closes the block it was put in: all it writes is thinking.
    assert reasoning.strip() and result.text == ""
    assert all("<think>" not in c.text + c.reasoning and "</think>" not in c.text + c.reasoning
               for c in result.chunks)


def test_thinking_off_is_the_answer_only(thinking_engine):
    result = ask(thinking_engine, thinking=False)
    assert result.text.strip()
    assert all(c.reasoning == "" for c in result.chunks)


def test_a_completion_prompt_is_never_split(thinking_engine):
    request = GenerationRequest(model=THINKING, prompt="<think>x</think> The capital of France is", raw=False,
                                max_tokens=4, sampling=SamplingParams(temperature=0.0))
    result = run(thinking_engine, request)
    assert all(c.reasoning == "" for c in result.chunks)
