"""The CPU budget: hard cap from --threads, affinity and cgroup quota; live estimate of the
cores other processes leave us. Everything injected: /proc/stat text, our CPU time, clock."""

from __future__ import annotations

import threading

import pytest

from inference_service.engine import cpu_budget
from inference_service.engine.cpu_budget import (
    CpuBudget,
    Limits,
    cgroup_cpu_quota,
    decide,
    parse_proc_stat,
    read_limits,
)
from tests.helpers import eventually

HZ = 100


class FakeMachine:
    """A clock, /proc/stat and our process CPU time that advance together.

    ``run(seconds, ours=..., others=...)``: our process used ``ours`` cores and other
    processes ``others`` cores (both spread evenly over the CPUs) for ``seconds``.
    """

    def __init__(self, cpus: int = 2):
        self.cpus = cpus
        self.now = 1000.0
        self.our_cpu = 5.0
        self.busy = [10_000.0] * cpus
        self.idle = [50_000.0] * cpus
        self.steal = [0.0] * cpus
        self.stat_reads = 0

    def clock(self) -> float:
        return self.now

    def cpu_time(self) -> float:
        return self.our_cpu

    def run(self, seconds: float, *, ours: float = 0.0, others: float = 0.0, steal: float = 0.0) -> None:
        used = min(self.cpus, ours + others + steal)
        for c in range(self.cpus):
            self.busy[c] += (ours + others) / self.cpus * seconds * HZ
            self.steal[c] += steal / self.cpus * seconds * HZ
            self.idle[c] += (self.cpus - used) / self.cpus * seconds * HZ
        self.our_cpu += ours * seconds
        self.now += seconds

    def stat(self) -> str:
        self.stat_reads += 1
        lines = []
        rows = [(int(b), int(i), int(s)) for b, i, s in zip(self.busy, self.idle, self.steal)]
        total = tuple(sum(r[k] for r in rows) for k in range(3))
        for name, (busy, idle, steal) in [("cpu", total)] + [(f"cpu{i}", r) for i, r in enumerate(rows)]:
            user, system = busy * 3 // 4, busy - busy * 3 // 4
            lines.append(f"{name}  {user} 0 {system} {idle} 0 0 0 {steal} 0 0")
        return "\n".join(lines + ["intr 1 2 3", "ctxt 99", "procs_running 3"]) + "\n"


def limits_of(threads: int = 2, cpus: int = 2, quota=None):
    return lambda configured: Limits(configured=configured, cpus=frozenset(range(cpus)), quota=quota)


def budget_for(machine: FakeMachine, threads: int = 2, policy: str = "adaptive", quota=None, **kw) -> CpuBudget:
    return CpuBudget(threads, policy, window_s=0.25, tau_s=0.5, read_stat=machine.stat, cpu_time=machine.cpu_time,
                     clock=machine.clock, read_limits=limits_of(cpus=machine.cpus, quota=quota), background=False, **kw)


def drive(budget: CpuBudget, machine: FakeMachine, seconds: float, step: float = 0.05, **load) -> list[int]:
    """Calls threads() every ``step`` (like a decode loop) while the machine runs ``load``."""
    seen = []
    for _ in range(round(seconds / step)):
        seen.append(budget.threads())
        machine.run(step, **load)
    seen.append(budget.threads())
    return seen


# ---------------------------------------------------------------- the live estimate

def test_quiet_machine_keeps_full_threads():
    machine = FakeMachine()
    budget = budget_for(machine)
    assert budget.threads() == 2
    # Our two spinning threads use both cores: all of it is ours, nothing is taken.
    seen = drive(budget, machine, 5.0, ours=1.95, others=0.05)
    assert set(seen) == {2}
    assert budget.state().others == pytest.approx(0.05, abs=0.03)
    assert budget.state().available == pytest.approx(1.95, abs=0.03)


def test_idle_service_on_quiet_machine_keeps_full_threads():
    machine = FakeMachine()
    budget = budget_for(machine)
    assert set(drive(budget, machine, 3.0, ours=0.0, others=0.2)) == {2}


def test_busy_neighbour_drops_to_one_thread_then_recovers_when_it_leaves():
    machine = FakeMachine()
    budget = budget_for(machine)
    drive(budget, machine, 1.0, ours=2.0)
    assert budget.threads() == 2
    # A neighbour arrives: 3 runnable threads on 2 cores, it gets ~2/3 of a core; one of our
    # tokens stalls for a long time, and the next call sees that whole window at once.
    machine.run(2.0, ours=4 / 3, others=2 / 3)
    assert budget.threads() == 1
    # At 1 thread the neighbour has a whole core; we stay at 1, without flapping.
    seen = drive(budget, machine, 10.0, ours=1.0, others=1.0)
    assert set(seen) == {1}
    assert budget.state().others == pytest.approx(1.0, abs=0.05)
    # The neighbour leaves: back to 2 within about a second.
    seen = drive(budget, machine, 3.0, ours=1.0, others=0.0)
    assert seen[-1] == 2
    first_two = seen.index(2) * 0.05
    assert first_two <= 1.5
    assert 2 not in seen[: seen.index(2)] and set(seen[seen.index(2):]) == {2}  # one step up, no flapping


def test_first_stalled_window_after_neighbour_arrives_is_enough():
    """A window that covers a long stall is weighted by its length: one call reacts."""
    machine = FakeMachine()
    budget = budget_for(machine)
    drive(budget, machine, 2.0, ours=2.0)
    machine.run(1.0, ours=4 / 3, others=2 / 3)   # one token stalled for a second
    assert budget.threads() == 1
    # A milder stall (tokens of 0.1 s) is seen within half a second.
    budget = budget_for(machine)
    drive(budget, machine, 2.0, ours=2.0)
    assert drive(budget, machine, 0.5, step=0.1, ours=4 / 3, others=2 / 3)[-1] == 1


def test_short_burst_costs_at_most_a_second_and_partial_load_does_not_flap():
    machine = FakeMachine()
    budget = budget_for(machine)
    drive(budget, machine, 1.0, ours=2.0)
    # a 0.3 s burst of a busy neighbour, then quiet again: back to 2 threads soon, and for good
    drive(budget, machine, 0.3, ours=4 / 3, others=2 / 3)
    seen = drive(budget, machine, 3.0, ours=2.0)
    assert seen[-1] == 2
    back = seen.index(2)
    assert back * 0.05 <= 1.5 and set(seen[back:]) == {2}
    # a neighbour taking about 0.4 of a core all the time (say the edge and the clients):
    # 2 threads are still faster (1.2x measured), from either count, and no flapping
    assert set(drive(budget, machine, 5.0, ours=1.6, others=0.4)) == {2}
    drive(budget, machine, 3.0, ours=1.0, others=1.0)
    seen = drive(budget, machine, 5.0, ours=1.0, others=0.4)
    assert seen[-1] == 2 and set(seen[seen.index(2):]) == {2}
    # about 0.6 of a core: 1 thread, from either count
    drive(budget, machine, 3.0, ours=1.0, others=1.0)
    assert set(drive(budget, machine, 5.0, ours=1.0, others=0.6)) == {1}
    drive(budget, machine, 3.0, ours=2.0)
    seen = drive(budget, machine, 5.0, ours=1.4, others=0.6)
    assert seen[-1] == 1 and set(seen[seen.index(1):]) == {1}


def test_steal_time_counts_as_taken():
    machine = FakeMachine()
    budget = budget_for(machine)
    drive(budget, machine, 1.0, ours=2.0)
    drive(budget, machine, 3.0, ours=1.1, steal=0.9)
    assert budget.threads() == 1


def test_two_neighbours_keep_one_thread():
    machine = FakeMachine()
    budget = budget_for(machine)
    seen = drive(budget, machine, 3.0, ours=2 / 3, others=4 / 3)
    assert seen[-1] == 1


def test_four_cores_step_down_by_what_others_take():
    machine = FakeMachine(cpus=4)
    budget = budget_for(machine, threads=4)
    drive(budget, machine, 1.0, ours=4.0)
    assert budget.threads() == 4
    drive(budget, machine, 3.0, ours=2.2, others=1.8)
    assert budget.threads() == 2
    drive(budget, machine, 3.0, ours=2.0, others=2.0)
    assert budget.threads() == 2
    drive(budget, machine, 3.0, ours=3.0, others=0.0)
    assert budget.threads() == 4


def test_resamples_lazily_at_most_once_per_window():
    machine = FakeMachine()
    budget = budget_for(machine)
    for _ in range(1000):
        budget.threads()
    assert machine.stat_reads == 1
    drive(budget, machine, 1.0, step=0.01, ours=2.0)
    assert 4 <= machine.stat_reads <= 6


def test_fixed_policy_never_reads_proc_stat():
    machine = FakeMachine()
    budget = budget_for(machine, policy="fixed")
    assert set(drive(budget, machine, 3.0, ours=1.0, others=1.0)) == {2}
    assert machine.stat_reads == 0


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="adaptive, fixed"):
        CpuBudget(2, "sometimes")


def test_concurrent_callers_get_a_count_and_sample_once():
    machine = FakeMachine()
    budget = budget_for(machine)
    results = []
    threads = [threading.Thread(target=lambda: results.append(budget.threads())) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [2] * 16 and machine.stat_reads == 1


def test_background_sampler_keeps_the_estimate_fresh_while_idle():
    """No calls while the service idles; the first call after a neighbour arrived already
    has the answer (the lazy mode would average over the whole idle gap)."""
    machine = FakeMachine()
    budget = CpuBudget(2, window_s=0.005, tau_s=0.5, read_stat=machine.stat, cpu_time=machine.cpu_time,
                       clock=machine.clock, read_limits=limits_of())
    try:
        assert budget.threads() == 2          # starts the sampler
        eventually(lambda: machine.stat_reads >= 2, "a second /proc/stat read")
        for _ in range(20):                   # 20 minutes of quiet idling, then a neighbour for 2 s
            reads = machine.stat_reads
            machine.run(60.0, others=0.02)
            eventually(lambda: machine.stat_reads > reads, "another /proc/stat read")
        for _ in range(8):
            reads = machine.stat_reads
            machine.run(0.25, others=1.0)
            eventually(lambda: machine.stat_reads > reads, "another /proc/stat read")
        assert budget.threads() == 1
        for _ in range(12):                   # it leaves
            reads = machine.stat_reads
            machine.run(0.25, others=0.0)
            eventually(lambda: machine.stat_reads > reads, "another /proc/stat read")
        assert budget.threads() == 2
    finally:
        budget.close()
    sampler = budget._sampler
    assert sampler is not None
    eventually(lambda: not sampler.is_alive(), "the sampler thread ended")


def test_sampler_restarts_in_a_forked_child():
    machine = FakeMachine()
    budget = CpuBudget(2, window_s=0.005, read_stat=machine.stat, cpu_time=machine.cpu_time, clock=machine.clock,
                       read_limits=limits_of())
    try:
        budget.threads()
        first = budget._sampler
        budget._after_fork_in_child()       # what os.register_at_fork runs in the child
        assert budget._sampler is None
        budget.threads()
        assert budget._sampler is not None and budget._sampler is not first
    finally:
        budget.close()
    eventually(lambda: not budget._sampler.is_alive() and not first.is_alive(), "both sampler threads ended")


# ---------------------------------------------------------------- failures fall back to the cap

@pytest.mark.parametrize("text", ["", "garbage\n", "cpu  1 2\n", "cpu  a b c d e\n", "intr 5\n"])
def test_malformed_proc_stat_falls_back_to_the_cap(text):
    machine = FakeMachine()
    good = True

    def stat():
        return machine.stat() if good else text

    budget = CpuBudget(2, window_s=0.25, read_stat=stat, cpu_time=machine.cpu_time, clock=machine.clock,
                       read_limits=limits_of(), background=False)
    drive(budget, machine, 3.0, ours=1.0, others=1.0)
    assert budget.threads() == 1
    good = False
    machine.run(0.3, ours=1.0, others=1.0)
    assert budget.threads() == 2
    assert budget.state().others is None


def test_missing_proc_stat_falls_back_to_the_cap():
    machine = FakeMachine()

    def stat():
        raise FileNotFoundError("/proc/stat")

    budget = CpuBudget(2, window_s=0.25, read_stat=stat, cpu_time=machine.cpu_time, clock=machine.clock,
                       read_limits=limits_of(), background=False)
    assert set(drive(budget, machine, 2.0, ours=1.0, others=1.0)) == {2}


def test_clock_or_counters_going_backwards_change_nothing():
    machine = FakeMachine()
    budget = budget_for(machine)
    drive(budget, machine, 1.0, ours=2.0)
    machine.busy = [b - 500 for b in machine.busy]   # a counter reset
    machine.run(0.3, ours=2.0)
    assert budget.threads() == 2
    assert set(drive(budget, machine, 1.0, ours=2.0)) == {2}


# ---------------------------------------------------------------- the hard cap

def files(mapping: dict[str, str]):
    def read_text(path: str) -> str:
        try:
            return mapping[path]
        except KeyError:
            raise FileNotFoundError(path) from None
    return read_text


def test_cgroup_v2_quota_in_a_container():
    read = files({"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "150000 100000\n"})
    assert cgroup_cpu_quota(read) == 1.5


def test_cgroup_v2_unlimited_and_nested_limits_take_the_smallest():
    read = files({
        "/proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
        "/sys/fs/cgroup/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/kubepods/pod1/cpu.max": "300000 100000\n",
        "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "200000 50000\n",
    })
    assert cgroup_cpu_quota(read) == 3.0
    assert cgroup_cpu_quota(files({"/proc/self/cgroup": "0::/\n", "/sys/fs/cgroup/cpu.max": "max 100000\n"})) is None


def test_cgroup_v1_quota():
    read = files({
        "/proc/self/cgroup": "4:memory:/x\n2:cpu,cpuacct:/\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_quota(read) == 0.5
    unlimited = files({
        "/proc/self/cgroup": "1:cpu:/\n",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_quota(unlimited) is None


@pytest.mark.parametrize("content", ["", "lots 100000", "150000 zero", "0 100000", "-5 100000", "150000 0"])
def test_malformed_cgroup_files_mean_no_quota(content):
    read = files({"/proc/self/cgroup": "garbage\n", "/sys/fs/cgroup/cpu.max": content,
                  "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": content, "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "x"})
    assert cgroup_cpu_quota(read) is None


def test_no_cgroup_files_at_all_mean_no_quota():
    assert cgroup_cpu_quota(files({})) is None


@pytest.mark.parametrize("configured, cpus, quota, cap", [
    (2, 2, None, 2),
    (8, 2, None, 2),     # --threads beyond the CPUs we may use
    (1, 2, None, 1),
    (2, 2, 1.5, 1),      # a fractional quota is rounded down: spinning threads burn quota waiting
    (4, 4, 2.0, 2),
    (4, 4, 2.99, 2),
    (2, 2, 0.5, 1),      # never below one thread
    (0, 2, None, 1),
])
def test_hard_cap(configured, cpus, quota, cap):
    assert Limits(configured, frozenset(range(cpus)), quota).cap == cap


def test_quota_caps_the_adaptive_estimate_too():
    machine = FakeMachine(cpus=4)
    budget = budget_for(machine, threads=4, quota=1.5)
    assert budget.cap == 1
    assert set(drive(budget, machine, 2.0, ours=1.0)) == {1}


def test_read_limits_survives_unreadable_everything():
    limits = read_limits(3, read_text=files({}), affinity=lambda: None)
    assert limits.quota is None and limits.cpus is None and limits.cap == 3


def test_limits_are_reread_now_and_then():
    machine = FakeMachine()
    quota = [None]
    budget = CpuBudget(2, window_s=0.25, read_stat=machine.stat, cpu_time=machine.cpu_time, clock=machine.clock,
                       read_limits=lambda c: Limits(c, frozenset({0, 1}), quota[0]), limits_refresh_s=10,
                       background=False)
    assert budget.threads() == 2
    quota[0] = 1.0
    drive(budget, machine, 11, step=0.5, ours=1.0)
    assert budget.cap == 1 and budget.threads() == 1


# ---------------------------------------------------------------- parsing and the rule

def test_parse_proc_stat_sums_only_our_cpus():
    text = ("cpu  100 0 100 800 0 0 0 0 0 0\n"
            "cpu0 10 0 10 80 0 0 0 0 0 0\ncpu1 90 0 90 720 0 0 0 0 0 0\n"
            "cpu2 0 0 0 0 0 0 0 0 0 0\n")
    assert parse_proc_stat(text, frozenset({0})) == (20, 100, 1)
    assert parse_proc_stat(text, None) == (200, 1000, 3)
    assert parse_proc_stat(text, frozenset({0, 1, 2})) == (200, 1000, 3)
    # steal is busy, iowait is idle, guest (already in user) is not counted twice
    assert parse_proc_stat("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\n", None) == (27, 36, 1)
    # an old kernel's four fields
    assert parse_proc_stat("cpu 5 0 5 90\n", frozenset({0, 1})) == (10, 100, 2)


@pytest.mark.parametrize("current, available, cap, expected", [
    (2, 1.95, 2, 2),
    (2, 1.55, 2, 2),
    (2, 1.45, 2, 1),   # others took more than half a core: drop
    (2, 1.33, 2, 1),
    (1, 1.0, 2, 1),
    (1, 1.5, 2, 1),    # not yet: rise needs 1.55
    (1, 1.55, 2, 2),   # 2 threads beat 1 beside up to ~0.5 of a core taken (measured)
    (1, 3.9, 4, 4),
    (1, 3.5, 4, 3),
    (4, 0.1, 4, 1),
    (3, 5.0, 2, 2),    # never above the cap
])
def test_decide_has_hysteresis(current, available, cap, expected):
    assert decide(current, available, cap) == expected


def test_shared_budget_is_one_per_cap_and_policy():
    a = cpu_budget.shared_budget(2, "adaptive")
    assert cpu_budget.shared_budget(2, "adaptive") is a
    assert cpu_budget.shared_budget(2, "fixed") is not a
    assert 1 <= a.threads() <= 2
