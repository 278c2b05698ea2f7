"""n > 1 on /v1/chat/completions and /v1/completions (the real app over a scripted client that
interleaves the answers as the service does): choices by index, streamed and whole, one usage
(the prompt once, completions summed), one usage chunk and one [DONE] at the end."""

from __future__ import annotations

import json

import pytest

from inference_service.v1 import inference_pb2 as pb
from tests.edge.fakes import FakeClient
from tests.helpers import client_for

USER = [{"role": "user", "content": "Hi"}]


def answers(request: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    """n answers, interleaved: answer i writes 'a<i>' then 'b<i>'; the last index ends first."""
    n = request.n or 1
    out = [pb.GenerateResponse(text=f"a{i}", token_ids=[1], index=i) for i in range(n)]
    out += [pb.GenerateResponse(text=f"b{i}", token_ids=[2], index=i) for i in range(n)]
    for i in reversed(range(n)):
        out.append(pb.GenerateResponse(index=i, finish_reason=pb.FINISH_REASON_STOP,
                                       usage=pb.Usage(prompt_tokens=7, completion_tokens=2 + i,
                                                      cached_prompt_tokens=0 if i == 0 else 6)))
    return out


def sse(text: str) -> list:
    frames = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    return [f if f == "[DONE]" else json.loads(f) for f in frames]


@pytest.mark.parametrize("path, body, text_of", [
    ("/v1/chat/completions", {"messages": USER}, lambda c: c["message"]["content"]),
    ("/v1/completions", {"prompt": "Hi"}, lambda c: c["text"]),
])
def test_whole_answers_are_choices_by_index(path, body, text_of):
    fake = FakeClient(answers)
    out = client_for(fake).simulate_post(path, json={"model": "m", "n": 3, **body}).json
    assert fake.requests[-1].n == 3
    assert [(c["index"], text_of(c), c["finish_reason"]) for c in out["choices"]] == [
        (0, "a0b0", "stop"), (1, "a1b1", "stop"), (2, "a2b2", "stop")]
    assert out["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16,
                            "prompt_tokens_details": {"cached_tokens": 0}}


def test_streamed_answers_interleave_by_index_with_one_usage_and_one_done():
    fake = FakeClient(answers)
    frames = sse(client_for(fake).simulate_post("/v1/chat/completions", json={
        "model": "m", "n": 2, "messages": USER, "stream": True, "stream_options": {"include_usage": True}}).text)
    assert frames[-1] == "[DONE]" and frames.count("[DONE]") == 1
    chunks = frames[:-1]
    texts: dict[int, str] = {}
    finishes = {}
    for chunk in chunks[:-1]:
        choice = chunk["choices"][0]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["delta"]["content"]
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: "a0b0", 1: "a1b1"} and finishes == {0: "stop", 1: "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.parametrize("n", [0, 17, "2", True])
def test_n_out_of_range_or_not_an_integer_is_a_400(n):
    response = client_for(FakeClient(answers)).simulate_post("/v1/chat/completions",
                                                             json={"model": "m", "n": n, "messages": USER})
    assert response.status_code == 400 and response.json["error"]["param"] == "n"


def test_n_1_is_the_reference_answer_unchanged():
    fake = FakeClient(answers)
    out = client_for(fake).simulate_post("/v1/chat/completions", json={"model": "m", "n": 1, "messages": USER}).json
    assert [c["index"] for c in out["choices"]] == [0]
