"""`make bench-engines`: our two engines beside llama.cpp's llama-server, one run, one model file.

Systems, one after another (never two at once: on 2 cores two CPU-heavy processes slow each
other badly), all on smollm2:135m's GGUF and the same --threads:

* ctransformers-2  ours, ctransformers engine, 2 slots (a context each, no batching);
* llamacpp-2/-4    ours, llama.cpp engine (continuous batching, chunked prefill), 2 and 4 slots;
* llama-server-2/-4  llama.cpp's own server, ``-np 2`` / ``-np 4``, ``-c 4096 x np`` (4096 a
  slot, as ours), its OpenAI endpoint (``bash bench/install_peer.sh llama-server``).

Ours are the real service and the real REST edge on gunicorn (bench/servers.py), measured
through the edge, as an OpenAI client sees them. Every stream is greedy with the model's
end-of-generation tokens banned through ``logit_bias`` (string keys: both servers parse
them as token ids), so it makes exactly --max-tokens tokens. Per system:

* single stream: decode tok/s and TTFT (short prompt), medians of --repeats after a warm-up;
* N streams at once for each N in --concurrency: aggregate tok/s (all tokens over the wall
  time), also as a ratio to the system's own single-stream decode rate;
* a ~1,000-token chat history (bench/prompts.chat_history): TTFT cold, then of the next turn.

And a TTFT breakdown of the llama.cpp engine (the first llamacpp-N selected): the same
short-prompt request timed (a) in process on ``Engine``, (b) over gRPC to the service,
(c) through the edge, against llama-server's (same np when run). Timing as in every bench
row (bench/measure.py). Every ratio is computed within this run. Results:
bench/results/engines.{json,png}, servers' logs bench/results/engines-*.log. Failed streams
are counted and reported; if any failed, the run exits 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench import prompts  # noqa: E402
from bench.chat_turns import HISTORY_TOKENS, chat_turn_rows  # noqa: E402
from bench.measure import Stream, aggregate_tps, concurrent, median, single_rows, successes, time_pieces  # noqa: E402
from bench.procfs import CpuAudit, PeakMemory, cpu_busy_fraction  # noqa: E402
from bench.report import print_failures, pyplot, save_figure  # noqa: E402
from bench.prompts import MODEL  # noqa: E402
from bench.servers import LLAMA_SERVER, start_edge, start_llama_server, start_service  # noqa: E402
from bench.sse import chat_stream  # noqa: E402
from harness.processes import stop_process  # noqa: E402

RESULTS = REPO / "bench" / "results"
FAILURES: dict[str, list[str]] = defaultdict(list)  # system (or breakdown row) -> what failed


@dataclass(frozen=True)
class System:
    name: str           # the --systems name and the table's row
    kind: str           # "ours" | "llama-server"
    engine: str | None  # ours: ctransformers | llamacpp
    slots: int          # ours: --slots; llama-server: -np

    @property
    def label(self) -> str:
        if self.kind == "ours":
            return f"ours, {self.engine}, {self.slots} slots, via edge"
        return f"llama-server -np {self.slots}"


SYSTEMS = [System("ctransformers-2", "ours", "ctransformers", 2),
           System("llamacpp-2", "ours", "llamacpp", 2),
           System("llamacpp-4", "ours", "llamacpp", 4),
           System("llama-server-2", "llama-server", None, 2),
           System("llama-server-4", "llama-server", None, 4)]


def kept(who: str, what: str, streams: list[Stream], tokens: int | None = None) -> list[Stream]:
    """The successful streams; the others are recorded as failures of ``who``."""
    ok, failed = successes(streams, tokens)
    FAILURES[who].extend(f"{what}: {error}" for error in failed)
    return ok


def http_bias(bias: dict[int, float]) -> dict:
    return {"logit_bias": {str(k): v for k, v in bias.items()}}


def end_of_generation_ids(model_file: Path) -> list[int]:
    """Every token that ends a stream on any system: the end-of-turn markup (our ctransformers
    engine) and llama.cpp's end-of-generation set (our llama.cpp engine and llama-server; for
    SmolLM2 it also holds a file-separator token the markup does not)."""
    from inference_service.engine.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_gguf(model_file)
    ids = {tokenizer.token_id(t) for t in prompts.END_OF_TURN_MARKUP} | {tokenizer.vocab.eos_token_id}
    from inference_service.engine.llamacpp_runtime import LlamaModel
    from inference_service.engine.llamacpp_tokenizer import LlamaCppTokenizer
    from inference_service.errors import ModelLoadError

    try:
        model = LlamaModel(model_file)
    except ModelLoadError as error:  # no llamacpp extra: our llama.cpp rows will fail to start and say why
        print(f"warning: llama.cpp's end-of-generation tokens unknown ({error}); banning the markup's only",
              file=sys.stderr)
        return sorted(i for i in ids if i is not None)
    try:
        ids |= set(LlamaCppTokenizer(model).end_of_generation_ids)
    finally:
        model.close()
    return sorted(i for i in ids if i is not None)


# ---------------------------------------------------------------- the requests, three ways

def story_message(nonce: str) -> str:
    return prompts.story(nonce)  # with SmolLM2's chat template (and its default system prompt) ~65 tokens


def single_rows_of(who: str, streams: list[Stream], max_tokens: int) -> dict:
    """Single-stream rows of all but the first stream (the warm-up, whose failure counts too)."""
    kept(who, "warm-up stream", streams[:1], max_tokens)
    return single_rows(kept(who, "single stream", streams[1:], max_tokens))


def single_http(who: str, base_url: str, args, bias: dict[int, float]) -> dict:
    """--repeats + 1 single streams (the first a warm-up): TTFT, decode tok/s."""
    streams = [chat_stream(base_url, MODEL, [{"role": "user", "content": story_message(f"h{i}{time.time_ns()}")}],
                           args.max_tokens, extra=http_bias(bias)) for i in range(args.repeats + 1)]
    return single_rows_of(who, streams, args.max_tokens)


def single_grpc(who: str, address: str, args, bias: dict[int, float]) -> dict:
    """The same requests over gRPC (bench/run.py measure_grpc's decode request)."""
    from inference_service.v1 import inference_pb2 as pb
    from inference_service.v1 import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        streams = []
        for i in range(args.repeats + 1):
            request = pb.GenerateRequest(
                model=MODEL, messages=[pb.ChatMessage(role="user", content=story_message(f"g{i}{time.time_ns()}"))],
                max_tokens=args.max_tokens, temperature=0.0, logit_bias=bias)
            streams.append(time_pieces(lambda: stub.Generate(request, timeout=600), lambda r: len(r.token_ids)))
    return single_rows_of(who, streams, args.max_tokens)


def single_in_process(who: str, system: System, model_file, args, bias: dict[int, float]) -> dict:
    """The same requests on ``Engine`` in this process (bench/run.py measure_in_process's
    decode request), loaded on the system's engine with its slots."""
    from inference_service.engine.engine import Engine, EngineConfig
    from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams

    engine = Engine.load([model_file], EngineConfig(slots=system.slots, threads=args.threads, engine=system.engine,
                                                    thread_policy=args.thread_policy))
    try:
        engine.warm_up()
        sampling = SamplingParams(temperature=0.0, logit_bias=bias)
        streams = []
        for i in range(args.repeats + 1):
            message = ChatMessage("user", story_message(f"e{i}{time.time_ns()}"))
            request = GenerationRequest(model=MODEL, messages=(message,), max_tokens=args.max_tokens, sampling=sampling)
            streams.append(time_pieces(lambda: engine.generate(request), lambda c: len(c.token_ids)))
    finally:
        engine.close()  # frees the llama.cpp context and weights before the services start
        gc.collect()
    return single_rows_of(who, streams, args.max_tokens)


# ---------------------------------------------------------------- one system over HTTP

def measure_http(system: System, base_url: str, pids: list[int], args, bias: dict[int, float]) -> dict:
    """Single streams, N streams at once for each N in --concurrency, then a chat's next
    turn (as bench/run.py measure_suite, with --max-tokens streams); peak memory of ``pids``
    (with their children) and CPU used by other processes meanwhile."""
    who = system.name
    with PeakMemory(*pids) as memory, CpuAudit(*pids) as cpu:
        print(f"  {who}: single stream x {args.repeats + 1}", flush=True)
        rows = single_http(who, base_url, args, bias)
        for n in args.concurrency:
            print(f"  {who}: {n} stream{'s' * (n > 1)} at once", flush=True)
            nonce = uuid.uuid4().hex[:8]  # prompts no cache has seen
            streams = concurrent(lambda i: chat_stream(base_url, MODEL, prompts.essay(i, nonce), args.max_tokens,
                                                       extra=http_bias(bias)), n)
            ok = kept(who, f"{n} streams", streams, args.max_tokens)
            if len(ok) == n:  # a level with a failed stream gets no figure
                rows[f"agg_tps_c{n}"] = aggregate_tps(ok)
                rows[f"ttft_p50_ms_c{n}"] = median(s.ttft_s * 1000 for s in ok)
                if rows.get("decode_tps"):
                    rows[f"agg_over_single_c{n}"] = rows[f"agg_tps_c{n}"] / rows["decode_tps"]
        print(f"  {who}: chat, cold ~{HISTORY_TOKENS}-token history and next turn x {args.repeats}", flush=True)
        rows.update(chat_turn_rows(base_url, args.repeats, lambda what, streams: kept(who, what, streams)))
    rows.update(rss_start_mb=round(memory.start_mb, 1), rss_peak_mb=round(memory.peak_mb, 1),
                foreign_cpu_pct=cpu.result()["foreign_pct"])
    return rows


def run_ours(system: System, args, bias: dict[int, float], breakdown: dict | None) -> dict:
    """The service and the edge of one of our systems; with ``breakdown`` (a dict to fill),
    also the single-stream request over gRPC before the edge starts."""
    extra = ["--thread-policy", args.thread_policy]
    proc, address = start_service(system.slots, RESULTS, args.threads, engine=system.engine, extra_args=extra,
                                  name=f"engines-{system.name}-service")
    try:
        with grpc.insecure_channel(address) as channel:
            markup = prompts.end_of_turn_ids_over_grpc(channel)
        if not set(markup) <= set(bias):
            raise SystemExit(f"{system.name}: end-of-turn ids {markup} are not all in the banned set {sorted(bias)}")
        if breakdown is not None:
            print(f"  {system.name}: TTFT breakdown, gRPC x {args.repeats + 1}", flush=True)
            breakdown["grpc"] = single_grpc(f"{system.name} grpc", address, args, bias)
        with start_edge(address, RESULTS, f"engines-{system.name}-edge") as edge:
            rows = measure_http(system, edge.base_url, [proc.pid, edge.pid], args, bias)
    finally:
        stop_process(proc)
    if breakdown is not None:
        breakdown["edge"] = {k: rows.get(k) for k in ("ttft_ms", "decode_tps", "tokens")}
    return rows


def run_llama_server(system: System, model_file: Path, args, bias: dict[int, float]) -> dict:
    with start_llama_server(model_file, RESULTS, args.threads, system.slots, name=f"engines-{system.name}") as server:
        return measure_http(system, server.base_url, [server.pid], args, bias)


# ---------------------------------------------------------------- report

def _f(v, digits: int = 1, suffix: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}{suffix}"


def table(systems: dict[str, dict], args) -> str:
    levels = list(args.concurrency)
    head = (["system", "decode tok/s", "TTFT ms"] + [f"agg {n} tok/s (x single)" for n in levels]
            + ["chat prompt tok", "chat cold ms", "chat next ms", "next/cold", "peak RSS MB", "others' CPU %",
               "failed"])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in systems.items():
        cells = [name, _f(r.get("decode_tps")), _f(r.get("ttft_ms"), 0)]
        for n in levels:
            agg, over = r.get(f"agg_tps_c{n}"), r.get(f"agg_over_single_c{n}")
            cells.append("-" if agg is None else f"{agg:.1f} ({_f(over, 2, 'x')})")
        cells += [_f(r.get("chat_prompt_tokens"), 0), _f(r.get("chat_ttft_cold_ms"), 0),
                  _f(r.get("chat_ttft_next_ms"), 0), _f(r.get("chat_next_over_cold"), 3),
                  _f(r.get("rss_peak_mb"), 0), _f(r.get("foreign_cpu_pct"), 1), str(r.get("failed_requests", 0))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def counterpart(name: str, systems: dict[str, dict]) -> str | None:
    """llama-server with the same np as ours ``name``, else any llama-server that ran."""
    same = "llama-server-" + name.rsplit("-", 1)[1]
    if same in systems:
        return same
    return next((n for n in systems if n.startswith("llama-server-")), None)


def ratios(systems: dict[str, dict], args) -> list[tuple[str, float, str]]:
    """(what, value, unit): the comparisons of our llama.cpp engine with llama-server."""
    def ratio(a, b):
        return a / b if a is not None and b else None

    out = []
    ours = [n for n in systems if n.startswith("llamacpp-")]
    reference = "llama-server-4" if "llama-server-4" in systems else None
    for name in ours:
        s = systems[name]
        if reference:
            for n in (n for n in args.concurrency if n > 1):
                out.append((f"{name} / {reference}: aggregate at {n} streams",
                            ratio(s.get(f"agg_tps_c{n}"), systems[reference].get(f"agg_tps_c{n}")), "x"))
        peer = counterpart(name, systems)
        if peer:
            p = systems[peer]
            out.append((f"{name} / {peer}: single-stream decode", ratio(s.get("decode_tps"), p.get("decode_tps")), "x"))
            if s.get("ttft_ms") is not None and p.get("ttft_ms") is not None:
                out.append((f"{name} - {peer}: TTFT", s["ttft_ms"] - p["ttft_ms"], "ms"))
        out.append((f"{name}: chat next-turn TTFT / cold TTFT", s.get("chat_next_over_cold"), "x"))
    return [(k, v, u) for k, v, u in out if v is not None]


def breakdown_lines(breakdown: dict) -> list[str]:
    rows = [("engine (in process)", breakdown.get("engine")), ("gRPC to the service", breakdown.get("grpc")),
            ("edge (HTTP, SSE)", breakdown.get("edge")), (breakdown.get("peer_name") or "llama-server",
                                                          breakdown.get("peer"))]
    out = [f"TTFT breakdown, {breakdown['system']} (the same short-prompt {breakdown['max_tokens']}-token request, "
           f"medians of {breakdown['repeats']} after a warm-up):",
           "| path | TTFT ms | decode tok/s | failed |", "|---|---:|---:|---:|"]
    for label, r in rows:
        if r:
            out.append(f"| {label} | {_f(r.get('ttft_ms'), 1)} | {_f(r.get('decode_tps'), 1)} | "
                       f"{r.get('failed_requests', '-')} |")
    out.append("")
    for label, value in breakdown["differences"].items():
        out.append(f"  {label:32s} {value:+8.1f} ms")
    return out


def differences(breakdown: dict) -> dict[str, float]:
    def ttft(key):
        return (breakdown.get(key) or {}).get("ttft_ms")

    pairs = {"edge - gRPC": ("edge", "grpc"), "gRPC - engine": ("grpc", "engine"),
             "engine - llama-server": ("engine", "peer"), "edge - llama-server": ("edge", "peer")}
    return {k: ttft(a) - ttft(b) for k, (a, b) in pairs.items() if ttft(a) is not None and ttft(b) is not None}


def save_chart(systems: dict[str, dict], levels: list[int], path: Path, title: str) -> Path:
    fig, ax = pyplot().subplots(figsize=(7.5, 4.6))
    for name, r in systems.items():
        points = [(n, r.get(f"agg_tps_c{n}")) for n in levels if r.get(f"agg_tps_c{n}") is not None]
        if points:
            style = "--" if name.startswith("llama-server") else "-"
            ax.plot([n for n, _ in points], [v for _, v in points], style, marker="o", label=name)
            ax.annotate(f"{points[-1][1]:.0f}", points[-1], fontsize=8, xytext=(4, 0), textcoords="offset points",
                        va="center")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(n) for n in levels])
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate tok/s (higher better)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no concurrency level without a failed stream", ha="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="compute threads of every system (ours --threads, llama-server -t/-tb; "
                             "default: CPU count)")
    parser.add_argument("--max-tokens", type=int, default=160, help="tokens a stream (end of generation banned)")
    parser.add_argument("--repeats", type=int, default=3, help="single streams after the warm-up; chat histories")
    parser.add_argument("--concurrency", default="1,2,4,8", help="concurrent-stream levels (comma list)")
    parser.add_argument("--systems", default=",".join(s.name for s in SYSTEMS),
                        help=f"comma list, run in this order: {', '.join(s.name for s in SYSTEMS)}")
    parser.add_argument("--skip-llama-server", action="store_true", help="drop the llama-server rows")
    parser.add_argument("--thread-policy", choices=("adaptive", "fixed"), default="adaptive",
                        help="ours: --thread-policy (default adaptive, the service's default)")
    args = parser.parse_args(argv)
    try:
        args.concurrency = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--concurrency: a comma list of integers, not {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency: levels of 1 or more")
    if args.repeats < 1 or args.max_tokens < 2:
        parser.error("--repeats must be at least 1 and --max-tokens at least 2")
    by_name = {s.name: s for s in SYSTEMS}
    wanted = [w.strip() for w in args.systems.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    args.systems = [by_name[w] for w in dict.fromkeys(wanted)
                    if not (args.skip_llama_server and by_name[w].kind == "llama-server")]
    if not args.systems:
        parser.error("no system left to run")
    if any(s.kind == "llama-server" for s in args.systems) and not LLAMA_SERVER.exists():
        parser.error(f"{LLAMA_SERVER} missing: run `bash bench/install_peer.sh llama-server` "
                     "(or pass --skip-llama-server)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop our servers
    from inference_service.models.registry import ModelRegistry

    model = ModelRegistry().resolve(MODEL)
    model_file = model.source_path
    RESULTS.mkdir(parents=True, exist_ok=True)
    busy = cpu_busy_fraction(1.0)
    started = time.monotonic()
    bias = prompts.no_eos_bias(end_of_generation_ids(model_file))
    header = (f"{MODEL} ({model_file.name}); {args.threads} compute threads for every system (ours: the cap, "
              f"{args.thread_policy} policy); {args.max_tokens}-token greedy streams, end-of-generation tokens "
              f"{sorted(bias)} banned; single-stream rows: median of {args.repeats} after a warm-up; "
              + (f"machine {busy:.0%} busy before the run" if busy is not None else "machine load unknown"))
    print(header, flush=True)

    breakdown_for = next((s for s in args.systems if s.engine == "llamacpp"), None)
    breakdown: dict | None = None
    systems: dict[str, dict] = {}
    for system in args.systems:
        print(f"{system.name}: {system.label} ...", flush=True)
        if system.kind == "ours":
            if system is breakdown_for:
                breakdown = {"system": system.name, "max_tokens": args.max_tokens, "repeats": args.repeats}
                print(f"  {system.name}: TTFT breakdown, engine in process x {args.repeats + 1}", flush=True)
                breakdown["engine"] = single_in_process(f"{system.name} engine", system, model, args, bias)
                systems[system.name] = run_ours(system, args, bias, breakdown)
            else:
                systems[system.name] = run_ours(system, args, bias, None)
        else:
            systems[system.name] = run_llama_server(system, model_file, args, bias)
    for name, rows in systems.items():
        rows["failed_requests"] = len(FAILURES.get(name, []))
    if breakdown is not None:
        peer = counterpart(breakdown["system"], systems)
        if peer:
            breakdown["peer_name"] = peer
            breakdown["peer"] = {k: systems[peer].get(k) for k in ("ttft_ms", "decode_tps", "tokens")}
        breakdown["differences"] = differences(breakdown)
        whose = {"engine": f"{breakdown['system']} engine", "grpc": f"{breakdown['system']} grpc",
                 "edge": breakdown["system"], "peer": peer}
        for key, who in whose.items():  # the failures among these single streams (and their warm-ups)
            if key in breakdown:
                breakdown[key]["failed_requests"] = sum(
                    f.startswith(("warm-up stream:", "single stream:")) for f in FAILURES.get(who, []))

    summary = ratios(systems, args)
    elapsed = time.monotonic() - started
    report = [header, "", table(systems, args), "",
              "agg N = all tokens of N concurrent streams over the wall time; (x single) = that over the system's "
              "own single-stream decode rate; next/cold = chat TTFT of the next turn over that of the cold "
              f"~{HISTORY_TOKENS}-token history (lower: more of the history reused)."]
    if breakdown is not None:
        report += [""] + breakdown_lines(breakdown)
    if summary:
        report += ["", "ratios (this run):"] + [f"  {k:58s} {v:9.3f} {u}" for k, v, u in summary]
    report += ["", f"took {elapsed / 60:.1f} min"]
    text = "\n".join(report)
    print()
    print(text)
    doc = {"meta": {"model": MODEL, "model_file": str(model_file), "threads": args.threads,
                    "thread_policy": args.thread_policy, "max_tokens": args.max_tokens, "repeats": args.repeats,
                    "concurrency": args.concurrency, "banned_tokens": sorted(bias), "cpu_busy_before": busy,
                    "when": time.strftime("%Y-%m-%d %H:%M"), "elapsed_s": round(elapsed, 1),
                    "systems": {s.name: s.label for s in args.systems}},
           "systems": systems, "breakdown": breakdown,
           "ratios": {k: {"value": v, "unit": u} for k, v, u in summary},
           "failures": dict(FAILURES), "report": text.splitlines()}
    (RESULTS / "engines.json").write_text(json.dumps(doc, indent=2, default=str))
    png = save_chart(systems, args.concurrency, RESULTS / "engines.png",
                     f"{MODEL}, {args.threads} threads, {args.max_tokens}-token streams - {doc['meta']['when']}")
    print(f"\nwrote {RESULTS / 'engines.json'} and {png}")
    note = "the rows count only the successes; a concurrency level with a failure has no figure"
    return 1 if print_failures(FAILURES, note) else 0


if __name__ == "__main__":
    sys.exit(main())
