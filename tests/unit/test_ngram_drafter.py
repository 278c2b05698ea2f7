"""NgramDrafter: prompt-lookup drafts, a length that follows what was kept, and the pause
that turns failing drafts off."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inference_service.engine.decode_loop import NgramDrafter

FIRST, MAX = NgramDrafter.FIRST_SPAN, NgramDrafter.MAX_DRAFT


def grown(drafter: NgramDrafter) -> NgramDrafter:
    """Drafts kept whole until the span is the longest (it at least doubles each time)."""
    for _ in range(MAX.bit_length()):
        drafter.record(1, 1)
    return drafter


def test_drafts_what_followed_the_last_occurrence_of_the_ending():
    drafter = grown(NgramDrafter([1, 2, 3, 4, 5, 6, 9, 1, 2, 3]))
    assert drafter.draft(10) == [4, 5, 6, 9, 1, 2, 3]


def test_the_longest_ending_wins_and_the_latest_occurrence_of_it():
    # "7 2 3 4" occurs once (followed by 8); "2 3 4" also occurs later (followed by 5).
    assert NgramDrafter([7, 2, 3, 4, 8, 0, 2, 3, 4, 5, 7, 2, 3, 4]).draft(1) == [8]
    assert NgramDrafter([1, 2, 3, 5, 0, 2, 3, 6, 4, 2, 3]).draft(2) == []  # bigrams draft nothing
    assert NgramDrafter([1, 2, 3, 5, 0, 1, 2, 3, 6, 4, 1, 2, 3]).draft(2) == [6, 4]  # the latest "1 2 3"


def test_no_draft_without_a_repeated_ending_or_room():
    assert NgramDrafter([1, 2, 3, 4]).draft(8) == []
    assert NgramDrafter([1, 2, 3, 1, 2, 3]).draft(0) == []


def test_extending_sees_the_new_tokens():
    drafter = NgramDrafter([10, 11, 12, 13])
    drafter.extend([10, 11, 12])
    assert drafter.draft(8) == [13, 10][:FIRST]


def test_the_span_doubles_when_kept_whole_and_a_partly_kept_draft_pauses():
    drafter = NgramDrafter(list(range(20)) + list(range(5)))
    assert len(drafter.draft(50)) == FIRST
    drafter.record(FIRST, FIRST)
    assert len(drafter.draft(50)) == 2 * FIRST
    drafter.record(2 * FIRST, 1)
    assert drafter.draft(50) == []
    drafter.extend(list(range(5, 5 + NgramDrafter.FIRST_PAUSE)))
    assert len(drafter.draft(50)) == FIRST
    assert len(grown(drafter).draft(50)) == MAX


def test_a_draft_kept_in_nothing_pauses_drafting_longer_each_time():
    drafter = NgramDrafter([1, 2, 3, 1, 2, 3])
    assert drafter.draft(4)
    drafter.record(2, 0)
    assert drafter.draft(4) == []  # paused for FIRST_PAUSE tokens
    drafter.extend([1, 2, 3] * 3)  # 9 tokens: over
    assert drafter.draft(4)
    drafter.record(2, 0)
    drafter.extend([1, 2, 3] * 3)
    assert drafter.draft(4) == []  # the second pause is twice as long
    drafter.extend([1, 2, 3] * 3)
    assert drafter.draft(4)
    drafter.record(2, 2)  # kept whole: the next failure pauses for FIRST_PAUSE again
    drafter.record(4, 0)
    drafter.extend([1, 2, 3] * 3)
    assert drafter.draft(4)
    assert (drafter.proposed, drafter.accepted) == (10, 2)


@given(st.lists(st.integers(0, 3), max_size=60), st.integers(0, 12))
def test_a_draft_is_always_a_continuation_seen_before(history, limit):
    drafter = grown(NgramDrafter(history))
    draft = drafter.draft(limit)
    assert len(draft) <= min(limit, MAX)
    if draft:
        ends = [n for n in NgramDrafter.SIZES if len(history) > n]
        assert any(
            history[i - n:i] == history[-n:] and history[i:i + len(draft)] == draft
            for n in ends for i in range(n, len(history))
        )
