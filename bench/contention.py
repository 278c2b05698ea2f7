"""`make bench-contention`: single-stream decode speed with and without a busy neighbour.

Systems, on the same GGUF file (`python -m inference_service path`), all started up front:

* ours through gRPC: ``--thread-policy adaptive`` (the default), ``--thread-policy fixed``
  at --threads (the behaviour before the adaptive policy), and ``fixed`` at 1 thread (the
  one-core reference);
* llama.cpp's ``llama-server`` at ``-t 2`` and ``-t 1``, built from the llama.cpp that the
  pinned llama-cpp-python sdist vendors (``bash bench/install_peer.sh llama-server``).

Phases: quiet (--repeats greedy streams of --max-tokens tokens, end of turn banned by
logit_bias, systems round-robin with --gap seconds between streams, so drift touches all
alike and one server's stream is not a neighbour to the next); two concurrent streams,
quiet (aggregate tok/s); busy (the same single streams while ``python -c "while True:
pass"`` runs beside, started and killed here); after (quiet again: does it recover?). A
collapsed busy stream is cut at --stream-timeout, its rate taken from the tokens it made;
a system stops repeating busy streams after --busy-budget seconds.

Timing as in every bench row (bench/measure.py): the clock starts at the call, decode tok/s
= (tokens - 1) / (t_last - t_first); the table shows medians. One table on stdout;
bench/results/contention.{txt,json} keep it, bench/results/contention-*.log the servers'
logs (ours log every thread-count change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench import prompts  # noqa: E402
from bench.measure import Stream, aggregate_tps, concurrent, time_pieces  # noqa: E402
from bench.procfs import CpuAudit, cpu_busy_fraction  # noqa: E402
from bench.prompts import MODEL  # noqa: E402
from bench.sse import chat_stream  # noqa: E402
from harness import processes  # noqa: E402
from harness.processes import stop_process  # noqa: E402

RESULTS = REPO / "bench" / "results"
LLAMA_SERVER = REPO / "bench" / ".build" / "llama-build" / "bin" / "llama-server"


def cut(stream: Stream) -> bool:
    """Stopped at the time limit (a collapsed system), as opposed to failed."""
    error = stream.error or ""
    return "DEADLINE_EXCEEDED" in error or error.startswith(("timeout", "ReadTimeout"))


@dataclass
class System:
    name: str
    kind: str                      # "ours" | "llama"
    args: list[str]
    results: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- clients

class OursClient:
    def __init__(self, address: str):
        from inference_service.v1 import inference_pb2 as pb
        from inference_service.v1 import inference_pb2_grpc as pb_grpc

        self.pb = pb
        channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.InferenceServiceStub(channel)
        self.bias = prompts.no_eos_bias(prompts.end_of_turn_ids_over_grpc(channel))

    def stream(self, nonce: str, max_tokens: int, limit_s: float) -> Stream:
        pb = self.pb
        request = pb.GenerateRequest(
            model=MODEL, messages=[pb.ChatMessage(role="user", content=prompts.story(nonce))],
            max_tokens=max_tokens, temperature=0.0, logit_bias=self.bias)
        return time_pieces(lambda: self.stub.Generate(request, timeout=limit_s), lambda piece: len(piece.token_ids))


class LlamaClient:
    def __init__(self, base_url: str, bias: dict[int, float]):
        self.base_url = base_url
        self.bias = {str(k): v for k, v in bias.items()}

    def stream(self, nonce: str, max_tokens: int, limit_s: float) -> Stream:
        return chat_stream(self.base_url, MODEL, [{"role": "user", "content": prompts.story(nonce)}], max_tokens,
                           timeout_s=limit_s, extra={"logit_bias": self.bias})


# ---------------------------------------------------------------- processes

def start(system: System, model_path: Path, bias: dict[int, float] | None):
    """(process, client) of a started system; SystemExit with its log's tail if it fails."""
    log_path = RESULTS / f"contention-{system.name.replace(' ', '_')}.log"
    try:
        if system.kind == "ours":
            service = processes.start_service(log_path, "--log-level", "INFO", *system.args)
            return service.process, OursClient(service.address)
        port = processes.free_port()
        argv = [str(LLAMA_SERVER), "-m", str(model_path), "--host", "127.0.0.1", "--port", str(port),
                "-a", MODEL, "-c", "8192", "-np", "2", "--no-webui", *system.args]
        server = processes.start_http_server(argv, f"http://127.0.0.1:{port}", log_path, ready_path="/health")
        return server.process, LlamaClient(server.base_url, bias or {})
    except RuntimeError as error:
        raise SystemExit(f"{system.name} did not start: {error}") from None


class BusyNeighbour:
    """``python -c "while True: pass"``: one process that wants a whole core."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True,
                                     stdin=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait(10)


class ThreadLog:
    """The 'compute threads a -> b' lines one of our services logged, phase by phase."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def since_last(self) -> list[str]:
        data = self.path.read_bytes()
        text = data[self.offset:].decode(errors="replace")
        self.offset = len(data)
        return [line.split("compute threads ", 1)[1].split(":", 1)[0]
                for line in text.splitlines() if "compute threads " in line and " -> " in line]


# ---------------------------------------------------------------- phases

def summarise(runs: list[Stream]) -> dict:
    rates = [r.decode_tps or 0.0 for r in runs]
    return {
        "tps": statistics.median(rates) if rates else 0.0,
        "first_tps": rates[0] if rates else 0.0,
        "runs": len(runs),
        "cut": sum(cut(r) for r in runs),
        "ttft_ms": statistics.median((r.ttft_s or 0.0) * 1000 for r in runs) if runs else 0.0,
        "all_tps": [round(x, 1) for x in rates],
    }


def interleaved(running: list, label: str, args, budget_s: float | None = None) -> dict[str, list[Stream]]:
    """--repeats single streams per system, round-robin (the order reversed every round) so
    that a drift in the machine's speed touches every system alike. With ``budget_s`` a
    system stops repeating once its streams took that long (a collapsed system)."""
    runs: dict[str, list[Stream]] = {s.name: [] for s, _, _ in running}
    spent = {s.name: 0.0 for s, _, _ in running}
    foreign: dict[str, list[float]] = {s.name: [] for s, _, _ in running}
    order = list(running)
    for i in range(args.repeats):
        for system, proc, client in order:
            if budget_s is not None and runs[system.name] and spent[system.name] > budget_s:
                continue
            t0 = time.monotonic()
            with CpuAudit(proc.pid) as audit:
                stream = client.stream(f"{label}{i}-{time.time_ns()}", args.max_tokens, args.stream_timeout)
            if stream.error is not None and not cut(stream):
                raise SystemExit(f"{system.name}: a {label} stream failed: {stream.error}")
            spent[system.name] += time.monotonic() - t0
            foreign[system.name].append(audit.result()["foreign_pct"])
            runs[system.name].append(stream)
            # A quiet gap: the previous stream was a neighbour to every other server (and the
            # adaptive one would rightly see it); a cut stream needs time to stop.
            time.sleep(3.0 if cut(stream) else args.gap)
        order.reverse()
    for system, _, _ in running:
        system.results.setdefault("others_pct", {})[label] = max(foreign[system.name] or [0.0])
    return runs


def run_all(systems: list[System], model_path: Path, args) -> None:
    running = []   # (system, proc, client)
    logs: dict[str, ThreadLog] = {}
    bias = None
    try:
        for system in systems:
            print(f"starting {system.name} ...", flush=True)
            proc, client = start(system, model_path, bias)
            if system.kind == "ours":
                logs[system.name] = ThreadLog(RESULTS / f"contention-{system.name.replace(' ', '_')}.log")
                bias = client.bias  # the end-of-turn ids, from our Tokenize, for llama-server too
            client.stream("warm", 8, args.stream_timeout)
            running.append((system, proc, client))

        def note(phase: str) -> None:
            for name, thread_log in logs.items():
                changes = thread_log.since_last()
                down = sum(int(a) > int(b) for a, b in (c.split(" -> ") for c in changes))
                summary = f"{down} down, {len(changes) - down} up" if changes else "no change"
                if changes and len(changes) <= 4:
                    summary += f" ({', '.join(changes)})"
                next(s for s in systems if s.name == name).notes.append(f"{phase}: {summary}")

        time.sleep(args.gap)  # the servers' start-ups and warm-ups were neighbours too
        print("quiet ...", flush=True)
        quiet = interleaved(running, "quiet", args)
        note("quiet")
        print("two concurrent streams, quiet ...", flush=True)
        for system, _, client in running:
            streams = concurrent(lambda i: client.stream(f"c{i}-{time.time_ns()}", args.max_tokens * 2,
                                                         args.stream_timeout), 2)
            system.results["agg2"] = aggregate_tps(streams) or 0.0
            time.sleep(args.gap)
        note("2 streams")
        print("busy: one `python -c \"while True: pass\"` beside ...", flush=True)
        with BusyNeighbour():  # no pause: the first system's first busy stream includes its reaction
            busy = interleaved(running, "busy", args, budget_s=args.busy_budget)
        note("busy")
        print("after (neighbour gone) ...", flush=True)
        time.sleep(1.0)
        after = interleaved(running, "after", args)
        note("after")
        for system, _, _ in running:
            system.results.update(quiet=summarise(quiet[system.name]), busy=summarise(busy[system.name]),
                                  after=summarise(after[system.name]))
    finally:
        for _, proc, _ in running:
            stop_process(proc)


# ---------------------------------------------------------------- report

def table(systems: list[System], args) -> str:
    head = (f"{'system':22s} {'quiet':>7s} {'busy':>7s} {'busy/quiet':>10s} {'1st busy':>8s} "
            f"{'after':>7s} {'2 streams':>9s} {'others % q/b/a':>14s}")
    out = [f"decode tok/s: median of {args.repeats} greedy {args.max_tokens}-token streams, systems interleaved; "
           f"busy = one `python -c \"while True: pass\"` beside the server;",
           "1st busy = the first stream after it started (for the first system, ours adaptive, it starts with that "
           "stream: the reaction is in it); after = quiet again once it is killed; "
           f"2 streams = aggregate of two concurrent {args.max_tokens * 2}-token streams, quiet;",
           "others % q/b/a = most CPU (% of all cores) other processes used during one stream of the quiet/busy/after "
           "phase: ~0/50/0 on a quiet machine (the busy neighbour is one core); more means a contaminated run",
           "", head, "-" * len(head)]
    for s in systems:
        r = s.results
        if "quiet" not in r:
            out.append(f"{s.name:22s} not measured")
            continue
        q, b, a = r["quiet"]["tps"], r["busy"]["tps"], r["after"]["tps"]
        others = "/".join(f"{r['others_pct'][phase]:.0f}" for phase in ("quiet", "busy", "after"))
        cuts = f"  ({r['busy']['cut']} of {r['busy']['runs']} busy streams cut at {args.stream_timeout:.0f} s)" \
            if r["busy"]["cut"] else ""
        out.append(f"{s.name:22s} {q:7.1f} {b:7.1f} {b / q if q else 0:10.2f} {r['busy']['first_tps']:8.1f} "
                   f"{a:7.1f} {r['agg2']:9.1f} {others:>14s}{cuts}")
    by = {s.name: s.results for s in systems if "quiet" in s.results}
    adaptive = by.get("ours adaptive")
    fixed = by.get(f"ours fixed {args.threads}")
    one = by.get("ours fixed 1")
    out.append("")
    if adaptive and fixed:
        out.append(f"ours adaptive / ours fixed {args.threads}:  quiet single stream "
                   f"{adaptive['quiet']['tps'] / fixed['quiet']['tps']:.3f}   two streams "
                   f"{adaptive['agg2'] / fixed['agg2']:.3f}   busy {adaptive['busy']['tps']:.1f} vs "
                   f"{fixed['busy']['tps']:.1f} tok/s")
    if adaptive:
        out.append(f"ours adaptive busy / its quiet: {adaptive['busy']['tps'] / adaptive['quiet']['tps']:.2f} "
                   "(aim >= 0.70)")
    if adaptive and one:
        out.append(f"ours adaptive busy / ours fixed 1 quiet: {adaptive['busy']['tps'] / one['quiet']['tps']:.2f} "
                   "(one core's worth is the most a process gets beside a busy one on 2 cores)")
    if any(s.notes for s in systems):
        out.append("thread-count changes our services logged, by phase (while one server streams, it is "
                   "a neighbour to the others: an idle adaptive server rightly steps down and back up):")
    for s in systems:
        if s.notes:
            out.append(f"  {s.name}: " + "; ".join(s.notes))
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2,
                        help="ours: --threads of the adaptive and fixed rows; llama-server: the larger -t")
    parser.add_argument("--stream-timeout", type=float, default=40.0)
    parser.add_argument("--busy-budget", type=float, default=60.0,
                        help="seconds after which the busy phase stops repeating (a collapsed system)")
    parser.add_argument("--gap", type=float, default=2.0,
                        help="seconds of quiet between two streams (each server is the others' neighbour)")
    parser.add_argument("--only", default="", help="comma-separated system names to run (default all)")
    parser.add_argument("--skip-llama", action="store_true")
    args = parser.parse_args(argv)

    from inference_service.models.registry import ModelRegistry

    model_path = ModelRegistry().pull(MODEL)  # the GGUF as shipped (= `python -m inference_service path`)
    RESULTS.mkdir(parents=True, exist_ok=True)
    t = args.threads
    systems = [
        System("ours adaptive", "ours", ["--threads", str(t), "--thread-policy", "adaptive"]),
        System(f"ours fixed {t}", "ours", ["--threads", str(t), "--thread-policy", "fixed"]),
        System("ours fixed 1", "ours", ["--threads", "1", "--thread-policy", "fixed"]),
    ]
    if not args.skip_llama:
        if not LLAMA_SERVER.exists():
            raise SystemExit(f"{LLAMA_SERVER} missing: run `bash bench/install_peer.sh llama-server` first")
        systems += [System(f"llama-server -t {t}", "llama", ["-t", str(t), "-tb", str(t)]),
                    System("llama-server -t 1", "llama", ["-t", "1", "-tb", "1"])]
    if args.only:
        wanted = {w.strip() for w in args.only.split(",")}
        systems = [s for s in systems if s.name in wanted]
    if any(s.kind == "llama" for s in systems) and systems[0].kind != "ours":
        raise SystemExit("llama-server rows need one of ours first (its Tokenize gives the end-of-turn ids)")
    busy = cpu_busy_fraction(1.0)
    print(f"machine busy before the run: {busy * 100 if busy is not None else float('nan'):.0f}% of "
          f"{os.cpu_count()} cores (should be ~0)", flush=True)
    run_all(systems, Path(model_path), args)
    report = table(systems, args)
    print()
    print(report)
    (RESULTS / "contention.txt").write_text(report + "\n")
    (RESULTS / "contention.json").write_text(json.dumps(
        {"args": vars(args), "systems": {s.name: {**s.results, "notes": s.notes} for s in systems}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
