from __future__ import annotations

from typing import Sequence, Union

import pytest

from inference_service.engine.text_stream import StreamStep, TextStreamer, find_stop

Piece = Union[str, bytes]


def make_streamer(pieces: Sequence[Piece], stop: Sequence[str] = ()) -> TextStreamer:
    """A streamer whose token i has the bytes of pieces[i]."""
    table = [p.encode("utf-8") if isinstance(p, str) else p for p in pieces]
    return TextStreamer(lambda token_id: table[token_id], stop)


def push_all(streamer: TextStreamer, n: int) -> list[StreamStep]:
    return [streamer.push(i) for i in range(n)]


def texts(steps: Sequence[StreamStep]) -> list[str]:
    return [s.text for s in steps]


# --- UTF-8 ------------------------------------------------------------------


def test_ascii_passes_through() -> None:
    streamer = make_streamer(["Hel", "lo", ", world"])
    steps = push_all(streamer, 3)
    assert steps == [
        StreamStep("Hel", False),
        StreamStep("lo", False),
        StreamStep(", world", False),
    ]
    assert streamer.flush() == ""


def test_chinese_split_across_tokens() -> None:
    data = "你好".encode("utf-8")
    assert data == b"\xe4\xbd\xa0\xe5\xa5\xbd"
    streamer = make_streamer([data[0:2], data[2:4], data[4:6]])
    assert texts(push_all(streamer, 3)) == ["", "你", "好"]
    assert streamer.flush() == ""


def test_emoji_split_over_three_tokens() -> None:
    data = "😀".encode("utf-8")
    assert len(data) == 4
    streamer = make_streamer(["a", data[0:1], data[1:3], data[3:4] + b"b"])
    assert texts(push_all(streamer, 4)) == ["a", "", "", "😀b"]


def test_emoji_split_over_four_tokens() -> None:
    data = "😀".encode("utf-8")
    streamer = make_streamer([data[i : i + 1] for i in range(4)])
    assert texts(push_all(streamer, 4)) == ["", "", "", "😀"]
    assert streamer.flush() == ""


def test_invalid_bytes_become_replacement_character() -> None:
    streamer = make_streamer([b"a\xffb"])
    assert streamer.push(0) == StreamStep("a\ufffdb", False)


# --- stop strings -----------------------------------------------------------


def test_stop_inside_one_token() -> None:
    streamer = make_streamer(["Hello world! more"], stop=["world"])
    assert streamer.push(0) == StreamStep("Hello ", True)
    assert streamer.stopped


def test_stop_at_very_start() -> None:
    streamer = make_streamer(["world"], stop=["world"])
    assert streamer.push(0) == StreamStep("", True)


def test_stop_across_tokens() -> None:
    streamer = make_streamer(["Hello ", "wor", "ld and more"], stop=["world"])
    assert push_all(streamer, 3) == [
        StreamStep("Hello ", False),
        StreamStep("", False),
        StreamStep("", True),
    ]


def test_stop_starting_mid_token() -> None:
    streamer = make_streamer(["Hello wor", "ld"], stop=["world"])
    assert push_all(streamer, 2) == [StreamStep("Hello ", False), StreamStep("", True)]


def test_stop_spread_over_many_tokens_with_text_before() -> None:
    streamer = make_streamer(["a <", "|e", "n", "d|", "> tail"], stop=["<|end|>"])
    assert push_all(streamer, 5) == [
        StreamStep("a ", False),
        StreamStep("", False),
        StreamStep("", False),
        StreamStep("", False),
        StreamStep("", True),
    ]


def test_stop_ending_mid_token_drops_rest_of_token() -> None:
    streamer = make_streamer(["ab", "cSTO", "Pxyz"], stop=["STOP"])
    assert push_all(streamer, 3) == [
        StreamStep("ab", False),
        StreamStep("c", False),
        StreamStep("", True),
    ]


@pytest.mark.parametrize("stop", [["STOP", "\n\n"], ["\n\n", "STOP"]])
def test_earliest_of_several_stops_wins(stop: list[str]) -> None:
    streamer = make_streamer(["a\n\nb STOP c"], stop=stop)
    assert streamer.push(0) == StreamStep("a", True)


def test_complete_later_stop_beats_incomplete_earlier_prefix() -> None:
    # "abcd" has only started when "bc" completes
    streamer = make_streamer(["xab", "c"], stop=["abcd", "bc"])
    assert push_all(streamer, 2) == [StreamStep("x", False), StreamStep("a", True)]


def test_near_miss_prefix_is_released() -> None:
    streamer = make_streamer(["wo", "rk"], stop=["world"])
    assert push_all(streamer, 2) == [StreamStep("", False), StreamStep("work", False)]
    assert streamer.flush() == ""


def test_hold_back_only_the_part_that_can_still_match() -> None:
    streamer = make_streamer(["aaa", "b"], stop=["aab"])
    assert push_all(streamer, 2) == [StreamStep("a", False), StreamStep("", True)]


def test_hold_back_uses_longest_prefix_over_all_stops() -> None:
    streamer = make_streamer(["xab", "d"], stop=["abc", "bcd"])
    assert push_all(streamer, 2) == [StreamStep("x", False), StreamStep("abd", False)]


def test_stop_made_of_split_multibyte_characters() -> None:
    data = "你好".encode("utf-8")
    streamer = make_streamer(["ok", data[:4], data[4:]], stop=["好"])
    assert push_all(streamer, 3) == [
        StreamStep("ok", False),
        StreamStep("你", False),
        StreamStep("", True),
    ]


def test_empty_stop_strings_are_ignored() -> None:
    streamer = make_streamer(["ab", "c"], stop=["", ""])
    assert push_all(streamer, 2) == [StreamStep("ab", False), StreamStep("c", False)]


def test_push_after_stop_raises() -> None:
    streamer = make_streamer(["stop", "x"], stop=["stop"])
    assert streamer.push(0).stopped
    with pytest.raises(RuntimeError):
        streamer.push(1)
    assert streamer.flush() == ""


# --- flush ------------------------------------------------------------------


def test_flush_releases_held_text() -> None:
    streamer = make_streamer(["Hello wor"], stop=["world"])
    assert streamer.push(0) == StreamStep("Hello ", False)
    assert streamer.flush() == "wor"
    assert streamer.flush() == ""


def test_flush_drops_an_incomplete_utf8_tail() -> None:
    # max_tokens can end generation inside a character: its bytes never become text.
    data = "你".encode("utf-8")
    streamer = make_streamer([b"ab" + data[:2]])
    assert streamer.push(0) == StreamStep("ab", False)
    assert streamer.flush() == ""


def test_flush_with_held_text_and_incomplete_tail() -> None:
    streamer = make_streamer(["x<|", b"\xf0\x9f"], stop=["<|end|>"])
    assert push_all(streamer, 2) == [StreamStep("x", False), StreamStep("", False)]
    assert streamer.flush() == "<|"


def test_invalid_bytes_mid_stream_still_show_as_replacement() -> None:
    # A byte sequence that can never be UTF-8 is replaced, not held back forever.
    streamer = make_streamer([b"a\xff", b"b"])
    assert push_all(streamer, 2) == [StreamStep("a\ufffd", False), StreamStep("b", False)]


def test_whole_text_is_preserved_without_stops() -> None:
    text = "Grüße, 你好 😀! done"
    data = text.encode("utf-8")
    pieces = [data[i : i + 3] for i in range(0, len(data), 3)]
    streamer = make_streamer(pieces, stop=["NEVER"])
    out = "".join(texts(push_all(streamer, len(pieces)))) + streamer.flush()
    assert out == text


# --- find_stop --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "stops", "expected"),
    [
        ("abc", [], None),
        ("abc", [""], None),
        ("abc", ["x"], None),
        ("abcabc", ["c"], 2),
        ("abcabc", ["ca", "b"], 1),
        ("abc", ["abc"], 0),
    ],
)
def test_find_stop(text: str, stops: list[str], expected: int | None) -> None:
    assert find_stop(text, stops) == expected


# --- min_tokens: stop strings armed only after the first tokens ---------------------------


def test_unarmed_tokens_go_out_whole_and_cannot_stop() -> None:
    streamer = make_streamer(["a", "ST", "OP", "b", "ST", "OP", "c"], stop=["STOP"])
    unarmed = [streamer.push(i, stops_armed=False) for i in range(3)]
    assert texts(unarmed) == ["a", "ST", "OP"] and not any(s.stopped for s in unarmed)
    armed = [streamer.push(i) for i in range(3, 6)]
    assert armed[-1].stopped and "".join(texts(armed)) == "b"


def test_arming_mid_stream_keeps_utf8_whole() -> None:
    streamer = make_streamer([b"\xe4\xbd", b"\xa0", "!"], stop=["!"])
    assert streamer.push(0, stops_armed=False).text == ""
    assert streamer.push(1, stops_armed=False).text == "你"
    assert streamer.push(2).stopped
