"""Responses out: GenerateResponse streams → events, logprobs, models, and the renderers of both
routes (rest_edge.responses); the byte-exact reference shapes are in test_golden.py."""

from __future__ import annotations

import math

import pytest

from inference_service.v1 import inference_pb2 as pb
from rest_edge import responses
from rest_edge.errors import RequestError
from tests.edge.fakes import FakeCall, last, piece


# --- responses ----------------------------------------------------------------------------------

def test_events_text_then_finish():
    events = list(responses.events(FakeCall([piece("a"), piece("b"), last(prompt=4, completion=2, cached=1)])))
    assert events == [responses.Text("a"), responses.Text("b"),
                      responses.Finish("stop", {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6,
                                                "prompt_tokens_details": {"cached_tokens": 1}})]


def test_events_last_message_with_text_gives_text_first():
    events = list(responses.events(FakeCall([piece("a"), last("b", reason=pb.FINISH_REASON_LENGTH)])))
    assert [type(e).__name__ for e in events] == ["Text", "Text", "Finish"]
    assert events[1].text == "b" and events[2].finish_reason == "length"


def test_events_only_a_last_message():
    events = list(responses.events(FakeCall([last()])))
    assert len(events) == 1 and isinstance(events[0], responses.Finish)


def test_events_without_a_last_message_is_an_error():
    with pytest.raises(RequestError) as info:
        list(responses.events(FakeCall([piece("a")])))
    assert info.value.status == 500


def test_events_stop_after_the_last_message():
    call = FakeCall([last(), piece("ignored")])
    assert len(list(responses.events(call))) == 1
    assert call.consumed == 1


def test_events_carry_logprobs_of_tokens_without_text_forward():
    lp = [pb.TokenLogprob(token="a", logprob=-0.5), pb.TokenLogprob(token="b", logprob=-1.0)]
    events = list(responses.events(FakeCall([piece("", logprobs=lp[:1]), piece("x", logprobs=lp[1:]), last()])))
    assert [e.token for e in events[0].logprobs] == ["a", "b"]


def _token_logprob():
    return pb.TokenLogprob(
        token_id=7, token="你", logprob=-0.1, token_bytes="你".encode(),
        top_logprobs=[pb.TopLogprob(token_id=7, token="你", logprob=-0.1, token_bytes="你".encode()),
                      pb.TopLogprob(token_id=8, token="您", logprob=float("-inf"))],
    )


def test_chat_logprobs_shape():
    out = responses.chat_logprobs([_token_logprob()])
    assert out == {"content": [{
        "token": "你", "logprob": -0.1, "bytes": [228, 189, 160],
        "top_logprobs": [{"token": "你", "logprob": -0.1, "bytes": [228, 189, 160]},
                         {"token": "您", "logprob": -9999.0, "bytes": list("您".encode())}],
    }], "refusal": None}
    assert list(out) == ["content", "refusal"]  # OpenAI's ChatCompletion logprobs: refusal nullable, required
    assert list(out["content"][0]) == ["token", "logprob", "bytes", "top_logprobs"]


def test_completion_logprobs_shape_and_offsets():
    lp2 = pb.TokenLogprob(token="好", logprob=-2.0)
    out, offset = responses.completion_logprobs([_token_logprob(), lp2], offset=3)
    assert out == {"tokens": ["你", "好"], "token_logprobs": [-0.1, -2.0],
                   "top_logprobs": [{"你": -0.1, "您": -9999.0}, {}], "text_offset": [3, 4]}
    assert offset == 5


def test_logprob_values_are_finite_and_short():
    assert responses._logprob(float("nan")) == -9999.0
    assert responses._logprob(-math.inf) == -9999.0
    assert responses._logprob(pb.TokenLogprob(logprob=-0.1).logprob) == -0.1


def test_model_object():
    info = pb.ModelInfo(name="smollm2:135m", created=1700000000, owned_by="library", context_length=8192)
    assert responses.model_object(info) == {"id": "smollm2:135m", "object": "model", "created": 1700000000,
                                            "owned_by": "library"}


# --- renderers ----------------------------------------------------------------------------------

def _lp(token, value):
    return pb.TokenLogprob(token=token, logprob=value)


def test_renderers_have_their_routes_id_prefix():
    assert responses.CompletionRenderer.id_prefix == "cmpl"
    assert responses.ChatRenderer.id_prefix == "chatcmpl"


def test_completion_chunks_carry_text_offsets_across_the_stream():
    render = responses.CompletionRenderer("cmpl-1", "m", logprobs=True, clock=lambda: 7)
    (first,) = render.chunks(responses.Text("ab", (_lp("a", -0.5), _lp("b", -1.0))))
    (second,) = render.chunks(responses.Text("c", (_lp("c", -2.0),)))
    (end,) = render.chunks(responses.Finish("length", {}))
    assert first["choices"][0]["logprobs"]["text_offset"] == [0, 1]
    assert second["choices"][0]["logprobs"]["text_offset"] == [2]
    assert end["choices"][0] == {"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}
    assert first["id"] == "cmpl-1" and first["created"] == 7 and first["model"] == "m"


def test_chat_chunks_without_logprobs_have_no_logprobs_key_and_usage_when_asked():
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    render = responses.ChatRenderer("chatcmpl-1", "m", include_usage=True, clock=lambda: 7)
    (text,) = render.chunks(responses.Text("hi"))
    assert text["choices"][0] == {"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}
    end, usage_chunk = render.chunks(responses.Finish("stop", usage))
    assert end["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == usage
    assert len(responses.ChatRenderer("chatcmpl-2", "m").chunks(responses.Finish("stop", usage))) == 1


@pytest.mark.parametrize("renderer, text_of", [
    (responses.CompletionRenderer, lambda choice: choice["text"]),
    (responses.ChatRenderer, lambda choice: choice["message"]["content"]),
])
def test_body_joins_the_text_and_takes_the_finish(renderer, text_of):
    events = responses.events(FakeCall([piece("Hel"), piece("lo"), last("!", prompt=4, completion=3)]))
    body = renderer("x-1", "m", clock=lambda: 7).body(events)
    (choice,) = body["choices"]
    assert text_of(choice) == "Hello!" and choice["finish_reason"] == "stop" and "logprobs" not in choice
    assert body["usage"]["total_tokens"] == 7


def test_body_logprobs_gather_every_token():
    events = [responses.Text("a", (_lp("a", -0.5),)), responses.Finish("stop", {}, (_lp("", -1.0),))]
    body = responses.CompletionRenderer("cmpl-1", "m", logprobs=True).body(events)
    assert body["choices"][0]["logprobs"]["tokens"] == ["a", ""]


def test_a_service_stream_without_its_last_message_is_an_error_before_any_body():
    unfinished = [pb.GenerateResponse(text="a")]
    with pytest.raises(RequestError) as info:
        responses.ChatRenderer("chatcmpl-1", "m").body(responses.events(unfinished))
    assert info.value.status == 500
