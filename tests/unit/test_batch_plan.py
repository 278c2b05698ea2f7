"""What one llama.cpp step takes from the queue (``BatchedDecoder._plan``), without a model."""

from types import SimpleNamespace

from inference_service.engine.llamacpp_batch import BatchedDecoder, _Submission


def plan_of(queue, max_batch_tokens=512, prefill_chunk=128):
    decoder = SimpleNamespace(_queue=queue, max_batch_tokens=max_batch_tokens, prefill_chunk=prefill_chunk)
    return [(s.sequence.seq_id, take) for s, take in BatchedDecoder._plan(decoder)]


def submission(seq_id: int, tokens: int) -> _Submission:
    return _Submission(SimpleNamespace(seq_id=seq_id), list(range(tokens)))


def test_decoding_tokens_go_in_sequence_order_whatever_order_they_came_in():
    # Per-slot KV streams: llama.cpp puts only consecutive sequence ids in one micro-batch.
    queue = [submission(3, 1), submission(0, 1), submission(2, 1), submission(1, 1)]
    assert plan_of(queue) == [(0, 1), (1, 1), (2, 1), (3, 1)]


def test_a_prompt_beside_decoding_streams_takes_one_chunk_in_its_place():
    # 0, 1, 2, 3 in one micro-batch (a token each), then the rest of 2's chunk: two graph runs;
    # with the chunk last (0, 1, 3, 2) it would be three.
    queue = [submission(2, 300), submission(1, 1), submission(3, 1), submission(0, 1), submission(4, 50)]
    assert plan_of(queue) == [(0, 1), (1, 1), (2, 128), (3, 1)]


def test_a_prompt_alone_takes_the_whole_budget_then_the_next_prompt_the_rest():
    queue = [submission(1, 600), submission(0, 20)]
    assert plan_of(queue) == [(1, 512)]
    queue = [submission(1, 500), submission(0, 20)]
    assert plan_of(queue) == [(0, 12), (1, 500)]


def test_withdrawn_submissions_are_left_out():
    gone = submission(0, 1)
    gone.withdrawn = True
    assert plan_of([gone, submission(1, 1)]) == [(1, 1)]
