"""The edge routing across three real service replicas (tests/cluster/conftest.py): requests
spread, conversations stick to their replica, a replica killed (SIGKILL) or drained (SIGTERM)
under load costs only what it must, and a restarted replica gets traffic again without an edge
restart. Tiny answers (a few tokens, greedy), one compute thread per replica."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import GRACE, RETRIED, routed
from tests.helpers import eventually

MODEL = "smollm2:135m"
SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in a few words."}
TOPICS = ["lighthouses", "volcanoes", "bees", "bread", "glaciers", "chess", "the moon", "coral reefs",
          "railways", "paper", "owls", "cacti", "rivers", "kites", "clocks", "bridges"]
TIMEOUT = httpx.Timeout(120.0, connect=10.0)  # a bound on a hang, never a measured limit
# The streams of the kill and drain tests: long enough (a second or more on a quiet machine,
# ~150 tokens/s) to be all in flight while least-loaded deals them out, two per replica, and
# to be cut in the middle.
STREAM_TOKENS = 200


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def chat(http: httpx.Client, messages: list[dict], request_id: str, max_tokens: int = 3, **extra) -> httpx.Response:
    return http.post("/v1/chat/completions", headers={"X-Request-Id": request_id},
                     json={"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra})


def replica_requests(base_url: str) -> dict[str, float]:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    return {s.labels["replica"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "edge_replica_requests_total"}


def started(replicas) -> dict[str, int]:
    return {r.address: r.status().generations_started for r in replicas.replicas}


# --- spread ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["least-loaded", "prefix-affinity"])
def test_independent_clients_spread_over_the_replicas(policy, replicas, start_edge):
    edge = start_edge(policy)
    before = started(replicas)
    ids = [new_id(policy) for _ in range(9)]

    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=edge.base_url, timeout=TIMEOUT) as http:  # independent clients
            return chat(http, [{"role": "user", "content": f"Name one fact about {TOPICS[i]}."}], ids[i])

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(one, range(9)))
    assert [a.status_code for a in answers] == [200] * 9, [a.text for a in answers]
    assert [a.headers["x-request-id"] for a in answers] == ids

    where = routed(edge.log())
    assert all(len(where[i]) == 1 for i in ids)  # no retries here
    counts = Counter(where[i][0][0] for i in ids)
    assert len(counts) >= 2, counts
    assert replica_requests(edge.base_url) == dict(counts)
    # The replicas saw what the edge says it sent them.
    after = started(replicas)
    assert {a: after[a] - before[a] for a in after if after[a] != before[a]} == dict(counts)
    for request_id in ids:  # and each logged it under the id the client gave
        replica = replicas.by_address(where[request_id][0][0])
        assert request_id in replica.log(), (request_id, replica.name)


# --- affinity -------------------------------------------------------------------------------------

@dataclass
class Turn:
    conversation: int
    turn: int
    request_id: str
    status: int = 0
    replica: str = ""
    home: str = ""
    how: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0


def test_conversations_stick_to_their_replica(replicas, start_edge):
    """12 conversations x 3 turns, four clients at once (each runs three conversations, turn
    after turn): every turn goes to its key's home replica unless the home was at its load
    bound, ceil(1.25 x mean in flight + 1), or full; so each next turn lands where the previous
    one did unless one of them overflowed."""
    edge = start_edge("prefix-affinity")
    turns: list[Turn] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=edge.base_url, timeout=TIMEOUT) as http:
            for c in range(k, 12, 4):
                messages = [SYSTEM]
                for t in range(3):
                    messages.append({"role": "user", "content": f"Conversation {c}, question {t}: "
                                                                f"one word about {TOPICS[c]}?"})
                    turn = Turn(c, t, new_id(f"c{c}t{t}"))
                    turns.append(turn)
                    answer = chat(http, messages, turn.request_id)
                    turn.status = answer.status_code
                    if answer.status_code != 200:
                        return
                    usage = answer.json()["usage"]
                    turn.prompt_tokens = usage["prompt_tokens"]
                    turn.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                    messages.append({"role": "assistant", "content": answer.json()["choices"][0]["message"]["content"]})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))
    assert [t.status for t in turns] == [200] * 36, [(t.request_id, t.status) for t in turns if t.status != 200]

    where = routed(edge.log())
    for turn in turns:
        (turn.replica, turn.how), = where[turn.request_id]
        turn.home = turn.how.split("home ", 1)[1].split(",", 1)[0]
    by_conversation = {c: sorted((t for t in turns if t.conversation == c), key=lambda t: t.turn) for c in range(12)}
    overflowed = [t for t in turns if t.replica != t.home]
    for c, ts in by_conversation.items():
        assert len({t.home for t in ts}) == 1, [t.how for t in ts]  # one key, one home, every turn
        for previous, turn in zip(ts, ts[1:]):
            if turn.replica != previous.replica:
                assert previous in overflowed or turn in overflowed, (previous.how, turn.how)
    sticky = sum(1 for ts in by_conversation.values() for p, t in zip(ts, ts[1:]) if t.replica == p.replica)
    later = [t for t in turns if t.turn > 0]
    print(f"\nnext turns on the previous turn's replica: {sticky} of 24; turns over the bound: {len(overflowed)} "
          f"({[t.how for t in overflowed]}); homes: {sorted(Counter(ts[0].home for ts in by_conversation.values()).values())}; "
          f"next turns' prompt tokens from the cache: {sum(t.cached_tokens for t in later)} of "
          f"{sum(t.prompt_tokens for t in later)}, {sum(1 for t in later if t.cached_tokens)} of 24 turns with a hit")
    assert sticky >= 18, (sticky, [t.how for t in overflowed])
    assert len({ts[0].home for ts in by_conversation.values()}) >= 2  # 12 conversations: more than one home


# --- a replica killed, a replica drained ---------------------------------------------------------------

@dataclass
class Stream:
    """One streaming chat, read in a thread: its frames and whether it ended well."""

    base_url: str
    request_id: str
    content: str
    max_tokens: int
    status: Optional[int] = None
    frames: list = field(default_factory=list)
    first_token: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: Optional[str] = None
    ended_at: float = 0.0

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=TIMEOUT) as http:
                with http.stream("POST", "/v1/chat/completions", headers={"X-Request-Id": self.request_id},
                                 json={"model": MODEL, "messages": [{"role": "user", "content": self.content}],
                                       "max_tokens": self.max_tokens, "temperature": 0, "ignore_eos": True,
                                       "stream": True}) as resp:
                    self.status = resp.status_code
                    for line in resp.iter_lines():
                        if not line:
                            continue
                        data = line[len("data: "):]
                        frame = data if data == "[DONE]" else json.loads(data)
                        self.frames.append(frame)
                        if isinstance(frame, dict) and "choices" in frame and frame["choices"][0]["delta"].get("content"):
                            self.first_token.set()
        except Exception as error:  # noqa: BLE001 - recorded, asserted on
            self.error = repr(error)
        finally:
            self.ended_at = time.monotonic()
            self.done.set()

    def start(self) -> "Stream":
        threading.Thread(target=self.run, daemon=True).start()
        return self

    @property
    def complete(self) -> bool:
        """200, every frame a chunk, a finish_reason, then [DONE]: no error anywhere."""
        return (self.status == 200 and self.error is None and self.frames[-1:] == ["[DONE]"]
                and not any(isinstance(f, dict) and "error" in f for f in self.frames)
                and any(isinstance(f, dict) and f.get("choices") and f["choices"][0].get("finish_reason")
                        for f in self.frames))

    @property
    def failed_in_stream(self) -> bool:
        """200, tokens, then the error frame and [DONE]: what a stream that broke after it started shows."""
        return (self.status == 200 and self.frames[-1:] == ["[DONE]"] and len(self.frames) >= 3
                and isinstance(self.frames[-2], dict) and "error" in self.frames[-2])


def start_streams(edge, prefix: str, count: int, max_tokens: int) -> list[Stream]:
    """Starts the streams one by one, each once the edge has routed the one before (its debug
    line comes after it counted the call in flight), so least-loaded deals them out evenly."""
    streams = []
    for i in range(count):
        stream = Stream(edge.base_url, new_id(f"{prefix}{i}"), f"Write about {TOPICS[i]}.", max_tokens).start()
        streams.append(stream)
        eventually(lambda: stream.request_id in routed(edge.log()), f"the edge routed {stream.request_id}",
                   timeout=60, give_up=lambda: stream.done.is_set() and f"it ended: {stream.status} {stream.error}")
    return streams


def first_replica(edge, streams: list[Stream]) -> dict[str, str]:
    """Where the edge first sent each stream (start_streams waited until it logged every one)."""
    where = routed(edge.log())
    return {s.request_id: where[s.request_id][0][0] for s in streams}


def victim_with_a_started_stream(edge, streams, replicas):
    """A replica with a stream that has sent tokens; least-loaded dealt two streams to each, so
    with one slot the other one waits behind it, without a token yet."""
    placed = first_replica(edge, streams)
    assert sorted(Counter(placed.values()).values()) == [2, 2, 2], placed

    def started_one():
        return next((placed[s.request_id] for s in streams if s.first_token.is_set()), None)

    address = eventually(started_one, "a stream's first token", timeout=120)
    return replicas.by_address(address), placed


def short_requests(edge, prefix: str, count: int) -> list[httpx.Response]:
    out = []
    with httpx.Client(base_url=edge.base_url, timeout=TIMEOUT) as http:
        for i in range(count):
            out.append(chat(http, [{"role": "user", "content": f"Say hi, number {i}."}], new_id(prefix), max_tokens=2))
    return out


def test_a_killed_replica_costs_only_its_streams_and_comes_back(replicas, start_edge):
    edge = start_edge("least-loaded")
    streams = start_streams(edge, "kill", 6, max_tokens=STREAM_TOKENS)
    victim, placed = victim_with_a_started_stream(edge, streams, replicas)
    on_victim = [s for s in streams if placed[s.request_id] == victim.address]
    before_kill = len(edge.log())
    victim.signal(signal.SIGKILL)
    victim.service.process.wait(10)

    # Once the edge has seen it gone (its health watch broke, or a call failed), new requests
    # go to the others and all succeed.
    gone = re.compile(rf"replica {re.escape(victim.address)}(: (unreachable|not serving)| failed a call)")
    eventually(lambda: gone.search(edge.log()[before_kill:]), "the edge saw the killed replica gone", timeout=60)
    later = short_requests(edge, "after-kill", 4)
    assert [r.status_code for r in later] == [200] * 4, [r.text for r in later]

    for stream in streams:
        assert stream.done.wait(120), stream.request_id
    log = edge.log()
    retried = {m[0]: m for m in RETRIED.findall(log)}
    for stream in streams:
        if placed[stream.request_id] != victim.address:
            assert stream.complete, (stream.request_id, stream.frames[-3:], stream.error)
        elif stream.request_id in retried:
            # no token yet when its replica died: retried elsewhere, the client saw nothing
            assert retried[stream.request_id][1] == victim.address
            assert stream.complete, (stream.request_id, stream.frames[-3:], stream.error)
        else:
            # it had sent tokens: the error frame, then [DONE] (or it had finished before the kill)
            assert stream.failed_in_stream or stream.complete, (stream.request_id, stream.frames[-3:], stream.error)
            if stream.failed_in_stream:
                assert stream.frames[-2]["error"]["code"] == "service_unavailable"
    failed = [s.request_id for s in streams if not s.complete]
    assert failed and set(failed) <= {s.request_id for s in on_victim}, (failed, placed)
    print(f"\nvictim {victim.name}: {len(on_victim)} streams, {len(failed)} failed after their first token, "
          f"{sum(1 for s in on_victim if s.request_id in retried)} retried cleanly; later requests: all 200")
    after_kill = routed(log)
    assert all(after_kill[r.headers["x-request-id"]][-1][0] != victim.address for r in later)

    # Restarted on the same port: it gets traffic again, the edge never restarted.
    victim.start()
    serving_at = time.monotonic()
    baseline = victim.status().generations_started  # the warm-up

    def victim_served():
        short_requests(edge, "after-restart", 3)
        return victim.status().generations_started > baseline

    eventually(victim_served, "the restarted replica served a request", timeout=60, interval=0)
    print(f"restarted {victim.name} served again {time.monotonic() - serving_at:.1f} s after it was SERVING")
    assert edge.process.poll() is None


def test_a_drained_replica_loses_no_request(replicas, start_edge):
    edge = start_edge("least-loaded")
    streams = start_streams(edge, "drain", 6, max_tokens=STREAM_TOKENS)
    victim, placed = victim_with_a_started_stream(edge, streams, replicas)
    victim.signal(signal.SIGTERM)
    drained_at = time.monotonic()
    exit_times: list[float] = []
    waiter = threading.Thread(target=lambda: (victim.service.process.wait(), exit_times.append(time.monotonic())),
                              daemon=True)
    waiter.start()

    # While it drains (its streams finish, within --grace), new requests keep coming: none fails.
    later: list[httpx.Response] = []
    while victim.running and time.monotonic() < drained_at + GRACE:
        later.extend(short_requests(edge, "during-drain", 1))
    assert victim.service.process.wait(GRACE + 10) == 0
    waiter.join(10)
    exited_at = exit_times[0]
    later.extend(short_requests(edge, "after-drain", 2))
    assert later and [r.status_code for r in later] == [200] * len(later), [r.text for r in later if r.status_code != 200]

    for stream in streams:
        assert stream.done.wait(120), stream.request_id
        assert stream.complete, (stream.request_id, placed[stream.request_id], stream.frames[-3:], stream.error)
    where = routed(edge.log())
    sent_after = [where[r.headers["x-request-id"]][-1][0] for r in later]
    last_stream = max(s.ended_at for s in streams if placed[s.request_id] == victim.address)
    print(f"\ndrained {victim.name} ({victim.address}): its last stream ended {last_stream - drained_at:.1f} s after "
          f"SIGTERM, it exited {exited_at - last_stream:.1f} s later; {len(later)} requests meanwhile and after, on "
          f"{dict(Counter(sent_after))}; retries: {len(RETRIED.findall(edge.log()))}")
    # Not the whole --grace: the edge's health watch let go, so the service drained idle.
    this_run = victim.log_path.read_text(errors="replace")
    assert "drained: every generation ended" in this_run and "grace ran out" not in this_run


def test_a_frozen_replica_is_left_and_costs_no_request(replicas, start_edge):
    """SIGSTOP: the replica's sockets stay open and it answers nothing. The edge's keepalive
    finds it out; calls sent there before any token move to another replica; every request
    succeeds, none waits for the client's own timeout; after SIGCONT it serves again."""
    edge = start_edge("round-robin")
    victim = replicas.replicas[0]
    victim.signal(signal.SIGSTOP)
    try:
        answers = short_requests(edge, "frozen", 12)
        assert [r.status_code for r in answers] == [200] * 12, [r.text for r in answers if r.status_code != 200]
        # Keepalive finds the frozen replica within KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS (4 s);
        # the 12 short answers, all from the other replicas, can come sooner than that.
        unreachable = re.compile(rf"replica {re.escape(victim.address)}: unreachable")
        eventually(lambda: unreachable.search(edge.log()), "the edge saw the frozen replica unreachable", timeout=60)
        log = edge.log()
        where = routed(log)
        last_hops = [where[r.headers["x-request-id"]][-1][0] for r in answers]
        assert victim.address not in last_hops
        retried = [m for m in RETRIED.findall(log) if m[1] == victim.address]
        print(f"\nfrozen {victim.name}: {len(retried)} of 12 requests left it before their first token; "
              f"served by {dict(Counter(last_hops))}")
    finally:
        victim.signal(signal.SIGCONT)
    eventually(lambda: re.search(rf"replica {re.escape(victim.address)}: serving", edge.log()[len(log):]),
               "the edge saw the thawed replica serving again", timeout=60)
