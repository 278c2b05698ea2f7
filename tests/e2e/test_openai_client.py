"""The official ``openai`` client against the real edge, real service and real model.

Greedy (temperature 0) requests with short ``max_tokens``: the answers are deterministic, so
a stream and the same request without stream must agree.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest

from tests.e2e.helpers import MODEL

pytestmark = pytest.mark.model

QUESTION = "What is the capital of France?"
MAX_TOKENS = 24


def _check_usage(usage) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def _chat(oai, **kwargs):
    return oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=MAX_TOKENS, **kwargs
    )


def _completion(oai, **kwargs):
    return oai.completions.create(model=MODEL, prompt=QUESTION, temperature=0, max_tokens=MAX_TOKENS, **kwargs)


def _only_choice(resp, id_prefix: str, object_: str):
    """A whole answer's id, object, model, fingerprint and created; its one choice."""
    assert resp.id.startswith(id_prefix)
    assert resp.object == object_
    assert resp.model == MODEL
    assert resp.system_fingerprint == "fp_ollama"
    assert isinstance(resp.created, int)
    assert len(resp.choices) == 1
    assert resp.choices[0].index == 0
    return resp.choices[0]


def test_chat_non_stream(oai):
    resp = _chat(oai)
    choice = _only_choice(resp, "chatcmpl-", "chat.completion")
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    _check_usage(resp.usage)
    assert resp.usage.completion_tokens <= MAX_TOKENS
    if choice.finish_reason == "length":
        assert resp.usage.completion_tokens == MAX_TOKENS
    # The template's end-of-turn token never leaks into the text.
    assert "<|im_end|>" not in choice.message.content and "<|im_start|>" not in choice.message.content


def _checked_stream(create, include_usage: bool, id_prefix: str, object_: str) -> tuple[list, Any]:
    """A stream of ``create(...)`` beside the same request's whole answer: one id (not the
    answer's), every chunk's object, model and fingerprint; with ``include_usage``, a last
    chunk without choices with the answer's usage, and none before it. Returns (the chunks
    before that one, the answer)."""
    expected = create()
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(create(stream=True, **kwargs))

    ids = {c.id for c in chunks}
    assert len(ids) == 1, ids  # one id per response ...
    assert ids.pop() != expected.id  # ... and a new one for each response
    assert chunks[0].id.startswith(id_prefix)
    assert all(c.object == object_ for c in chunks)
    assert all(c.model == MODEL and c.system_fingerprint == "fp_ollama" for c in chunks)

    if include_usage:
        *content_chunks, usage_chunk = chunks
        assert usage_chunk.choices == []
        _check_usage(usage_chunk.usage)
        assert usage_chunk.usage.prompt_tokens == expected.usage.prompt_tokens
        assert usage_chunk.usage.completion_tokens == expected.usage.completion_tokens
    else:
        content_chunks = chunks
    assert all(c.usage is None for c in content_chunks)
    return content_chunks, expected


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream(oai, include_usage):
    content_chunks, expected = _checked_stream(functools.partial(_chat, oai), include_usage, "chatcmpl-",
                                               "chat.completion.chunk")

    assert all(len(c.choices) == 1 for c in content_chunks)
    *middle, last = content_chunks
    assert middle, "no content chunk before the last"
    assert all(c.choices[0].delta.role == "assistant" for c in content_chunks)
    assert all(c.choices[0].finish_reason is None and c.choices[0].delta.content for c in middle)
    assert last.choices[0].delta.content == ""
    assert last.choices[0].finish_reason == expected.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content for c in content_chunks)
    assert text.strip()
    assert text == expected.choices[0].message.content  # greedy: the same text, streamed or not


def test_completion_non_stream(oai):
    resp = _completion(oai)
    choice = _only_choice(resp, "cmpl-", "text_completion")
    assert choice.text.strip()
    assert choice.finish_reason in ("stop", "length")
    _check_usage(resp.usage)
    # On a chat model the prompt is one user turn of the template: the same tokens and the
    # same (greedy) answer as the chat request with that one message.
    chat = _chat(oai)
    assert resp.usage.prompt_tokens == chat.usage.prompt_tokens
    assert choice.text == chat.choices[0].message.content


def test_raw_completion_continues_the_prompt(oai):
    """``raw: true`` skips the template: a hand-written ChatML turn without the default system
    prompt gives this model's well-known greedy answer."""
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    resp = oai.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=MAX_TOKENS,
                                  extra_body={"raw": True})
    assert "Paris" in resp.choices[0].text
    assert resp.choices[0].finish_reason == "stop"  # <|im_end|> ends it and does not leak
    assert "<|im_end|>" not in resp.choices[0].text
    templated = _completion(oai)
    assert resp.usage.prompt_tokens < templated.usage.prompt_tokens  # no default system prompt


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_stream(oai, include_usage):
    content_chunks, expected = _checked_stream(functools.partial(_completion, oai), include_usage, "cmpl-",
                                               "text_completion")
    *middle, last = content_chunks
    assert middle
    assert all(c.choices[0].finish_reason is None and c.choices[0].text for c in middle)
    assert last.choices[0].text == ""
    assert last.choices[0].finish_reason == expected.choices[0].finish_reason
    text = "".join(c.choices[0].text for c in content_chunks)
    assert text == expected.choices[0].text


def test_include_usage_without_stream_is_harmless(oai):
    """``stream_options`` on a non-stream request changes nothing: usage is in the body anyway."""
    resp = _chat(oai, extra_body={"stream_options": {"include_usage": True}})
    _check_usage(resp.usage)


def test_seed_reproduces_sampled_text(oai):
    """A given seed makes the same request give the same text (temperature 1, sampled)."""
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a short joke."}],
                  temperature=1.0, max_tokens=16, seed=1234)
    first = oai.chat.completions.create(**kwargs)
    second = oai.chat.completions.create(**kwargs)
    assert first.choices[0].message.content == second.choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in oai.chat.completions.create(stream=True, **kwargs))
    assert streamed == first.choices[0].message.content


def test_stop_string_never_leaks(oai):
    """Greedy raw completion whose answer is known: the stop string and what follows are cut,
    streamed or not, and ``finish_reason`` is ``stop``."""
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    kwargs = dict(model=MODEL, prompt=prompt, temperature=0, max_tokens=MAX_TOKENS, stop=[" Paris", "zzz"],
                  extra_body={"raw": True})
    full = oai.completions.create(**{**kwargs, "stop": None})
    assert " Paris" in full.choices[0].text
    expected = full.choices[0].text.split(" Paris")[0]

    resp = oai.completions.create(**kwargs)
    assert resp.choices[0].text == expected
    assert resp.choices[0].finish_reason == "stop"
    # the stop string's tokens were generated, so they are counted
    assert resp.usage.completion_tokens > 0

    chunks = list(oai.completions.create(stream=True, **kwargs))
    streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == expected
    assert all("Paris" not in c.choices[0].text for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_concurrent_requests_match_sequential(oai, status):
    """Four greedy requests at once (2 slots + 2 waiting places: all admitted) give the same
    texts as one at a time: slots do not disturb each other."""
    status.wait_idle("before: nothing else holds a slot or a waiting place")
    prompts = ["Name a color.", "Name a fruit.", "Name an animal.", "Name a country."]

    def ask(prompt: str) -> str:
        resp = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=16)
        return resp.choices[0].message.content

    sequential = [ask(p) for p in prompts]
    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        concurrent = list(pool.map(ask, prompts))
    assert concurrent == sequential


def test_benchmark_tools_fixed_lengths_are_honoured(oai):
    """aiperf, guidellm and vllm bench send vLLM's ignore_eos / min_tokens to fix output lengths."""
    messages = [{"role": "user", "content": "Say hi."}]
    natural = oai.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48)
    assert natural.choices[0].finish_reason == "stop" and natural.usage.completion_tokens < 48
    fixed = oai.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48,
                                        extra_body={"ignore_eos": True})
    assert (fixed.choices[0].finish_reason, fixed.usage.completion_tokens) == ("length", 48)
    at_least = natural.usage.completion_tokens + 4
    held = oai.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48,
                                       extra_body={"min_tokens": at_least})
    assert held.usage.completion_tokens >= at_least
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=MODEL, prompt="Say hi.", max_tokens=4, extra_body={"min_tokens": 5})
    assert info.value.param == "min_tokens"
