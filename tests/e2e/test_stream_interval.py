"""``--stream-interval-ms`` end to end: a real service pacing its streams, real gunicorn, the
official openai client, several streams at once. Each frame holds the tokens of an interval;
the text, its order and the usage are whole."""

from __future__ import annotations

import threading

import openai
import pytest

from tests.conftest import start_edge, start_service, stop_process
from tests.e2e.helpers import MODEL

pytestmark = pytest.mark.model

TOKENS = 48
INTERVAL_MS = 200  # far longer than a token takes here: every frame after the first holds several


@pytest.fixture(scope="module")
def paced_edge(tmp_path_factory):
    service = start_service(tmp_path_factory.mktemp("paced"), "--slots", "2", "--stream-interval-ms", str(INTERVAL_MS))
    edge = start_edge(service.address, tmp_path_factory.mktemp("paced-edge") / "gunicorn.log")
    yield edge
    stop_process(edge.process)
    stop_process(service.process)


def test_concurrent_paced_streams_are_whole(paced_edge, no_eos_bias):
    client = openai.OpenAI(base_url=paced_edge.base_url + "/v1", api_key="unused", max_retries=0, timeout=300.0)
    answers: dict[int, tuple[list[str], list[str], object]] = {}

    def one(i: int) -> None:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Story {i}: a lighthouse keeper's day."}],
            max_tokens=TOKENS, temperature=0, logit_bias=no_eos_bias, logprobs=True, stream=True,
            stream_options={"include_usage": True})
        pieces, tokens, usage = [], [], None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                tokens += [entry.token for entry in chunk.choices[0].logprobs.content]
            usage = chunk.usage or usage
        answers[i] = (pieces, tokens, usage)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    client.close()
    assert sorted(answers) == [0, 1, 2]
    for pieces, tokens, usage in answers.values():
        assert usage.completion_tokens == len(tokens) == TOKENS  # each token reported once
        assert 1 < len(pieces) < TOKENS / 2  # paced: several tokens to a frame, and more than one frame
        text = "".join(pieces)
        if text.isascii():  # (a token's text is not whole UTF-8 on its own)
            assert "".join(tokens) == text  # in order, nothing lost or doubled
