"""Memory and CPU of processes, read from /proc (Linux).

* :class:`PeakMemory` - peak summed RSS of some processes and all their descendants.
* :class:`CpuAudit` - CPU used meanwhile by processes that are neither the systems under
  test nor this one: a contaminated measurement shows in the numbers, not only suspected.
* :func:`cpu_busy_fraction` - how busy the whole machine is, over a short window.
* :class:`CpuSeconds` - CPU-seconds used by groups of processes (each with its descendants).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterable, Optional


def _cpu_times() -> tuple[int, int]:
    """(all, idle + iowait) clock ticks of the whole machine since boot."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values[:8]), values[3] + values[4]


def cpu_busy_fraction(seconds: float = 1.0) -> Optional[float]:
    """Share of all cores busy over ``seconds`` (0..1); None where /proc/stat is unreadable."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(seconds)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return round(1.0 - (i1 - i0) / max(1, t1 - t0), 3)


def proc_ticks(pid: int) -> int:
    """utime + stime of one process (all its threads), in clock ticks; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def tree_ticks(pids: Iterable[int]) -> int:
    """Clock ticks used so far by ``pids`` and their live descendants, with what each has
    reaped of its children (cutime + cstime): a worker that exits and is waited for by its
    parent in the tree keeps counting, so the difference of two readings is the tree's CPU
    in between."""
    total = 0
    for pid in process_tree(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15])
        except (OSError, IndexError, ValueError):
            pass  # gone meanwhile: its parent's cutime has it once reaped
    return total


def _parent(pid: str) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _children(pid: int) -> list[int]:
    """Direct children: /proc/PID/task/*/children, else (kernels without it) a scan of /proc."""
    kids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    try:
        for tid in tids:
            kids.extend(int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    except FileNotFoundError:
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(p) == pid]
    except OSError:
        pass  # a thread that ended meanwhile
    return kids


def process_tree(pids: Iterable[int], max_procs: int = 256) -> list[int]:
    """The given processes and all their descendants."""
    out: list[int] = []
    todo = list(pids)
    while todo and len(out) < max_procs:
        p = todo.pop()
        if p not in out:
            out.append(p)
            todo.extend(_children(p))
    return out


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakMemory:
    """Summed RSS of ``pids`` and their descendants: at the start, and the peak of samples
    taken every ``interval_s`` by a background thread (at most ``max_seconds``).

        with PeakMemory(service_pid, edge_pid) as mem: ...
        mem.start_mb, mem.peak_mb
    """

    def __init__(self, *pids: int, interval_s: float = 0.05, max_seconds: float = 3600.0):
        self.pids = list(pids)
        self.interval_s = interval_s
        self.max_seconds = max_seconds
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float:
        mb = sum(rss_kb(p) for p in process_tree(self.pids)) / 1024.0
        self.peak_mb = max(self.peak_mb, mb)
        return mb

    def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self._stop.wait(self.interval_s) and time.monotonic() < end:
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self.start_mb = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()


class CpuAudit:
    """CPU used by processes other than ``pids`` (and their descendants) and this process
    while the block ran, in percent of all cores.

        with CpuAudit(server_pid) as cpu: ...
        cpu.result() -> {"busy_pct", "ours_pct", "foreign_pct", "wall_s"}
    """

    def __init__(self, *pids: int):
        self.pids = list(pids)
        self._ours: dict[int, int] = {}

    def _snap_ours(self) -> None:
        for p in process_tree(self.pids) + [os.getpid()]:
            self._ours[p] = max(self._ours.get(p, 0), proc_ticks(p))

    def __enter__(self) -> "CpuAudit":
        self.t0, self.i0 = _cpu_times()
        self._snap_ours()
        self._ours0 = dict(self._ours)
        self.w0 = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self._snap_ours()
        self.t1, self.i1 = _cpu_times()
        self.w1 = time.monotonic()

    def result(self) -> dict:
        total = max(1, self.t1 - self.t0)
        busy = total - (self.i1 - self.i0)
        ours = min(busy, sum(v - self._ours0.get(p, 0) for p, v in self._ours.items()))
        return {
            "busy_pct": round(100.0 * busy / total, 1),
            "ours_pct": round(100.0 * ours / total, 1),
            "foreign_pct": round(100.0 * max(0, busy - ours) / total, 1),
            "wall_s": round(self.w1 - self.w0, 1),
        }


class CpuSeconds:
    """CPU-seconds (user + system) each named group of processes, with its descendants, used
    while the block ran. The groups should not overlap.

        with CpuSeconds(service=[service_pid], edge=[gunicorn_master_pid]) as cpu: ...
        cpu.seconds -> {"service": 21.3, "edge": 0.7}
    """

    def __init__(self, **groups: Iterable[int]):
        self.groups = {name: list(pids) for name, pids in groups.items()}
        self.seconds: dict[str, float] = {}

    def _read(self) -> dict[str, int]:
        return {name: tree_ticks(pids) for name, pids in self.groups.items()}

    def __enter__(self) -> "CpuSeconds":
        self._start = self._read()
        return self

    def __exit__(self, *exc) -> None:
        end, hz = self._read(), os.sysconf("SC_CLK_TCK")
        self.seconds = {name: max(0, end[name] - self._start[name]) / hz for name in self.groups}
