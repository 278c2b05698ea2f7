"""/v1/responses and /v1/messages behind three real replicas (tests/cluster/conftest.py) with
prefix affinity, driven by the official SDKs: each conversation's next turn goes to the
replica that served its first and reuses that replica's cached prompt (reported as cached
input tokens in each API's usage), and users at once spread over the replicas."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest

from tests.cluster.conftest import routed

MODEL = "smollm2:135m"
TOPICS = ["lighthouses", "volcanoes", "bees", "bread", "glaciers", "chess"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def messages_turns(edge, topic: str) -> list[tuple[str, int]]:
    """Two turns of one conversation on /v1/messages: [(request id, cached input tokens)]."""
    client = anthropic.Anthropic(base_url=edge.base_url, api_key="unused", max_retries=0, timeout=120.0)
    history, out = [], []
    for question in (f"One word about {topic}?", "And another word?"):
        history.append({"role": "user", "content": question})
        request_id = new_id("msg")
        reply = client.messages.create(model=MODEL, max_tokens=3, system="Answer in a few words.", messages=history,
                                       extra_body={"temperature": 0}, extra_headers={"X-Request-Id": request_id})
        history.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in reply.content]})
        out.append((request_id, reply.usage.cache_read_input_tokens))
    client.close()
    return out


def responses_turns(edge, topic: str) -> list[tuple[str, int]]:
    """Two turns of one conversation on /v1/responses (items sent back): [(request id, cached tokens)]."""
    client = openai.OpenAI(base_url=edge.base_url + "/v1", api_key="unused", max_retries=0, timeout=120.0)
    history, out = [], []
    for question in (f"One word about {topic}?", "And another word?"):
        history.append({"role": "user", "content": question})
        request_id = new_id("resp")
        reply = client.responses.create(model=MODEL, max_output_tokens=3, instructions="Answer in a few words.",
                                        input=history, temperature=0, extra_headers={"X-Request-Id": request_id})
        history += [item.model_dump(exclude_none=True) for item in reply.output]
        out.append((request_id, reply.usage.input_tokens_details.cached_tokens))
    client.close()
    return out


@pytest.mark.parametrize("turns", [messages_turns, responses_turns], ids=["messages", "responses"])
def test_next_turns_stay_on_their_replica_and_reuse_its_cache(replicas, start_edge, turns):
    edge = start_edge("prefix-affinity")
    conversations = [turns(edge, topic) for topic in TOPICS[:4]]  # one after the other: no load overflow
    where = routed(edge.log())
    homes = []
    for (first_id, _), (second_id, cached) in conversations:
        [(first, _)], [(second, how)] = where[first_id], where[second_id]
        assert second == first, how
        assert cached > 0, "the next turn did not reuse the replica's cached prompt"
        homes.append(first)
    print(f"\nconversations' replicas: {Counter(homes)}")


def test_users_at_once_spread_over_the_replicas(replicas, start_edge):
    edge = start_edge("prefix-affinity")
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: (messages_turns if i % 2 else responses_turns)(edge, TOPICS[i]), range(6)))
    where = routed(edge.log())
    used = Counter(where[request_id][-1][0] for turns in results for request_id, _ in turns)
    assert sum(used.values()) == 12 and len(used) >= 2, used
