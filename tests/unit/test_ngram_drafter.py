"""NgramDrafter: prompt-lookup drafts, and the pause that turns failing drafts off."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inference_service.engine.decode_loop import NgramDrafter


def test_drafts_what_followed_the_last_occurrence_of_the_ending():
    drafter = NgramDrafter([1, 2, 3, 4, 5, 6, 9, 2, 3])
    assert drafter.draft(10) == [4, 5, 6, 9, 2, 3]  # after "2 3", the earlier time


def test_the_longest_ending_wins_and_the_latest_occurrence_of_it():
    # "7 2 3" occurs once (followed by 8); "2 3" also occurs later (followed by 5).
    drafter = NgramDrafter([7, 2, 3, 8, 1, 2, 3, 5, 7, 2, 3])
    assert drafter.draft(1) == [8]
    drafter = NgramDrafter([1, 2, 3, 5, 0, 2, 3, 6, 4, 2, 3])
    assert drafter.draft(2) == [6, 4]  # the latest "2 3" before the ending


def test_no_draft_without_a_repeated_ending_or_room():
    assert NgramDrafter([1, 2, 3, 4]).draft(8) == []
    assert NgramDrafter([1, 2, 1, 2]).draft(0) == []


def test_extending_sees_the_new_tokens():
    drafter = NgramDrafter([10, 11, 12, 13])
    drafter.extend([10, 11])
    assert drafter.draft(8) == [12, 13, 10, 11]


def test_drafts_that_keep_failing_pause_then_resume():
    drafter = NgramDrafter([1, 2, 3, 1, 2])
    assert drafter.draft(4)
    for _ in range(NgramDrafter.PATIENCE):
        drafter.record(3, 0)
    assert drafter.draft(4) == []  # paused
    drafter.extend([3, 1, 2] * 3)  # 9 tokens: the first pause (8) is over
    assert drafter.draft(4)
    for _ in range(NgramDrafter.PATIENCE):
        drafter.record(3, 0)
    drafter.extend([3, 1, 2] * 3)
    assert drafter.draft(4) == []  # the second pause is twice as long
    drafter.extend([3, 1, 2] * 3)
    assert drafter.draft(4)
    drafter.record(3, 2)  # a success resets the pause length
    assert (drafter.proposed, drafter.accepted) == (3 * 2 * NgramDrafter.PATIENCE + 3, 2)


@given(st.lists(st.integers(0, 5), max_size=60), st.integers(0, 12))
def test_a_draft_is_always_a_continuation_seen_before(history, limit):
    drafter = NgramDrafter(history)
    draft = drafter.draft(limit)
    assert len(draft) <= min(limit, NgramDrafter.MAX_DRAFT)
    if draft:
        ends = [n for n in NgramDrafter.SIZES if len(history) > n]
        assert any(
            history[i - n:i] == history[-n:] and history[i:i + len(draft)] == draft
            for n in ends for i in range(n, len(history))
        )
