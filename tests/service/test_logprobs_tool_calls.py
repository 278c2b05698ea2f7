"""logprobs cover only what reaches the client as content (issue 21): with tools, neither the
call markup (``<tool_call>``) nor the call's JSON appear in them, on both engines, for calls the
model opens by itself (``auto``) and for forced ones."""

from __future__ import annotations

import pytest

from inference_service.engine.types import GenerationRequest, SamplingParams
from tests.engines import SMOLLM2, each_engine, smollm2_engines  # noqa: F401  (fixtures)
from tests.service.test_structured_output import WEATHER, few_shot_weather_history, outcome

pytestmark = pytest.mark.model

LOGPROBS = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2)


def logprob_bytes(chunks) -> bytes:
    return b"".join(lp.token_bytes for c in chunks for lp in c.logprobs)


def test_auto_call_logprobs_are_the_contents_only(each_engine):
    request = GenerationRequest(model=SMOLLM2, messages=few_shot_weather_history("Paris"), max_tokens=60,
                                sampling=LOGPROBS, tools=(WEATHER,))
    text, calls, finish, chunks = outcome(each_engine, request)
    assert finish == "tool_calls" and calls, text
    covered = logprob_bytes(chunks)
    assert b"<tool_call>" not in covered and b"get_weather" not in covered and b"Paris" not in covered
    # Every token that began in the content keeps its entry (a token may run into the marker).
    assert covered.startswith(text.encode("utf-8"))
    assert len(covered) < len(text.encode("utf-8")) + len(b"<tool_call>")


def test_forced_call_has_no_logprobs(each_engine):
    request = GenerationRequest(model=SMOLLM2, messages=few_shot_weather_history("Oslo"), max_tokens=60,
                                sampling=LOGPROBS, tools=(WEATHER,), tool_choice="required",
                                parallel_tool_calls=False)
    text, calls, finish, chunks = outcome(each_engine, request)
    assert finish == "tool_calls" and calls and text == ""
    assert logprob_bytes(chunks) == b""
    assert chunks[-1].usage.completion_tokens > 0  # the call's tokens are counted, not reported


def test_text_answers_keep_one_entry_per_token(each_engine):
    request = GenerationRequest(model=SMOLLM2, messages=few_shot_weather_history("Paris"), max_tokens=12,
                                sampling=LOGPROBS, tools=(WEATHER,), tool_choice="none")
    text, calls, _, chunks = outcome(each_engine, request)
    assert not calls
    assert sum(len(c.logprobs) for c in chunks) == chunks[-1].usage.completion_tokens
