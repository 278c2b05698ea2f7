"""Ollama's /api/chat behind three real replicas (tests/cluster/conftest.py) with prefix
affinity, driven by the official ollama client: each conversation's next turn goes to the
replica that served its first (where its prompt is cached), and users at once spread over
the replicas."""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import ollama

from tests.cluster.conftest import routed

MODEL = "smollm2:135m"
TOPICS = ["lighthouses", "volcanoes", "bees", "bread", "glaciers", "chess"]


def chat_turns(edge, topic: str) -> list[str]:
    """Two turns of one conversation on /api/chat, streamed: their request ids."""
    history, ids = [{"role": "system", "content": "Answer in a few words."}], []
    for question in (f"One word about {topic}?", "And another word?"):
        history.append({"role": "user", "content": question})
        request_id = f"ollama-{uuid.uuid4().hex[:10]}"
        client = ollama.Client(host=edge.base_url, timeout=120.0, headers={"X-Request-Id": request_id})
        parts = list(client.chat(model=MODEL, messages=history, stream=True,
                                 options={"temperature": 0, "num_predict": 3}))
        assert parts[-1].done
        history.append({"role": "assistant", "content": "".join(p.message.content for p in parts)})
        ids.append(request_id)
    return ids


def test_next_turns_stay_on_their_replica(replicas, start_edge):
    edge = start_edge("prefix-affinity")
    conversations = [chat_turns(edge, topic) for topic in TOPICS[:4]]  # one after the other: no load overflow
    where = routed(edge.log())
    homes = []
    for first_id, second_id in conversations:
        [(first, _)], [(second, how)] = where[first_id], where[second_id]
        assert second == first, how
        homes.append(first)
    print(f"\nconversations' replicas: {Counter(homes)}")


def test_users_at_once_spread_over_the_replicas(replicas, start_edge):
    edge = start_edge("prefix-affinity")
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda i: chat_turns(edge, TOPICS[i]), range(6)))
    where = routed(edge.log())
    used = Counter(where[request_id][-1][0] for ids in results for request_id in ids)
    assert sum(used.values()) == 12 and len(used) >= 2, used
