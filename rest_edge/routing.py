"""Routing across inference service replicas: the targets, the affinity key and the policies.

Plain Python, no gRPC (``rest_edge.client`` runs the replicas' channels, health watches and
status polls and asks a policy here where each call goes), so all of it is unit-tested
without processes.

* **Targets** (``INFERENCE_TARGET``): one address, a comma-separated list of addresses (each
  one replica, e.g. compose's ``service-1:50051,service-2:50051``), or ``dns:///name:port``:
  every address the name resolves to is a replica (a Kubernetes headless Service gives one per
  ready pod), resolved again every :data:`RESOLVE_INTERVAL` seconds.
* **Policies** (``EDGE_ROUTING``): each orders the serving replicas for one call; the client
  takes the first one with room. ``prefix-affinity`` (default): rendezvous hashing of the
  conversation's key (:func:`conversation_key`) with bounded load (:func:`load_bound`);
  ``least-loaded``: fewest calls in flight, ties at random; ``round-robin``: in turn.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import socket
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Optional, Sequence

DEFAULT_PORT = 50051
# gRPC's own DNS resolver re-resolves at most every 30 s; a Kubernetes headless Service's
# records change when pods become ready or go (CoreDNS answers with a 5-30 s TTL).
RESOLVE_INTERVAL = 15.0
# Bounded load (Mirrokni, Thorup, Zadimoghaddam 2018): a replica may hold at most
# ceil(LOAD_BOUND_FACTOR x mean load + 1) calls before the next in rendezvous order is asked.
LOAD_BOUND_FACTOR = Fraction(5, 4)
# A completion prompt's affinity key: its first characters (see conversation_key).
PROMPT_KEY_CHARS = 256

PREFIX_AFFINITY, LEAST_LOADED, ROUND_ROBIN = "prefix-affinity", "least-loaded", "round-robin"
POLICIES = (PREFIX_AFFINITY, LEAST_LOADED, ROUND_ROBIN)
DEFAULT_POLICY = PREFIX_AFFINITY

# Address forms gRPC takes as they are (no host:port to check or complete).
_SCHEMES = ("unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")


# --- targets ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Targets:
    """Where the replicas are: fixed ``addresses``, or every address of ``dns_host``."""

    addresses: tuple[str, ...] = ()
    dns_host: Optional[str] = None
    dns_port: int = DEFAULT_PORT

    @property
    def dynamic(self) -> bool:
        return self.dns_host is not None

    def describe(self) -> str:
        if self.dynamic:
            return f"dns:///{format_address(self.dns_host, self.dns_port)}"
        return ",".join(self.addresses)


def split_host_port(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` or a bare IPv6 address → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"bad address {text!r}: unclosed '['")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a name, an IPv4 address, or an IPv6 address without brackets (no port then)
        host, port_text = text, ""
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"bad address {text!r}")
    if port_text == "":
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad address {text!r}: the port must be 1-65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_targets(spec: str) -> Targets:
    """``INFERENCE_TARGET`` → :class:`Targets`. A missing port is 50051.

    ``dns:///name[:port]`` (also ``dns:name[:port]``) names a DNS name whose addresses are the
    replicas; a DNS server authority (``dns://8.8.8.8/name``) is not supported, the system's
    resolver is used. Otherwise a comma-separated list: each entry one replica (a name there is
    left to gRPC to resolve and connects to one of its addresses). Duplicates count once.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ValueError("INFERENCE_TARGET is empty")
    entries = [entry.strip() for entry in spec.split(",")]
    if any(not entry for entry in entries):
        raise ValueError(f"INFERENCE_TARGET {spec!r} has an empty entry")
    if any(entry.startswith("dns:") for entry in entries):
        if len(entries) > 1:
            raise ValueError(f"INFERENCE_TARGET {spec!r}: a dns: target stands alone, not in a list")
        rest = spec[len("dns:"):]
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise ValueError(f"INFERENCE_TARGET {spec!r}: expected dns:///name:port")
            if authority:
                raise ValueError(f"INFERENCE_TARGET {spec!r}: a DNS server authority is not supported; "
                                 "use dns:///name:port (the system's resolver)")
        host, port = split_host_port(rest)
        return Targets(dns_host=host, dns_port=port)
    addresses: list[str] = []
    for entry in entries:
        if entry.startswith(_SCHEMES):
            address = entry
        else:
            try:
                address = format_address(*split_host_port(entry))
            except ValueError as error:
                raise ValueError(f"INFERENCE_TARGET {spec!r}: {error}") from None
        if address not in addresses:
            addresses.append(address)
    return Targets(addresses=tuple(addresses))


def resolve(host: str, port: int) -> list[str]:
    """Every TCP address of ``host`` (sorted, ``[v6]:port`` for IPv6); raises OSError when the
    name does not resolve (a headless Service with no ready pod has no record)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({format_address(info[4][0], port) for info in infos})


# --- the affinity key --------------------------------------------------------------------------

def conversation_key(model: str, messages: Sequence[tuple[str, str]] = (), prompt: str = "") -> bytes:
    """The key that sends every turn of one conversation to the same replica.

    A chat: the model and the messages up to and including the first user message (the system
    message(s), if any, and the first question). Every later turn repeats them verbatim, so
    the key is the same on every turn; two conversations share it only when they open alike,
    and those share that prompt prefix, which is what the replica's prefix cache reuses. A
    completion: the model and the prompt's first :data:`PROMPT_KEY_CHARS` characters (a prompt
    that grows turn by turn keeps its key once the first turn is that long).
    """
    digest = hashlib.blake2b(digest_size=16)

    def put(tag: bytes, text: str) -> None:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(tag + len(data).to_bytes(8, "little") + data)

    put(b"M", model)
    if messages:
        for role, content in messages:
            put(b"R", role)
            put(b"C", content)
            if role == "user":
                break
    else:
        put(b"P", prompt[:PROMPT_KEY_CHARS])
    return digest.digest()


# --- policies ----------------------------------------------------------------------------------

@dataclass
class Candidate:
    """A serving replica as a policy sees it: its address, load (calls in flight there) and
    free slots for the call's model (None when not known)."""

    address: str
    load: int
    replica: Any = field(default=None, compare=False, repr=False)
    free: Optional[int] = None


def rendezvous_weight(key: bytes, address: str) -> int:
    return int.from_bytes(hashlib.blake2b(key + b"\0" + address.encode("utf-8"), digest_size=8).digest(), "big")


def rendezvous_order(key: bytes, candidates: Iterable[Candidate]) -> list[Candidate]:
    """Highest random weight first: removing a replica moves only the keys it was first for."""
    return sorted(candidates, key=lambda c: (rendezvous_weight(key, c.address), c.address), reverse=True)


def load_bound(loads: Sequence[int], factor: Fraction = LOAD_BOUND_FACTOR) -> int:
    """ceil(factor x mean + 1), exactly (integer arithmetic): the most calls one replica may
    hold before a key's next replica is asked. Idle replicas: 1."""
    if not loads:
        return 1
    total, count = sum(loads), len(loads)
    numerator = factor.numerator * total + factor.denominator * count
    denominator = factor.denominator * count
    return -(-numerator // denominator)


class Policy:
    name = ""

    def order(self, candidates: Sequence[Candidate], key: Optional[bytes] = None) -> list[Candidate]:
        """The candidates in the order to try them (the caller takes the first with room)."""
        raise NotImplementedError

    def describe(self, chosen: Candidate, candidates: Sequence[Candidate], key: Optional[bytes]) -> str:
        return self.name


class LeastLoaded(Policy):
    name = LEAST_LOADED

    def __init__(self, rng: Optional[random.Random] = None):
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    def order(self, candidates, key=None):
        with self._lock:  # Random is not documented thread-safe
            ties = [self._rng.random() for _ in candidates]
        ranked = sorted(zip(candidates, ties), key=lambda pair: (pair[0].load, pair[1]))
        return [candidate for candidate, _ in ranked]


class RoundRobin(Policy):
    name = ROUND_ROBIN

    def __init__(self):
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def order(self, candidates, key=None):
        ordered = sorted(candidates, key=lambda c: c.address)
        if not ordered:
            return []
        with self._lock:
            start = next(self._turn) % len(ordered)
        return ordered[start:] + ordered[:start]


class PrefixAffinity(Policy):
    """Rendezvous hashing of the key with bounded load; no key (embeddings): least loaded.

    The key's replicas in rendezvous order, in three tiers: those with a free slot for the model
    (or, capacity unknown, under the load bound), then those without a free slot but under the
    bound (the call waits in their queue), then the rest. So a conversation goes to its home
    replica whenever that has a slot free, and to the next one in its order that has one while
    home is busy, rather than queueing at home while another replica idles. The bound is
    ``load_bound`` of every serving replica's load, full or not.
    """

    name = PREFIX_AFFINITY

    def __init__(self, factor: Fraction = LOAD_BOUND_FACTOR, rng: Optional[random.Random] = None):
        self._factor = factor
        self._fallback = LeastLoaded(rng)

    def order(self, candidates, key=None):
        if key is None:
            return self._fallback.order(candidates)
        ranked = rendezvous_order(key, candidates)
        bound = load_bound([c.load for c in candidates], self._factor)

        def tier(c: Candidate) -> int:
            if c.free is None:
                return 0 if c.load < bound else 2
            if c.free > 0:
                return 0
            return 1 if c.load < bound else 2

        return sorted(ranked, key=tier)  # stable: rendezvous order within a tier

    def describe(self, chosen, candidates, key):
        if key is None:
            return f"{self.name}, no key: least loaded"
        home = rendezvous_order(key, candidates)[0]
        bound = load_bound([c.load for c in candidates], self._factor)
        return (f"{self.name}, key {key.hex()[:12]}, home {home.address}, home load {home.load}, "
                f"home free {home.free}, load {chosen.load}, free {chosen.free}, bound {bound}")


def make_policy(name: str) -> Policy:
    name = (name or "").strip().lower()
    if name == PREFIX_AFFINITY:
        return PrefixAffinity()
    if name == LEAST_LOADED:
        return LeastLoaded()
    if name == ROUND_ROBIN:
        return RoundRobin()
    raise ValueError(f"EDGE_ROUTING must be one of {', '.join(POLICIES)}, not {name!r}")
