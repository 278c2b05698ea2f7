"""`make bench-paired`: ours against llama-server, workload by workload, in pairs seconds apart.

`make bench-engines` launches one system after another, minutes apart; this machine's speed
drifts by ±10% over minutes, within one process as much as between launches, so a 5%
difference between two systems there is not a measurement. Here every system is up at once
and idle while another one works:

* ours through the edge (HTTP SSE, the OpenAI path) and over gRPC to the same service
  (llama.cpp engine, --slots slots, --threads compute threads, fixed thread policy);
* llama.cpp's ``llama-server -np <slots>`` (bench/install_peer.sh llama-server) on the same
  GGUF and threads;
* with --in-process, ours on ``Engine`` in this process (no transport at all);
* with --baseline DIR, a second service and edge from another checkout (a git worktree of an
  older commit), over gRPC and through that edge: a code change measured in pairs;
* with --drafts, a second service of this checkout with ``--speculative ngram`` (prompt-lookup
  drafts) through its own edge: what drafts win on the edit and cost on free text.

Workloads (--workloads): ``single``, one greedy --max-tokens stream (end of generation
banned): decode tok/s; ``four``, four such streams at once: aggregate tok/s; ``cold``, a
~1,000-token chat history no cache holds (bench/prompts.chat_history, 8 tokens out): TTFT;
``edit``, one greedy stream asked to repeat a ~250-token paragraph with one word replaced (end of
generation allowed, as bench-engines' edit): decode tok/s, where drafts pay; ``json``, an answer
constrained by bench-engines' pet schema (response_format json_schema, temperature 0.7, seed
1000 + repeat): decode tok/s, and with ``single`` each system's JSON over free-text rate.

Each repeat runs every workload on every system, the systems' order reversed every repeat
(A B C, C B A, ...), --gap seconds apart so that one server's spinning threads are not the
next one's neighbour. A repeat's ratios compare runs seconds apart; each table shows their
median and quartiles: a ratio whose quartiles both lie on one side of 1.0 is a real
difference. CPU per 1,000 tokens (single and four) is each system's process trees (service
+ gunicorn master and workers; llama-server; this process for in-process) over its own runs,
from /proc ticks.

    python bench/paired.py --repeats 12
    python bench/paired.py --workloads single --repeats 16 --baseline /tmp/old-worktree
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench import prompts  # noqa: E402
from bench.measure import Stream, aggregate_tps, concurrent, percentile, successes, time_pieces  # noqa: E402
from bench.procfs import CpuSeconds, cpu_busy_fraction  # noqa: E402
from bench.prompts import MODEL  # noqa: E402
from bench.servers import start_edge, start_llama_server, start_service  # noqa: E402
from bench.sse import chat_stream  # noqa: E402
from harness.processes import stop_process  # noqa: E402

RESULTS = REPO / "bench" / "results"
REFERENCE = "llama-server"
DRAFTS = "ours + drafts, edge"
COLD_HISTORY_TOKENS = 1000
COLD_MAX_TOKENS = 8

# (messages, max_tokens, Shape) -> one stream
Streamer = Callable[..., Stream]


@dataclass(frozen=True)
class Shape:
    """How a workload's requests sample: greedy with end of generation banned (exactly
    max_tokens out) unless it says otherwise."""

    ban_end: bool = True
    temperature: float = 0.0
    seed: int | None = None
    json_schema: dict | None = None  # response_format json_schema


FREE_TEXT = Shape()


@dataclass
class System:
    name: str
    stream: Streamer
    pids: list[int]                                             # process trees whose CPU is this system's
    values: dict[str, list[float]] = field(default_factory=dict)  # workload -> one value a repeat
    cpu_s: float = 0.0
    tokens: int = 0


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str
    higher_is_better: bool
    run: Callable[[System, int, "argparse.Namespace"], tuple[float, int]]  # (system, repeat, args) -> (value, tokens)


def fresh(repeat: int) -> str:
    """A nonce no earlier prompt had: no cache holds a prompt made with it."""
    return f"p{repeat}-{time.time_ns()}"


def single(system: System, repeat: int, args) -> tuple[float, int]:
    s = system.stream([{"role": "user", "content": prompts.story(fresh(repeat))}], args.max_tokens)
    check(system, "single", [s], args.max_tokens)
    return s.decode_tps or 0.0, s.completion_tokens


def four(system: System, repeat: int, args) -> tuple[float, int]:
    nonce = fresh(repeat)
    streams = concurrent(lambda i: system.stream([{"role": "user", "content": prompts.story(f"{nonce}-{i}")}],
                                                 args.max_tokens), 4)
    check(system, "four", streams, args.max_tokens)
    return aggregate_tps(streams) or 0.0, sum(s.completion_tokens for s in streams)


def cold(system: System, repeat: int, args) -> tuple[float, int]:
    s = system.stream(prompts.chat_history(COLD_HISTORY_TOKENS, fresh(repeat)), COLD_MAX_TOKENS)
    check(system, "cold", [s])
    return (s.ttft_s or 0.0) * 1000, 0  # its few tokens stay out of the CPU-per-token count


def edit(system: System, repeat: int, args) -> tuple[float, int]:
    s = system.stream(prompts.edit_messages(), args.edit_max_tokens, Shape(ban_end=False))
    check(system, "edit", [s])
    return s.decode_tps or 0.0, 0  # greedy, the same answer every time: out of the CPU-per-token count


def json_answer(system: System, repeat: int, args) -> tuple[float, int]:
    # the same seed for every system of a repeat
    shape = Shape(ban_end=False, temperature=prompts.JSON_TEMPERATURE, seed=prompts.JSON_SEED + repeat,
                  json_schema=prompts.PET_SCHEMA)
    s = system.stream(prompts.json_messages(), prompts.JSON_MAX_TOKENS, shape)
    check(system, "json", [s])
    return s.decode_tps or 0.0, 0


WORKLOADS = {
    "single": Workload("single", "decode tok/s", True, single),
    "four": Workload("four", "aggregate tok/s, 4 streams", True, four),
    "cold": Workload("cold", f"TTFT ms, cold ~{COLD_HISTORY_TOKENS}-token chat", False, cold),
    "edit": Workload("edit", "edit decode tok/s", True, edit),
    "json": Workload("json", "JSON-schema answer decode tok/s", True, json_answer),
}


def check(system: System, workload: str, streams: list[Stream], tokens: int | None = None) -> None:
    _, failed = successes(streams, tokens)
    if failed:
        raise SystemExit(f"{system.name}: a {workload} run failed: {failed[0]}")


# ---------------------------------------------------------------- clients

def grpc_streamer(address: str, bias: dict[int, float]) -> Streamer:
    from inference_service.v1 import inference_pb2 as pb
    from inference_service.v1 import inference_pb2_grpc as pb_grpc

    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))

    def stream(messages: list[dict], max_tokens: int, shape: Shape = FREE_TEXT) -> Stream:
        request = pb.GenerateRequest(model=MODEL, messages=[pb.ChatMessage(role=m["role"], content=m["content"])
                                                            for m in messages],
                                     max_tokens=max_tokens, temperature=shape.temperature,
                                     logit_bias=bias if shape.ban_end else {}, seed=shape.seed,
                                     constraint=pb.Constraint(json_schema=json.dumps(shape.json_schema))
                                     if shape.json_schema else None)
        return time_pieces(lambda: stub.Generate(request, timeout=600), lambda piece: len(piece.token_ids))
    return stream


def engine_streamer(engine, bias: dict[int, float]) -> Streamer:
    from inference_service.engine.types import ChatMessage, Constraint, GenerationRequest, SamplingParams

    def stream(messages: list[dict], max_tokens: int, shape: Shape = FREE_TEXT) -> Stream:
        sampling = SamplingParams(temperature=shape.temperature, seed=shape.seed,
                                  logit_bias=bias if shape.ban_end else {})
        constraint = Constraint("json_schema", json.dumps(shape.json_schema)) if shape.json_schema else None
        request = GenerationRequest(model=MODEL, messages=tuple(ChatMessage(m["role"], m["content"]) for m in messages),
                                    max_tokens=max_tokens, sampling=sampling, constraint=constraint)
        return time_pieces(lambda: engine.generate(request), lambda chunk: len(chunk.token_ids))
    return stream


def http_streamer(base_url: str, bias: dict[int, float]) -> Streamer:
    extra = prompts.http_bias(bias)

    def stream(messages: list[dict], max_tokens: int, shape: Shape = FREE_TEXT) -> Stream:
        body = dict(extra) if shape.ban_end else {}
        if shape.json_schema:
            body["response_format"] = prompts.json_response_format(shape.json_schema)
        return chat_stream(base_url, MODEL, messages, max_tokens, temperature=shape.temperature, seed=shape.seed,
                           extra=body)
    return stream


# ---------------------------------------------------------------- measuring

def run(systems: list[System], workloads: list[Workload], args) -> list[dict[str, dict[str, float]]]:
    """Per repeat {workload: {system: value}}; each system's CPU seconds and tokens summed on it."""
    for system in systems:   # warm-up, not counted
        system.stream([{"role": "user", "content": prompts.story(f"warm-{time.time_ns()}")}], 16)
    time.sleep(args.gap)
    repeats: list[dict[str, dict[str, float]]] = []
    order = list(systems)
    for i in range(args.repeats):
        row: dict[str, dict[str, float]] = {w.name: {} for w in workloads}
        for workload in workloads:
            for system in order:
                with CpuSeconds(all=system.pids) as cpu:
                    value, tokens = workload.run(system, i, args)
                row[workload.name][system.name] = value
                system.values.setdefault(workload.name, []).append(value)
                if tokens:
                    system.cpu_s += cpu.seconds["all"]
                    system.tokens += tokens
                time.sleep(args.gap)
            order.reverse()
        repeats.append(row)
        print(f"  repeat {i + 1}/{args.repeats}: " + "; ".join(
            f"{w}: " + " ".join(f"{k} {v:.1f}" for k, v in vals.items()) for w, vals in row.items()), flush=True)
    return repeats


def quartiles(values: list[float]) -> tuple[float, float, float]:
    return percentile(values, 25), percentile(values, 50), percentile(values, 75)


def fmt(q: tuple[float, float, float], digits: int) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in q)


def report(systems: list[System], workloads: list[Workload], repeats, args, busy: float | None) -> str:
    out = [f"{MODEL}, llama.cpp engine {args.slots} slots (fixed threads) vs llama-server -np {args.slots}, "
           f"{args.threads} threads; {args.repeats} repeats, systems' order reversed each time, {args.gap:.1f} s apart; "
           f"single and four: greedy {args.max_tokens}-token streams; machine "
           f"{busy * 100 if busy is not None else float('nan'):.0f}% busy before the run", ""]
    names = [s.name for s in systems]
    for w in workloads:
        head = (f"{w.unit:40s} {'q1 / median / q3':>26s}   {'/ ' + REFERENCE + ' per repeat (q1 / median / q3)':>44s}"
                f" {'better':>7s}")
        out += [head, "-" * len(head)]
        for s in systems:
            vals = s.values[w.name]
            line = f"{s.name:40s} {fmt(quartiles(vals), 1):>26s}"
            if s.name != REFERENCE:
                ratios = [r[w.name][s.name] / r[w.name][REFERENCE] for r in repeats]
                better = sum((x > 1) if w.higher_is_better else (x < 1) for x in ratios)
                line += f"   {fmt(quartiles(ratios), 3):>44s} {better:>3d}/{len(ratios):<3d}"
            out.append(line)
        out.append("")
    if any(s.tokens for s in systems):
        ref = next(s for s in systems if s.name == REFERENCE)
        ref_cpu = ref.cpu_s / ref.tokens * 1000 if ref.tokens else float("nan")
        out.append("CPU-s per 1,000 streamed tokens (single and four): " + ", ".join(
            f"{s.name} {s.cpu_s / s.tokens * 1000:.2f} ({s.cpu_s / s.tokens * 1000 / ref_cpu:.3f}x)"
            for s in systems if s.tokens))
    if "json" in repeats[0] and "single" in repeats[0]:
        out.append("JSON-schema answers over free text (json / single decode tok/s of the same repeat): " + ", ".join(
            f"{s.name} {fmt(quartiles([r['json'][s.name] / r['single'][s.name] for r in repeats]), 2)}"
            for s in systems))
    if DRAFTS in names:
        for w in workloads:
            ratios = [r[w.name][DRAFTS] / r[w.name]["ours, edge"] for r in repeats]
            out.append(f"{DRAFTS} / ours, edge (drafts on / off), {w.name}: {fmt(quartiles(ratios), 3)} "
                       f"(q1 / median / q3 of {len(ratios)} pairs)")
    if "baseline, gRPC" in names:
        for w in workloads:
            for via in ("gRPC", "edge"):
                ratios = [r[w.name][f"ours, {via}"] / r[w.name][f"baseline, {via}"] for r in repeats]
                out.append(f"ours, {via} / baseline ({args.baseline}), {via}, {w.name}: {fmt(quartiles(ratios), 3)} "
                           f"(q1 / median / q3 of {len(ratios)} pairs)")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--workloads", default="single,four,cold", help=f"comma list of {', '.join(WORKLOADS)}")
    parser.add_argument("--max-tokens", type=int, default=200, help="tokens a stream of single and four")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gap", type=float, default=1.0, help="seconds of quiet between two runs")
    parser.add_argument("--in-process", action="store_true",
                        help="also ours on Engine in this process (no gRPC): what the transport costs")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="also a service and edge from this checkout (e.g. a git worktree of an older commit), "
                             "over gRPC and the edge: a code change measured in pairs")
    parser.add_argument("--drafts", action="store_true",
                        help="also a service with --speculative ngram, through its own edge")
    parser.add_argument("--service-args", default="", help="extra `serve` arguments of our services (space-separated)")
    args = parser.parse_args(argv)
    unknown = [w for w in args.workloads.split(",") if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    workloads = [WORKLOADS[w] for w in args.workloads.split(",")]

    from inference_service.models.registry import ModelRegistry

    model_file = Path(ModelRegistry().pull(MODEL))
    args.edit_max_tokens = prompts.edit_max_tokens(model_file)
    RESULTS.mkdir(parents=True, exist_ok=True)
    busy = cpu_busy_fraction(1.0)
    print(f"machine busy before the run: {busy * 100 if busy is not None else float('nan'):.0f}% (should be ~0)",
          flush=True)
    # Fixed threads, as llama-server's: the adaptive policy (our default) rightly takes a thread
    # away while another server works beside it, and would still be stepping back up when its
    # own turn comes a --gap later.
    service_args = ["--thread-policy", "fixed", *args.service_args.split()]
    started: list = []   # processes to stop
    engine = None
    try:
        service, address = start_service(args.slots, RESULTS, args.threads, engine="llamacpp",
                                         extra_args=service_args, name="paired-service")
        started.append(service)
        edge = start_edge(address, RESULTS, "paired-edge")
        started.append(edge.process)
        llama = start_llama_server(model_file, RESULTS, args.threads, args.slots, name="paired-llama-server")
        started.append(llama.process)
        with grpc.insecure_channel(address) as channel:
            bias = prompts.no_eos_bias(prompts.end_of_turn_ids_over_grpc(channel))
        systems = [
            System("ours, edge", http_streamer(edge.base_url, bias), [service.pid, edge.process.pid]),
            System("ours, gRPC", grpc_streamer(address, bias), [service.pid, edge.process.pid]),
            System(REFERENCE, http_streamer(llama.base_url, bias), [llama.process.pid]),
        ]
        if args.baseline is not None:
            baseline, baseline_address = start_service(args.slots, RESULTS, args.threads, engine="llamacpp",
                                                       extra_args=service_args, name="paired-baseline",
                                                       cwd=args.baseline.resolve())
            started.append(baseline)
            baseline_edge = start_edge(baseline_address, RESULTS, "paired-baseline-edge", cwd=args.baseline.resolve())
            started.append(baseline_edge.process)
            systems += [
                System("baseline, edge", http_streamer(baseline_edge.base_url, bias),
                       [baseline.pid, baseline_edge.process.pid]),
                System("baseline, gRPC", grpc_streamer(baseline_address, bias), [baseline.pid, baseline_edge.process.pid]),
            ]
        if args.drafts:
            drafting, drafting_address = start_service(args.slots, RESULTS, args.threads, engine="llamacpp",
                                                       extra_args=[*service_args, "--speculative", "ngram"],
                                                       name="paired-drafts")
            started.append(drafting)
            drafting_edge = start_edge(drafting_address, RESULTS, "paired-drafts-edge")
            started.append(drafting_edge.process)
            systems.append(System(DRAFTS, http_streamer(drafting_edge.base_url, bias),
                                  [drafting.pid, drafting_edge.process.pid]))
        if args.in_process:
            from inference_service.engine.engine import Engine, EngineConfig

            engine = Engine.load([ModelRegistry().resolve(MODEL)],
                                 EngineConfig(slots=args.slots, threads=args.threads, engine="llamacpp",
                                              thread_policy="fixed"))
            engine.warm_up()
            systems.insert(0, System("ours, in process", engine_streamer(engine, bias), [os.getpid()]))
        repeats = run(systems, workloads, args)
    finally:
        if engine is not None:
            engine.close()
        for process in reversed(started):
            stop_process(process)
    text = report(systems, workloads, repeats, args, busy)
    print()
    print(text)
    (RESULTS / "paired.txt").write_text(text + "\n")
    (RESULTS / "paired.json").write_text(json.dumps({
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "repeats": repeats,
        "cpu_s_per_1k": {s.name: s.cpu_s / s.tokens * 1000 for s in systems if s.tokens}}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
