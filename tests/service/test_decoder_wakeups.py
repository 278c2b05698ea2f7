"""How the llama.cpp decoder wakes the sequences waiting for it, on the real default model.

Each waiting sequence is woken by the step that scored its tokens (its own condition on the
decoder's lock), not by the poll that re-checks cancellation, and not by every other
sequence's submission; a submission that could never finish is refused up front.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from inference_service.engine import llamacpp_batch
from tests.engines import four_slot_llamacpp, loaded

WORDS = "Once upon a time there was a small village by the sea, and every morning"


@pytest.fixture(scope="module")
def decoder(model_file):
    for engine in four_slot_llamacpp(model_file):
        yield loaded(engine)._decoder, loaded(engine).tokenizer.encode_text(WORDS)


def test_concurrent_sequences_are_woken_by_their_steps_not_by_the_poll(decoder, monkeypatch):
    decoder, tokens = decoder
    # A wake-up that never comes would leave its sequence waiting for the poll: ten minutes.
    monkeypatch.setattr(llamacpp_batch, "_POLL_SECONDS", 600.0)
    logits: dict[int, list[np.ndarray]] = {}

    def evaluate(sequence) -> None:
        sequence.truncate(0)
        sequence.evaluate(tokens[:8])  # a prompt, then a token a step, as a stream decodes
        rows = [sequence.logits()]
        for token in tokens[8:14]:
            sequence.evaluate([token])
            rows.append(sequence.logits())
        logits[sequence.seq_id] = rows

    threads = [threading.Thread(target=evaluate, args=(s,), daemon=True) for s in decoder.sequences]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a sequence was never woken"
    assert sorted(logits) == [s.seq_id for s in decoder.sequences]
    # The same tokens in every sequence: every one got its own, finite, logits at each step.
    first = logits[0]
    for rows in logits.values():
        assert len(rows) == 7 and all(np.isfinite(row).any() for row in rows)
        assert [int(np.argmax(row)) for row in rows] == [int(np.argmax(row)) for row in first]


@pytest.mark.parametrize("tokens, rows", [([], 1), ([1, 2], 3), ([1, 2], 0)])
def test_a_submission_that_could_never_finish_is_refused(decoder, tokens, rows):
    decoder, _ = decoder
    with pytest.raises(ValueError, match="rows of logits"):
        decoder.submit(decoder.sequences[0], tokens, rows=rows)
    assert not decoder.has_work()
