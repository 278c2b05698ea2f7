"""How many compute threads the engine may use right now.

ggml's compute threads spin-wait on each other at every graph node: when one of them has
no core (another process took it), the others spin until it comes back, and a token that
takes 5 ms on a quiet machine takes seconds. Measured on a 2-core machine with one busy
process beside the server: 2 threads fell from 68 to 0.4 tok/s, while 1 thread kept 63 of
72 tok/s. So the thread count must follow the CPU the machine actually leaves us.

Two parts:

* a hard cap, read at start and every ``LIMITS_REFRESH_S``: the configured ``--threads``,
  the CPUs this process may run on (``os.sched_getaffinity``) and the cgroup CPU quota (v2
  ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, the smallest on our cgroup's
  path) rounded down, at least 1. A quota of 1.5 CPUs gives 1 thread: spinning threads
  burn quota while they wait, the quota also pays for the gRPC and sampler threads, and
  one thread decodes at 65-93% of two (machine-dependent), while 2 threads on 1.5 CPUs
  would be throttled a quarter of every period;
* under the ``adaptive`` policy, a live estimate of the cores the others leave us. A daemon
  thread samples two counters every ``window_s``: the busy time of our CPUs in
  ``/proc/stat`` (steal included: a vCPU the hypervisor took is a missing core too) and our
  own process CPU time. Our spin-waiting counts as ours, so it cancels out; the difference
  is what other processes (and the hypervisor) took. ``available = min(cores - others,
  quota)``, smoothed over time (time constant ``tau_s`` when others fall, a fifth of it when
  they rise: too many threads cost 100x, too few a fraction), becomes a thread count with
  hysteresis: drop to fewer threads when ``available < threads - 0.5``, add one when
  ``available >= threads + 0.55``. Where these sit was measured (default model, 2 cores, a
  neighbour busy a fraction of every 10 ms; 2 threads over 1 thread): 1.62x beside nothing,
  1.30x beside 0.2 of a core, 1.22x beside 0.35, 0.97x beside 0.5, 0.85x beside 0.7, 0.58x
  beside a whole core. So 2 threads pay up to about half a core taken; the rise once needed
  0.3 at most, which kept a service at 1 thread (a fifth slower) while its own edge and
  clients took 0.3-0.45 of a core. Sampling in the background keeps the estimate fresh while
  the service idles: the first token after a quiet hour does not stall on a neighbour that
  arrived a second ago.

  With 2 threads and one busy neighbour, the neighbour gets 0.67 core (fairness per thread)
  to 1 core (per group: autogroup sessions, containers' cgroups): above 0.5, so we drop to
  1 thread within a token or two. At 1 thread it has its core (others = 1.0); when it
  leaves, others decays and we are back at 2 threads about a second later. A niced
  neighbour that the scheduler gives little CPU costs us nothing. One core is all a process
  gets beside one busy process on 2 cores, so busy/quiet tends to 1 thread's speed / 2's.

``threads()`` is the hot path (called before every evaluation): an attribute read, well
under a microsecond; the sampler's work (about 30 microseconds) is off it, 4 times a
second. Thread-safe. ``background=False`` resamples lazily on the calling thread instead
(at most once per ``window_s``; the tests use it, with injected readers and clock).
Failing to read ``/proc`` or cgroup files falls back to the hard cap.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

log = logging.getLogger(__name__)

POLICIES = ("adaptive", "fixed")
DEFAULT_POLICY = "adaptive"
LIMITS_REFRESH_S = 30.0
# Hysteresis, in cores: drop below `t` threads when available < t - DROP_MARGIN ...
DROP_MARGIN = 0.5
# ... and rise to `t + 1` when available >= t + 1 - RISE_MARGIN.
RISE_MARGIN = 0.45


def _read_text(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


# ---------------------------------------------------------------- limits (the hard cap)

def cgroup_cpu_quota(read_text: Callable[[str], str] = _read_text, root: str = "/sys/fs/cgroup",
                     self_cgroup: str = "/proc/self/cgroup") -> Optional[float]:
    """The smallest CPU quota (in CPUs) on our cgroup's path, or None when unlimited/unknown.

    cgroup v2: ``cpu.max`` ("max 100000" or "150000 100000"); v1: ``cpu.cfs_quota_us`` (-1 =
    none) over ``cpu.cfs_period_us``, under the ``cpu`` controller's mount. Limits nest, so
    every directory from our cgroup up to the mount root counts; inside a container the
    mount root usually is the container's cgroup. Unreadable or malformed files are skipped.
    """
    try:
        membership = read_text(self_cgroup)
    except (OSError, ValueError):
        membership = ""
    v2_path, v1_path = "/", "/"
    for line in membership.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path or "/"
        elif "cpu" in controllers.split(","):
            v1_path = path or "/"

    def directories(mount: str, path: str) -> list[str]:
        out = [mount]
        here = mount
        for part in [p for p in path.split("/") if p]:
            here = f"{here}/{part}"
            out.append(here)
        return out

    quotas: list[float] = []
    for directory in directories(root, v2_path):
        quota = _parse_cpu_max(read_text, f"{directory}/cpu.max")
        if quota is not None:
            quotas.append(quota)
    for mount in (f"{root}/cpu", f"{root}/cpu,cpuacct", f"{root}/cpuacct,cpu"):
        for directory in directories(mount, v1_path):
            quota = _parse_cfs(read_text, directory)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _parse_cpu_max(read_text, path: str) -> Optional[float]:
    try:
        fields = read_text(path).split()
    except (OSError, ValueError):
        return None
    try:
        if not fields or fields[0] == "max":
            return None
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _parse_cfs(read_text, directory: str) -> Optional[float]:
    try:
        quota = int(read_text(f"{directory}/cpu.cfs_quota_us").strip())
        period = int(read_text(f"{directory}/cpu.cfs_period_us").strip())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def affinity_cpus() -> Optional[frozenset[int]]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class Limits:
    configured: int
    cpus: Optional[frozenset[int]]   # CPUs we may run on (None: unknown)
    quota: Optional[float]           # cgroup quota in CPUs (None: none)

    @property
    def cores(self) -> int:
        return len(self.cpus) if self.cpus else (os.cpu_count() or 1)

    @property
    def cap(self) -> int:
        cap = max(1, self.configured)
        if self.cpus:
            cap = min(cap, len(self.cpus))
        if self.quota is not None:
            cap = min(cap, max(1, math.floor(self.quota + 1e-9)))
        return cap

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g} CPUs"
        cpus = "unknown" if self.cpus is None else str(len(self.cpus))
        return f"cap {self.cap} (configured {self.configured}, affinity {cpus} CPUs, cgroup quota {quota})"


def read_limits(configured: int, read_text: Callable[[str], str] = _read_text,
                affinity: Callable[[], Optional[frozenset[int]]] = affinity_cpus) -> Limits:
    try:
        quota = cgroup_cpu_quota(read_text)
    except Exception:  # noqa: BLE001 - a limit we cannot read is no limit, never a crash
        log.debug("cgroup quota unreadable", exc_info=True)
        quota = None
    return Limits(configured=configured, cpus=affinity(), quota=quota)


# ---------------------------------------------------------------- /proc/stat

def parse_proc_stat(text: str, cpus: Optional[frozenset[int]]) -> tuple[int, int, int]:
    """(busy ticks, total ticks, CPUs counted) over ``cpus`` (all CPUs when None).

    busy = user + nice + system + irq + softirq + steal (guest time is already in user);
    total = busy + idle + iowait. Per-CPU lines are summed when ``cpus`` is a strict subset
    of the CPUs listed; otherwise (or without per-CPU lines) the aggregate line is used.
    Raises ValueError on a file without a usable line.
    """
    aggregate = None
    per_cpu: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *fields = line.split()
        values = [int(v) for v in fields[:8]]
        if len(values) < 4:
            raise ValueError(f"short /proc/stat line: {line!r}")
        values += [0] * (8 - len(values))
        user, nice, system, idle, iowait, irq, softirq, steal = values
        busy = user + nice + system + irq + softirq + steal
        sample = (busy, busy + idle + iowait)
        if name == "cpu":
            aggregate = sample
        elif name[3:].isdigit():
            per_cpu[int(name[3:])] = sample
    if per_cpu and cpus is not None and not set(per_cpu) <= cpus:
        chosen = [per_cpu[c] for c in cpus if c in per_cpu]
        if chosen:
            return sum(b for b, _ in chosen), sum(t for _, t in chosen), len(chosen)
    if aggregate is not None:
        return aggregate[0], aggregate[1], len(per_cpu) or (len(cpus) if cpus else os.cpu_count() or 1)
    raise ValueError("no cpu line in /proc/stat")


# ---------------------------------------------------------------- the budget

def decide(current: int, available: float, cap: int) -> int:
    """Thread count for ``available`` cores, from ``current``, with hysteresis."""
    current = min(max(1, current), cap)
    down = math.floor(available + DROP_MARGIN)
    if down < current:
        return max(1, down)
    up = math.floor(available + RISE_MARGIN)
    if up > current:
        return min(cap, up)
    return current


@dataclass(frozen=True)
class BudgetState:
    policy: str
    threads: int
    cap: int
    others: Optional[float]     # cores other processes took (smoothed); None before a sample
    available: Optional[float]  # cores left for us (smoothed); None before a sample


class CpuBudget:
    """The compute threads the engine may use now (see the module docstring)."""

    def __init__(
        self,
        threads: int,
        policy: str = DEFAULT_POLICY,
        *,
        window_s: float = 0.25,
        tau_s: float = 0.5,
        read_stat: Callable[[], str] = lambda: _read_text("/proc/stat"),
        cpu_time: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        read_limits: Callable[[int], Limits] = read_limits,
        limits_refresh_s: float = LIMITS_REFRESH_S,
        background: bool = True,
    ):
        if policy not in POLICIES:
            raise ValueError(f"thread policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.policy = policy
        self.configured = threads
        self._window = window_s
        self._tau = tau_s
        self._read_stat = read_stat
        self._cpu_time = cpu_time
        self._clock = clock
        self._read_limits = read_limits
        self._limits_refresh = limits_refresh_s
        self._lock = threading.Lock()
        self._limits = read_limits(threads)
        self._limits_at = clock()
        self._threads = self._limits.cap
        self._others: Optional[float] = None
        self._previous: Optional[tuple[float, float, int, int]] = None  # wall, ours, busy, total
        self._next_sample = float("-inf")
        self._warned = False
        self._cores = 0  # CPUs /proc/stat was summed over
        self._background = background and policy == "adaptive"
        self._sampler: Optional[threading.Thread] = None
        self._stop = threading.Event()

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def cap(self) -> int:
        return self._limits.cap

    def threads(self) -> int:
        """Compute threads for the next evaluation: well under a microsecond, never blocks."""
        if self._background:
            if self._sampler is None:
                self._start_sampler()
        elif self._clock() >= self._next_sample and self._lock.acquire(blocking=False):
            try:
                self._resample()
            finally:
                self._lock.release()
        return self._threads

    def sample(self) -> None:
        """One resample now (what the sampler thread does every ``window_s``)."""
        with self._lock:
            self._resample()

    def close(self) -> None:
        """Stops the sampler thread (if any); ``threads()`` keeps answering with the last count."""
        self._stop.set()
        self._background = False
        self._next_sample = float("inf")

    def _start_sampler(self) -> None:
        with self._lock:
            if self._sampler is not None:
                return
            self._sampler = threading.Thread(target=self._run, name="cpu-budget", daemon=True)
        self._sampler.start()

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - the sampler must not die; the cap is the fallback
                log.exception("CPU budget sampling failed")
            if self._stop.wait(self._window):
                return

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler = None
        self._previous = None

    def state(self) -> BudgetState:
        others = self._others
        available = None if others is None else self._available(others)
        return BudgetState(self.policy, self._threads, self.cap, others, available)

    # -- internals (under the lock)

    def _available(self, others: float) -> float:
        limits = self._limits
        available = (self._cores or limits.cores) - others
        if limits.quota is not None:
            available = min(available, limits.quota)
        return available

    def _resample(self) -> None:
        now = self._clock()
        if now - self._limits_at >= self._limits_refresh:
            self._refresh_limits(now)
        if self.policy == "fixed":
            self._threads = self.cap
            self._next_sample = now + self._limits_refresh
            return
        self._next_sample = now + self._window
        try:
            busy, total, counted = parse_proc_stat(self._read_stat(), self._limits.cpus)
            ours = self._cpu_time()
        except (OSError, ValueError) as error:
            if not self._warned:
                log.warning("cannot estimate free CPU (%s); using %d compute threads", error, self.cap)
                self._warned = True
            self._previous = None
            self._others = None
            self._threads = self.cap
            return
        previous = self._previous
        self._previous = (now, ours, busy, total)
        if previous is None:
            return
        wall = now - previous[0]
        d_busy, d_total = busy - previous[2], total - previous[3]
        if wall <= 0 or d_total <= 0 or d_busy < 0:
            return
        cores = self._cores = counted
        system_cores = cores * d_busy / d_total
        our_cores = max(0.0, ours - previous[1]) / wall
        others = min(float(cores), max(0.0, system_cores - our_cores))
        # Smoothing by time, not by sample: a long window (a token that stalled for seconds,
        # an idle gap) carries its full weight at once; short windows are averaged. Fast to
        # see a neighbour arrive (too many threads cost 100x), slow to see it leave (too few
        # cost a fraction): the attack time constant is a fifth of the release one.
        tau = self._tau if self._others is None or others < self._others else self._tau / 5
        weight = 1.0 - math.exp(-wall / tau) if tau > 0 else 1.0
        self._others = others if self._others is None else self._others + weight * (others - self._others)
        available = self._available(self._others)
        threads = decide(self._threads, available, self.cap)
        if threads != self._threads:
            log.info("compute threads %d -> %d: other processes use %.2f of %d cores, %.2f left for us",
                     self._threads, threads, self._others, cores, available)
            self._threads = threads

    def _refresh_limits(self, now: float) -> None:
        self._limits_at = now
        try:
            limits = self._read_limits(self.configured)
        except Exception:  # noqa: BLE001 - keep the limits we had
            log.debug("re-reading CPU limits failed", exc_info=True)
            return
        if limits != self._limits:
            log.info("CPU limits changed: %s", limits.describe())
            if limits.cpus != self._limits.cpus:
                self._previous = None  # /proc/stat sums over other CPUs now
            self._limits = limits
            self._threads = min(max(1, self._threads), limits.cap)


_shared: dict[tuple[int, str], CpuBudget] = {}
_shared_lock = threading.Lock()


def _after_fork_in_child() -> None:
    for budget in list(_shared.values()):  # no sampler thread survives a fork
        budget._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def shared_budget(threads: int, policy: str = DEFAULT_POLICY) -> CpuBudget:
    """One budget per (cap, policy) per process: every model and slot sees the same machine."""
    key = (threads, policy)
    budget = _shared.get(key)
    if budget is None:
        with _shared_lock:
            budget = _shared.get(key)
            if budget is None:
                budget = _shared[key] = CpuBudget(threads, policy)
    return budget
