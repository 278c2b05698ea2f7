"""ReasoningSplitter: thinking and answer apart, whatever the token boundaries (hypothesis cuts
the text anywhere); no part of a tag reaches either side."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inference_service.engine.reasoning import ReasoningSplitter, prompt_opens_thinking, template_thinks
from tests.edge.fuzz_requests import fuzz_settings

CASES = [
    # (streamed text, opened by the prompt, reasoning, content)
    ("<think>\nLet me see.\n</think>\n\nParis.", False, "Let me see.\n", "Paris."),
    ("  <think>a</think>b", False, "a", "b"),
    ("Paris.", False, "", "Paris."),
    ("Let me see.</think>\n\nParis.", True, "Let me see.", "Paris."),
    ("still thinking", True, "still thinking", ""),
    ("<think>never closed", False, "never closed", ""),
    ("<thi", False, "", "<thi"),  # cut short: an unfinished tag is text
    ("Answer with <think> inside", False, "", "Answer with <think> inside"),
    ("<think></think>", False, "", ""),
    ("<think>x</think>a </think> b", False, "x", "a </think> b"),
]


def split(pieces, inside: bool) -> tuple[str, str]:
    splitter = ReasoningSplitter(inside=inside)
    reasoning, content = [], []
    for piece in pieces:
        r, c = splitter.push(piece)
        reasoning.append(r)
        content.append(c)
    r, c = splitter.flush()
    return "".join(reasoning) + r, "".join(content) + c


def test_whole_texts():
    for text, inside, reasoning, content in CASES:
        assert split([text], inside) == (reasoning, content), text


@fuzz_settings(300)
@given(st.data())
def test_any_cut_gives_the_same_split(data):
    text, inside, reasoning, content = data.draw(st.sampled_from(CASES))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=len(text) + 1)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert split(pieces, inside) == (reasoning, content)


def test_partial_tags_are_held_not_leaked():
    splitter = ReasoningSplitter()
    assert splitter.push("<th") == ("", "")
    assert splitter.push("ink>abc</th") == ("abc", "")
    assert splitter.push("ink>") == ("", "")
    assert splitter.push("\n\nDone") == ("", "Done")


def test_template_detection():
    assert template_thinks("{% if '</think>' in content %}...{% endif %}")
    assert not template_thinks("{{ messages }}")
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n")
