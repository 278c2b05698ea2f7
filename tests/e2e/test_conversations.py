"""Many users' conversations through the real stack (a service of their own per engine, 4 slots,
real gunicorn, the official openai client): interleaved and concurrent users keep their prompt
caches, and on llama.cpp a new conversation reuses a system prompt another slot holds.
Cached token counts (usage.prompt_tokens_details.cached_tokens) tell; no timing."""

from __future__ import annotations

import threading

import openai
import pytest

from tests.conftest import start_edge, start_service
from tests.e2e.helpers import MODEL
from harness.processes import stop_process

pytestmark = pytest.mark.model

SAFETY = 300.0  # seconds; a bound on a hang, never a measured limit
BLOCK = 16  # the service's default --block-size: ctransformers reuses whole aligned blocks
SYSTEM = {"role": "system", "content": "You are a helpful assistant for a geography class. Answer in one short "
                                       "sentence, name the city first, and add nothing else. " * 4}
QUESTIONS = {
    "a": ["What is the capital of France?", "And of Italy?", "And of Spain?"],
    "b": ["Which river flows through Cairo?", "And through Vienna?", "And through Budapest?"],
}


@pytest.fixture(scope="module", params=["ctransformers", "llamacpp"])
def engine_client(request, model_file, tmp_path_factory):
    engine = request.param
    # 4 slots: the two conversations of each of the first tests, then two empty for the last one
    service = start_service(tmp_path_factory.mktemp(f"conv-{engine}"), "--engine", engine, "--slots", "4")
    try:
        edge = start_edge(service.address, tmp_path_factory.mktemp(f"conv-{engine}-edge") / "gunicorn.log")
        try:
            client = openai.OpenAI(base_url=edge.base_url + "/v1", api_key="unused", max_retries=0, timeout=SAFETY)
            yield engine, client
            client.close()
        finally:
            stop_process(edge.process)
    finally:
        stop_process(service.process)


class Conversation:
    def __init__(self, name: str):
        self.name = name
        self.messages = [SYSTEM]
        self.usages = []

    def turn(self, client: openai.OpenAI, t: int) -> None:
        self.messages.append({"role": "user", "content": QUESTIONS[self.name][t]})
        answer = client.chat.completions.create(model=MODEL, messages=self.messages, max_tokens=6, temperature=0)
        self.messages.append({"role": "assistant", "content": answer.choices[0].message.content})
        self.usages.append(answer.usage)

    def cached(self) -> list[tuple[int, int]]:
        return [(u.prompt_tokens, u.prompt_tokens_details.cached_tokens) for u in self.usages]


def assert_kept(engine: str, conversation: Conversation) -> None:
    slack = BLOCK if engine == "ctransformers" else 1
    pairs = conversation.cached()
    for (before, _), (_, cached) in zip(pairs, pairs[1:]):
        assert cached >= before - slack, (engine, conversation.name, pairs)


def test_interleaved_users_keep_their_caches(engine_client):
    engine, client = engine_client
    a, b = Conversation("a"), Conversation("b")
    for t in range(3):
        a.turn(client, t)
        b.turn(client, t)
    assert_kept(engine, a)
    assert_kept(engine, b)


def test_concurrent_users_keep_their_caches(engine_client):
    engine, client = engine_client
    a, b = Conversation("a"), Conversation("b")
    for t in range(3):
        threads = [threading.Thread(target=c.turn, args=(client, t)) for c in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SAFETY)
        assert len(a.usages) == len(b.usages) == t + 1
    assert_kept(engine, a)
    assert_kept(engine, b)


def test_a_new_conversation_reuses_a_system_prompt_another_slot_holds(engine_client):
    """llama.cpp copies the shared system prompt into the new conversation's slot; ctransformers
    evaluates it in an empty slot rather than evicting the other conversation."""
    engine, client = engine_client
    a = Conversation("a")
    a.turn(client, 0)
    newcomer = Conversation("b")
    newcomer.messages[0] = {"role": "system", "content": SYSTEM["content"]}
    newcomer.turn(client, 0)
    system_tokens = a.usages[0].prompt_tokens - 20  # the question and the template's tail are short
    if engine == "llamacpp":
        assert newcomer.cached()[0][1] >= system_tokens, (a.cached(), newcomer.cached())
    a.turn(client, 1)
    assert_kept(engine, a)  # the newcomer did not take its slot
