"""The real inference service (subprocess, default model, 2 slots, max-waiting 2) over gRPC.

Outputs are greedy (temperature 0) unless a test says otherwise, so they are exact and
repeatable; generations are kept short for a 2-core machine.
"""

from __future__ import annotations

import threading

import grpc
import pytest

from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from tests.helpers import eventually
from tests.service.helpers import (
    MODEL,
    no_eos_bias,
    SAFETY,
    STORY_TURNS,
    SYSTEM,
    chat,
    generate,
    generate_retrying_while_full,
    request,
)

pytestmark = pytest.mark.model

FRANCE = (SYSTEM, ("user", "What is the capital of France?"))
STORY = STORY_TURNS


@pytest.fixture(scope="module")
def stub(service):
    with service.channel() as channel:
        yield pb_grpc.InferenceServiceStub(channel)


def test_list_models(stub):
    models = stub.ListModels(pb.ListModelsRequest(), timeout=SAFETY).models
    assert [(m.name, m.owned_by, m.context_length, m.has_chat_template) for m in models] == [
        (MODEL, "HuggingFaceTB", 4096, True)
    ]


def test_greedy_answer_to_a_known_question(stub):
    result = generate(stub, request(*FRANCE, max_tokens=40))
    assert "Paris" in result.text
    assert result.last.finish_reason == pb.FINISH_REASON_STOP
    assert "<|im_end|>" not in result.text and "<|im_start|>" not in result.text
    assert all(m.model == MODEL for m in result.messages)
    assert [m.HasField("usage") for m in result.messages] == [False] * (len(result.messages) - 1) + [True]


def test_same_seed_same_text(stub):
    req = request(*STORY, temperature=0.8, seed=1234, max_tokens=24)
    first = generate(stub, req)
    second = generate(stub, req)
    assert first.text == second.text
    assert first.token_ids == second.token_ids
    assert first.text  # something was generated
    # A different seed very likely gives a different text; that is not asserted.


def test_streamed_pieces_join_to_the_text_of_a_second_run(stub):
    req = request(*STORY, max_tokens=30)
    streamed = generate(stub, req)
    again = generate(stub, req)
    assert len(streamed.messages) > 1, "the answer arrives in pieces"
    assert all(m.text for m in streamed.messages[:-1]), "only the last message may be empty"
    assert streamed.text == again.text
    assert streamed.token_ids == again.token_ids


def test_usage_counts_match_tokenize_and_received_tokens(stub):
    result = generate(stub, request(*FRANCE, max_tokens=40))
    tokenized = stub.Tokenize(pb.TokenizeRequest(model=MODEL, messages=chat(*FRANCE)), timeout=SAFETY)
    usage = result.last.usage
    assert usage.prompt_tokens == len(tokenized.token_ids)
    assert tokenized.tokens[-4:] == ["<|im_start|>", "ass", "istant", "Ċ"]  # generation prompt included
    assert usage.completion_tokens == len(result.token_ids)
    assert usage.cached_prompt_tokens < usage.prompt_tokens


def test_stop_string_spanning_tokens_never_appears(stub):
    base = generate(stub, request(*STORY, max_tokens=40))
    assert base.last.finish_reason == pb.FINISH_REASON_LENGTH
    full = base.text
    # Messages end at token boundaries: take the end of one message and the start of the
    # next (a one-token message), so the stop string spans a token boundary.
    offsets, position = [], 0
    for message in base.messages:
        offsets.append(position)
        position += len(message.text)
    chosen = None
    for i in range(3, len(base.messages) - 1):
        left, right = base.messages[i].text, base.messages[i + 1].text
        if len(left) < 2 or len(right) < 2 or len(base.messages[i + 1].token_ids) != 1:
            continue
        stop = left[-2:] + right[:2]
        if full.find(stop) == offsets[i + 1] - 2:  # its first occurrence is this boundary
            chosen = (i, stop)
            break
    assert chosen, f"no boundary to test in {[m.text for m in base.messages]}"
    i, stop = chosen

    stopped = generate(stub, request(*STORY, max_tokens=40, stop=[stop]))
    assert stopped.text == full[: full.index(stop)]
    assert stopped.last.finish_reason == pb.FINISH_REASON_STOP
    assert all(stop not in m.text for m in stopped.messages)
    # The tokens of the matched stop string were generated, so they are counted.
    assert stopped.last.usage.completion_tokens == sum(len(m.token_ids) for m in base.messages[: i + 2])


def test_chinese_streams_as_whole_characters(stub):
    result = generate(stub, request(("user", "请用中文回答：你好吗？"), max_tokens=12))
    assert result.text
    # Held-back bytes never show as U+FFFD, even when max_tokens cuts a character short.
    assert all("\ufffd" not in m.text for m in result.messages)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in result.text), result.text
    # A message carrying more tokens than characters had a character split across
    # tokens: its first tokens were held back until the character was complete.
    assert any(len(m.token_ids) > len(m.text) for m in result.messages), [(m.text, list(m.token_ids)) for m in result.messages]
    assert result.last.usage.completion_tokens == len(result.token_ids)


def test_max_tokens_ends_with_length(stub):
    result = generate(stub, request(*STORY, max_tokens=5))
    assert result.last.finish_reason == pb.FINISH_REASON_LENGTH
    assert result.last.usage.completion_tokens == 5
    assert len(result.token_ids) == 5


def test_prompt_plus_max_tokens_beyond_the_context_is_out_of_range(stub):
    tokenized = stub.Tokenize(pb.TokenizeRequest(model=MODEL, messages=chat(*FRANCE)), timeout=SAFETY)
    n_prompt = len(tokenized.token_ids)
    max_tokens = 4097 - n_prompt  # one more than fits
    call = stub.Generate(request(*FRANCE, max_tokens=max_tokens), timeout=SAFETY)
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for message in call:
            received.append(message)
    assert received == [], "refused before any message"
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    details = info.value.details()
    assert "4096" in details and "4097" in details
    assert f"{n_prompt} in the prompt" in details and f"{max_tokens} for the completion" in details


def test_prompt_alone_beyond_the_context_is_out_of_range(stub):
    call = stub.Generate(pb.GenerateRequest(model=MODEL, prompt="hello " * 5000, raw=True), timeout=SAFETY)
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "4096" in info.value.details()


def test_invalid_field_is_named(stub):
    call = stub.Generate(request(*FRANCE, temperature=3.0), timeout=SAFETY)
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata())["error-param"] == "temperature"


def test_unknown_model_is_not_found(stub):
    call = stub.Generate(pb.GenerateRequest(model="nope:1b", prompt="hi"), timeout=SAFETY)
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_two_concurrent_streams_match_their_solo_runs(stub):
    requests = [
        request(*FRANCE, max_tokens=30),
        request(SYSTEM, ("user", "Write a haiku about the sea."), max_tokens=30),
    ]
    solo = [generate(stub, r) for r in requests]
    together: list = [None, None]
    errors: list = []

    def run(i):
        try:
            together[i] = generate(stub, requests[i])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SAFETY)
    assert not errors and all(r is not None for r in together), errors
    for alone, concurrent in zip(solo, together):
        assert concurrent.text == alone.text
        assert concurrent.token_ids == alone.token_ids
        assert concurrent.last.finish_reason == alone.last.finish_reason != pb.FINISH_REASON_UNSPECIFIED
        assert concurrent.last.usage.completion_tokens == alone.last.usage.completion_tokens


def test_queue_cap_then_cancelled_requests_leave(stub):
    long_request = request(*STORY, max_tokens=500, logit_bias=no_eos_bias(stub))
    running = [stub.Generate(long_request, timeout=SAFETY) for _ in range(2)]
    for call in running:
        next(call)  # both slots are now busy generating
    # Two may wait (max-waiting 2); of three more, exactly one is refused. Which one is up to
    # the server's thread scheduling, so all three are sent and the refusal looked for.
    extra = [stub.Generate(long_request, timeout=SAFETY) for _ in range(3)]
    try:
        eventually(lambda: any(c.done() for c in extra), "a request beyond the cap was refused", timeout=SAFETY)
        refused = [c for c in extra if c.done()]
        assert len(refused) == 1
        assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(refused[0].trailing_metadata())["retry-after"] == "1"
        assert "limit 2" in refused[0].details()
    finally:
        for call in running + extra:
            call.cancel()
    for call in running + extra:
        assert call.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)

    # Cancelled waiters left the queue: had they stayed, every new request would be
    # refused (2 waiting = the cap) or stuck behind them.
    followers: list = [None, None]

    def follow(i):
        followers[i] = generate_retrying_while_full(stub, request(*FRANCE, max_tokens=5, logit_bias=no_eos_bias(stub)))

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SAFETY)
    for result in followers:
        assert result is not None
        assert result.last.finish_reason == pb.FINISH_REASON_LENGTH
        assert result.last.usage.completion_tokens == 5
