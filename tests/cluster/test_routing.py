"""rest_edge.routing without processes: target parsing, the affinity key, rendezvous hashing,
bounded load and the least-loaded and round-robin choices."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from rest_edge import routing
from rest_edge.routing import Candidate, LeastLoaded, PrefixAffinity, RoundRobin, Targets

# --- targets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, addresses", [
    ("127.0.0.1:50051", ("127.0.0.1:50051",)),
    ("service-1:50051", ("service-1:50051",)),
    ("localhost", ("localhost:50051",)),  # the service's port by default
    ("service-1:50051,service-2:50051, service-3:50051", ("service-1:50051", "service-2:50051", "service-3:50051")),
    ("a:1,b:2,a:1", ("a:1", "b:2")),  # a duplicate counts once
    ("[::1]:5000,::1", ("[::1]:5000", "[::1]:50051")),
    ("unix:/tmp/inference.sock", ("unix:/tmp/inference.sock",)),
])
def test_static_targets(spec, addresses):
    targets = routing.parse_targets(spec)
    assert targets == Targets(addresses=addresses) and not targets.dynamic


@pytest.mark.parametrize("spec, host, port", [
    ("dns:///inference-service.llm-serving.svc.cluster.local:50051",
     "inference-service.llm-serving.svc.cluster.local", 50051),
    ("dns:///inference-service", "inference-service", 50051),
    ("dns:inference-service:7000", "inference-service", 7000),
    ("dns:///[::1]:7000", "::1", 7000),
])
def test_dns_targets(spec, host, port):
    targets = routing.parse_targets(spec)
    assert targets.dynamic and (targets.dns_host, targets.dns_port) == (host, port)
    assert targets.describe() == "dns:///" + routing.format_address(host, port)


@pytest.mark.parametrize("spec", ["", " ", "a:1,,b:2", "a:1,", "a:0", "a:65536", "a:x", "dns:///a:1,b:2",
                                  "a:1,dns:///b:2", "dns://8.8.8.8/a:1", "dns://a:1", "[::1", "a b:1"])
def test_bad_targets(spec):
    with pytest.raises(ValueError):
        routing.parse_targets(spec)


def test_resolve_gives_every_address_with_the_port():
    addresses = routing.resolve("localhost", 5123)
    assert addresses and set(addresses) <= {"127.0.0.1:5123", "[::1]:5123"}
    with pytest.raises(OSError):
        routing.resolve("no-such-host.invalid", 1)


# --- the affinity key -----------------------------------------------------------------------------

SYSTEM = ("system", "You are a helpful assistant. Answer in one short sentence.")


def conversation(i: int, turns: int, system: bool = True) -> list[list[tuple[str, str]]]:
    """The messages of each turn of conversation ``i``: every turn repeats the history."""
    history = [SYSTEM] if system else []
    out = []
    for turn in range(turns):
        history = history + [("user", f"Question {turn} of conversation {i}: what about topic {i * 7 + turn}?")]
        out.append(list(history))
        history = history + [("assistant", f"An answer {i}/{turn}.")]
    return out


@pytest.mark.parametrize("system", [True, False])
def test_chat_key_is_the_same_on_every_turn_and_differs_between_conversations(system):
    keys = {}
    for i in range(50):
        turns = {routing.conversation_key("m", messages) for messages in conversation(i, 4, system)}
        assert len(turns) == 1, i  # every turn of one conversation: one key
        keys[i] = turns.pop()
    assert len(set(keys.values())) == 50  # 50 conversations: 50 keys


def test_chat_key_parts():
    base = [SYSTEM, ("user", "hi")]
    key = routing.conversation_key("m", base)
    assert routing.conversation_key("m", base + [("assistant", "hello"), ("user", "more")]) == key
    assert routing.conversation_key("other", base) != key  # another model: its own cache
    assert routing.conversation_key("m", [("system", "Be terse."), ("user", "hi")]) != key
    assert routing.conversation_key("m", [("user", "hi")]) != key
    # The same opening is the same key: those share their prompt prefix, which is what the cache reuses.
    assert routing.conversation_key("m", [SYSTEM, ("user", "hi"), ("assistant", "x"), ("user", "y")]) == key
    # No confusion between fields: role/content boundaries are part of the key.
    assert routing.conversation_key("m", [("user", "ab")]) != routing.conversation_key("m", [("use", "rab")])


def test_prompt_key_is_its_first_characters():
    first = "Q: " + "x" * routing.PROMPT_KEY_CHARS
    key = routing.conversation_key("m", prompt=first)
    assert routing.conversation_key("m", prompt=first + "\nA: yes\nQ: and then?\nA:") == key
    assert routing.conversation_key("m", prompt="R" + first[1:]) != key
    short = "Q: hi\nA:"  # a first turn shorter than the key: its next turns have another key
    assert routing.conversation_key("m", prompt=short) != routing.conversation_key("m", prompt=short + "x" * 300)


# --- rendezvous hashing ------------------------------------------------------------------------

def candidates(*addresses: str, loads=None) -> list[Candidate]:
    loads = loads or [0] * len(addresses)
    return [Candidate(address, load) for address, load in zip(addresses, loads)]


KEYS = [routing.conversation_key("m", [("user", f"conversation {i}")]) for i in range(3000)]
FIVE = [f"10.0.0.{i}:50051" for i in range(1, 6)]


def homes(addresses: list[str]) -> dict[bytes, str]:
    return {key: routing.rendezvous_order(key, candidates(*addresses))[0].address for key in KEYS}


def test_rendezvous_spreads_keys_evenly():
    counts = Counter(homes(FIVE).values())
    assert set(counts) == set(FIVE)
    assert all(abs(n - len(KEYS) / 5) < 0.15 * len(KEYS) / 5 for n in counts.values()), counts


def test_removing_a_replica_moves_only_its_own_keys():
    before = homes(FIVE)
    gone = FIVE[2]
    after = homes([a for a in FIVE if a != gone])
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == gone}
    # ... and they spread over the others, not onto one
    assert len(Counter(after[key] for key in moved)) == 4


def test_adding_a_replica_takes_keys_only_onto_itself():
    before = homes(FIVE)
    new = "10.0.0.9:50051"
    after = homes(FIVE + [new])
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == new for key in moved)
    assert abs(len(moved) - len(KEYS) / 6) < 0.2 * len(KEYS) / 6


def test_rendezvous_order_does_not_depend_on_the_candidates_order():
    key = KEYS[0]
    shuffled = FIVE[:]
    random.Random(1).shuffle(shuffled)
    assert ([c.address for c in routing.rendezvous_order(key, candidates(*FIVE))]
            == [c.address for c in routing.rendezvous_order(key, candidates(*shuffled))])


# --- bounded load ---------------------------------------------------------------------------------

@pytest.mark.parametrize("loads, bound", [
    ([], 1), ([0, 0, 0], 1), ([1, 0, 0], 2), ([2, 1, 0], 3), ([3, 0, 0], 3), ([4, 4, 4], 6),
    ([1, 0, 0, 0, 0], 2),    # 1.25 x 0.2 + 1 = 1.25
    ([4, 0, 0, 0, 0], 2),    # 1.25 x 0.8 + 1 = 2 exactly (float arithmetic would say 2.0000000000000004)
    ([2, 2, 0, 0], 3),       # 1.25 x 1 + 1 = 2.25
])
def test_load_bound(loads, bound):
    assert routing.load_bound(loads) == bound


def test_affinity_goes_home_until_home_reaches_the_bound():
    key = KEYS[7]
    order = [c.address for c in routing.rendezvous_order(key, candidates(*FIVE))]
    home, second = order[0], order[1]
    policy = PrefixAffinity()

    def first(loads: dict[str, int]) -> str:
        return policy.order([Candidate(a, loads.get(a, 0)) for a in FIVE], key)[0].address

    assert first({}) == home
    assert first({home: 1, second: 1, order[2]: 1, order[3]: 1, order[4]: 1}) == home  # mean 1: bound 3
    assert first({home: 2, second: 1, order[2]: 1, order[3]: 1, order[4]: 1}) == home  # mean 1.2: bound 3
    assert first({home: 3, second: 1, order[2]: 1, order[3]: 1, order[4]: 1}) == second  # mean 1.4: bound 3
    assert first({home: 3, second: 5}) == order[2]  # the second is over the bound too: the third
    # Over the bound, in rendezvous order, after the ones under it.
    full = policy.order([Candidate(a, 9) for a in FIVE], key)
    assert [c.address for c in full] == order


def test_bounded_load_caps_a_hot_key():
    """Every call has the same key (one popular opening): with calls that never end, no replica
    ever holds more than the bound of the moment, so the key's load spreads over its next
    replicas in rendezvous order (the bound caps the most loaded replica at 1.25 x the mean,
    plus one; it promises nothing about the least loaded: here the last replica of the key's
    order gets none)."""
    policy = PrefixAffinity()
    loads = {a: 0 for a in FIVE}
    key = KEYS[3]
    for _ in range(100):
        cands = [Candidate(a, n) for a, n in loads.items()]
        bound = routing.load_bound(list(loads.values()))
        chosen = policy.order(cands, key)[0]
        assert chosen.load < bound
        loads[chosen.address] += 1
    assert max(loads.values()) <= routing.load_bound(list(loads.values())), loads  # 26: 1.25 x 20 + 1
    assert sum(1 for n in loads.values() if n >= 20) == 4, loads


def test_bounded_load_keeps_most_keys_home_under_even_load():
    """Many keys, each replica with an even share of load: the bound rarely moves a key."""
    policy = PrefixAffinity()
    rng = random.Random(5)
    loads = {a: 0 for a in FIVE}
    active: list[str] = []
    home_hits = 0
    for key in KEYS[:2000]:
        if len(active) >= 20:  # 20 calls in flight: one ends as the next starts
            loads[active.pop(rng.randrange(len(active)))] -= 1
        cands = [Candidate(a, n) for a, n in loads.items()]
        chosen = policy.order(cands, key)[0]
        home_hits += chosen.address == routing.rendezvous_order(key, cands)[0].address
        loads[chosen.address] += 1
        active.append(chosen.address)
    assert home_hits / 2000 > 0.85, home_hits


def test_affinity_without_a_key_is_least_loaded():
    chosen = PrefixAffinity().order(candidates("a:1", "b:1", "c:1", loads=[2, 0, 1]), None)[0]
    assert chosen.address == "b:1"


# --- least loaded, round robin -------------------------------------------------------------------

def test_least_loaded_picks_the_fewest_in_flight_and_breaks_ties_at_random():
    policy = LeastLoaded(random.Random(3))
    assert [c.address for c in policy.order(candidates("a:1", "b:1", "c:1", loads=[3, 1, 2]))] == ["b:1", "c:1", "a:1"]
    picks = Counter(policy.order(candidates("a:1", "b:1", "c:1", loads=[1, 0, 0]))[0].address for _ in range(300))
    assert set(picks) == {"b:1", "c:1"} and min(picks.values()) > 100


def test_round_robin_takes_turns():
    policy = RoundRobin()
    cands = candidates("c:1", "a:1", "b:1", loads=[5, 0, 9])
    assert [policy.order(cands)[0].address for _ in range(6)] == ["a:1", "b:1", "c:1"] * 2


def test_make_policy():
    assert routing.make_policy("prefix-affinity").name == "prefix-affinity"
    assert routing.make_policy("Least-Loaded").name == "least-loaded"
    assert routing.make_policy("round-robin").name == "round-robin"
    with pytest.raises(ValueError):
        routing.make_policy("random")
