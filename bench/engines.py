"""`make bench-engines`: our two engines beside llama.cpp's llama-server, one run, one model file.

Systems, one after another (never two at once: on 2 cores two CPU-heavy processes slow each
other badly), all on smollm2:135m's GGUF and the same --threads:

* ctransformers-2  ours, ctransformers engine, 2 slots (a context each, no batching);
* llamacpp-2/-4    ours, llama.cpp engine (continuous batching, chunked prefill), 2 and 4 slots;
* llamacpp-4-ngram  llamacpp-4 with ``serve --speculative ngram`` (n-gram drafts); run by
  default only when ``python -m inference_service serve --help`` lists ``--speculative``;
* llama-server-2/-4  llama.cpp's own server, ``-np 2`` / ``-np 4``, ``-c 4096 x np`` (4096 a
  slot, as ours), its OpenAI endpoint (``bash bench/install_peer.sh llama-server``).

Ours are the real service and the real REST edge on gunicorn (bench/servers.py), measured
through the edge, as an OpenAI client sees them. The throughput streams are greedy with the
model's end-of-generation tokens banned through ``logit_bias`` (string keys: both servers
parse them as token ids), so each makes exactly --max-tokens tokens. Per system:

* single stream: decode tok/s and TTFT (short prompt), medians of --repeats after a warm-up;
* N streams at once for each N in --concurrency: aggregate tok/s (all tokens over the wall
  time), also as a ratio to the system's own single-stream decode rate;
* CPU-seconds per 1,000 streamed tokens over those single and concurrent streams, per
  process tree from /proc tick counts (bench/procfs.CpuSeconds): ours' service and edge
  (gunicorn's master and workers) apart and summed, llama-server's one process;
* a ~1,000-token chat history (bench/prompts.chat_history): TTFT cold, then of the next turn;
* edit: one greedy stream asked to repeat a ~250-token paragraph (bench/prompts.EDIT_PARAGRAPH)
  with one word replaced, end of generation allowed (at most the copy's tokens + 16): decode
  tok/s, tokens, whether it ended by itself and how close it is to the exact copy; the answer
  repeats the prompt, which is where prompt-lookup (n-gram) drafts pay off;
* JSON: one stream with ``response_format`` json_schema (bench/prompts.PET_SCHEMA, 5 fields),
  temperature 0.7, seed 1000 + repeat, at most 200 tokens: decode tok/s, also over the
  system's free-text decode (grammar jump-forward shows here), answers valid and cut;
  edit and JSON rows are medians of --repeats.

With --rounds R every system runs R times, the order reversed each round (A B C, C B A, ...):
the machine's speed moves by 10-15% between process launches, so one run per system can show a
difference that is only the machine. The rows are then medians over the rounds and each ratio
is printed with the range of its per-round values.

Decode tok/s is always bench/measure.py's: (tokens - 1) / (last token's time - first's), the
tokens the server's own usage count, so several tokens in one frame count as several.

And a TTFT breakdown of the llama.cpp engine (the first llamacpp-N selected without extra
service options): the same short-prompt request timed (a) in process on ``Engine``, (b) over
gRPC to the service, (c) through the edge, against llama-server's (same np when run). Timing
as in every bench row (bench/measure.py). Every ratio is computed within this run: ours
against llama-server of the same np (decode, TTFT, cold chat TTFT, CPU per token, edit
against llama-server's plain single-stream decode), JSON over free-text decode, and, when
both ran, speculation on/off (llamacpp-4-ngram / llamacpp-4). Results:
bench/results/engines.{json,png}, servers' logs bench/results/engines-*.log. Failed streams
are counted and reported; if any failed, the run exits 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import subprocess
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
from bench.measure import (Stream, aggregate_tps, concurrent, median, per_1k_tokens, single_rows,  # noqa: E402
                           streamed_tokens, successes, time_pieces)
from bench.procfs import CpuAudit, CpuSeconds, PeakMemory, cpu_busy_fraction  # noqa: E402
from bench.report import print_failures, pyplot, save_figure  # noqa: E402
from bench.prompts import JSON_MAX_TOKENS, JSON_SEED, JSON_TEMPERATURE, MODEL, http_bias  # noqa: E402
from bench.servers import LLAMA_SERVER, start_edge, start_llama_server, start_service  # noqa: E402
from bench.sse import chat_stream, make_clients  # noqa: E402
from harness.processes import stop_process  # noqa: E402

RESULTS = REPO / "bench" / "results"
FAILURES: dict[str, list[str]] = defaultdict(list)  # system (or breakdown row) -> what failed


@dataclass(frozen=True)
class System:
    name: str           # the --systems name and the table's row
    kind: str           # "ours" | "llama-server"
    engine: str | None  # ours: ctransformers | llamacpp
    slots: int          # ours: --slots; llama-server: -np
    service_args: tuple[str, ...] = ()  # ours: more `serve` options (only where a system needs them)

    @property
    def label(self) -> str:
        if self.kind == "ours":
            return " ".join([f"ours, {self.engine}, {self.slots} slots, via edge", *self.service_args])
        return f"llama-server -np {self.slots}"

    def flags_missing(self, serve_help: str) -> list[str]:
        """The options of ``service_args`` that ``serve --help`` does not list."""
        return [a for a in self.service_args
                if a.startswith("--") and not re.search(rf"(?<![\w-]){re.escape(a)}(?![\w-])", serve_help)]


SYSTEMS = [System("ctransformers-2", "ours", "ctransformers", 2),
           System("llamacpp-2", "ours", "llamacpp", 2),
           System("llamacpp-4", "ours", "llamacpp", 4),
           System("llamacpp-4-ngram", "ours", "llamacpp", 4, ("--speculative", "ngram")),
           System("llamacpp-4-unified", "ours", "llamacpp", 4, ("--llamacpp-kv", "unified")),
           System("llamacpp-4-paced", "ours", "llamacpp", 4, ("--stream-interval-ms", "50")),
           System("llama-server-2", "llama-server", None, 2),
           System("llama-server-4", "llama-server", None, 4)]
BY_NAME = {s.name: s for s in SYSTEMS}
SPEC = "-ngram"  # a system named X-ngram is X with n-gram speculative decoding on


def serve_help() -> str:
    """``python -m inference_service serve --help`` of this checkout ("" if it fails): which
    options the service has (the systems that need one it lacks are not run by default)."""
    try:
        return subprocess.run([sys.executable, "-m", "inference_service", "serve", "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def kept(who: str, what: str, streams: list[Stream], tokens: int | None = None) -> list[Stream]:
    """The successful streams; the others are recorded as failures of ``who``."""
    ok, failed = successes(streams, tokens)
    FAILURES[who].extend(f"{what}: {error}" for error in failed)
    return ok


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


def single_http(who: str, base_url: str, args, bias: dict[int, float]) -> tuple[dict, list[Stream]]:
    """--repeats + 1 single streams (the first a warm-up): TTFT, decode tok/s; and the streams."""
    streams = [chat_stream(base_url, MODEL, [{"role": "user", "content": story_message(f"h{i}{time.time_ns()}")}],
                           args.max_tokens, extra=http_bias(bias)) for i in range(args.repeats + 1)]
    return single_rows_of(who, streams, args.max_tokens), streams


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

def cpu_rows(seconds: dict[str, float], tokens: int) -> dict:
    """CPU-seconds per 1,000 streamed tokens of each process group and of all of them."""
    rows = {f"cpu_s_per_1k_{group}": per_1k_tokens(s, tokens) for group, s in seconds.items()}
    rows["cpu_s_per_1k_total"] = per_1k_tokens(sum(seconds.values()), tokens)
    rows.update({f"cpu_s_{group}": round(s, 2) for group, s in seconds.items()}, cpu_tokens=tokens)
    return rows


def edit_rows(who: str, base_url: str, args) -> dict:
    """--repeats greedy streams of the edit request (end of generation allowed): decode tok/s,
    tokens, how often the answer ended by itself and how close it came to the exact copy."""
    streams = [chat_stream(base_url, MODEL, prompts.edit_messages(), args.edit_max_tokens)
               for _ in range(args.repeats)]
    ok = kept(who, "edit", streams)
    return {"edit_decode_tps": median(s.decode_tps for s in ok),
            "edit_tokens": median(s.completion_tokens for s in ok), "edit_answers": len(ok),
            "edit_stopped": sum(s.finish_reason == "stop" for s in ok),
            "edit_copy_match": median(prompts.edit_fidelity(s.text) for s in ok)}


def json_rows(who: str, base_url: str, args) -> dict:
    """--repeats streams constrained by the pet schema (response_format json_schema), sampled
    at JSON_TEMPERATURE with seeds JSON_SEED + i: decode tok/s, tokens, answers valid against
    the schema, answers cut at JSON_MAX_TOKENS."""
    import jsonschema

    extra = {"response_format": prompts.json_response_format()}
    streams = [chat_stream(base_url, MODEL, prompts.json_messages(), JSON_MAX_TOKENS, temperature=JSON_TEMPERATURE,
                           seed=JSON_SEED + i, extra=extra) for i in range(args.repeats)]
    ok = kept(who, "json", streams)

    def valid(text: str) -> bool:
        try:
            jsonschema.validate(json.loads(text), prompts.PET_SCHEMA)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True

    return {"json_decode_tps": median(s.decode_tps for s in ok),
            "json_tokens": median(s.completion_tokens for s in ok),
            "json_answers": len(ok), "json_valid": sum(valid(s.text) for s in ok),
            "json_cut": sum(s.finish_reason == "length" for s in ok)}


def measure_http(system: System, base_url: str, process_groups: dict[str, list[int]], args,
                 bias: dict[int, float]) -> dict:
    """Single streams, N streams at once for each N in --concurrency, then a chat's next
    turn (as bench/run.py measure_suite, with --max-tokens streams), the edit and the JSON
    workloads. ``process_groups``: the system's process groups by name (each with its children),
    whose CPU over the single and concurrent streams is divided by the tokens they streamed;
    also their peak memory and the CPU other processes used meanwhile."""
    who = system.name
    pids = [p for group in process_groups.values() for p in group]
    with PeakMemory(*pids) as memory, CpuAudit(*pids) as audit:
        streamed: list[Stream] = []
        with CpuSeconds(**process_groups) as cpu:
            print(f"  {who}: single stream x {args.repeats + 1}", flush=True)
            rows, singles = single_http(who, base_url, args, bias)
            streamed += singles
            for n in args.concurrency:
                print(f"  {who}: {n} stream{'s' * (n > 1)} at once", flush=True)
                nonce = uuid.uuid4().hex[:8]  # prompts no cache has seen
                streams = concurrent(lambda i: chat_stream(base_url, MODEL, prompts.essay(i, nonce), args.max_tokens,
                                                           extra=http_bias(bias)), n)
                streamed += streams
                ok = kept(who, f"{n} streams", streams, args.max_tokens)
                if len(ok) == n:  # a level with a failed stream gets no figure
                    rows[f"agg_tps_c{n}"] = aggregate_tps(ok)
                    rows[f"ttft_p50_ms_c{n}"] = median(s.ttft_s * 1000 for s in ok)
                    if rows.get("decode_tps"):
                        rows[f"agg_over_single_c{n}"] = rows[f"agg_tps_c{n}"] / rows["decode_tps"]
        rows.update(cpu_rows(cpu.seconds, streamed_tokens(streamed)))
        print(f"  {who}: chat, cold ~{HISTORY_TOKENS}-token history and next turn x {args.repeats}", flush=True)
        rows.update(chat_turn_rows(base_url, args.repeats, lambda what, streams: kept(who, what, streams)))
        print(f"  {who}: edit (copy a {args.edit_max_tokens - prompts.EDIT_SLACK_TOKENS}-token paragraph with one word "
              f"changed) x {args.repeats}", flush=True)
        rows.update(edit_rows(who, base_url, args))
        print(f"  {who}: JSON schema, temperature {JSON_TEMPERATURE} x {args.repeats}", flush=True)
        rows.update(json_rows(who, base_url, args))
        if rows.get("json_decode_tps") and rows.get("decode_tps"):
            rows["json_over_decode"] = rows["json_decode_tps"] / rows["decode_tps"]
    rows.update(rss_start_mb=round(memory.start_mb, 1), rss_peak_mb=round(memory.peak_mb, 1),
                foreign_cpu_pct=audit.result()["foreign_pct"])
    return rows


def run_ours(system: System, args, bias: dict[int, float], breakdown: dict | None) -> dict:
    """The service and the edge of one of our systems; with ``breakdown`` (a dict to fill),
    also the single-stream request over gRPC before the edge starts."""
    extra = ["--thread-policy", args.thread_policy, *system.service_args]
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
            rows = measure_http(system, edge.base_url, {"service": [proc.pid], "edge": [edge.pid]}, args, bias)
    finally:
        stop_process(proc)
    if breakdown is not None:
        breakdown["edge"] = {k: rows.get(k) for k in ("ttft_ms", "decode_tps", "tokens")}
    return rows


def run_llama_server(system: System, model_file: Path, args, bias: dict[int, float]) -> dict:
    with start_llama_server(model_file, RESULTS, args.threads, system.slots, name=f"engines-{system.name}") as server:
        return measure_http(system, server.base_url, {"service": [server.pid]}, args, bias)


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


def cost_table(systems: dict[str, dict]) -> str:
    """CPU per token of each process, and the edit and JSON workloads."""
    head = ["system", "CPU-s/1k tok service", "edge", "total", "edit tok", "edit tok/s", "edit ended", "edit copy",
            "json tok", "json tok/s (x decode)", "json valid", "json cut"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in systems.items():
        answers = r.get("json_answers", 0)
        json_tps, over = r.get("json_decode_tps"), r.get("json_over_decode")
        cells = [name, _f(r.get("cpu_s_per_1k_service"), 2), _f(r.get("cpu_s_per_1k_edge"), 2),
                 _f(r.get("cpu_s_per_1k_total"), 2), _f(r.get("edit_tokens"), 0), _f(r.get("edit_decode_tps")),
                 f"{r.get('edit_stopped', 0)}/{r.get('edit_answers', 0)}", _f(r.get("edit_copy_match"), 2),
                 _f(r.get("json_tokens"), 0), "-" if json_tps is None else f"{json_tps:.1f} ({_f(over, 2, 'x')})",
                 f"{r.get('json_valid', 0)}/{answers}", f"{r.get('json_cut', 0)}/{answers}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def counterpart(name: str, systems: dict[str, dict]) -> str | None:
    """llama-server with the same np as ours ``name``, else any llama-server that ran."""
    same = f"llama-server-{BY_NAME[name].slots}" if name in BY_NAME else None
    if same in systems:
        return same
    return next((n for n in systems if n.startswith("llama-server-")), None)


def median_rows(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Each system's rows over the rounds: numbers by their median, anything else as in the first."""
    merged: dict[str, dict] = {}
    for name, first in rounds[0].items():
        rows = dict(first)
        for key in first:
            values = [r[name].get(key) for r in rounds]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                rows[key] = median(values)
        merged[name] = rows
    return merged


def ratio_ranges(per_round: list[list[tuple[str, float, str]]]) -> dict[str, tuple[float, float]]:
    """(lowest, highest) of each ratio over the rounds that have it."""
    seen: dict[str, list[float]] = {}
    for summary in per_round:
        for key, value, _ in summary:
            seen.setdefault(key, []).append(value)
    return {k: (min(v), max(v)) for k, v in seen.items() if len(v) > 1}


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
            out.append((f"{name} / {peer}: cold chat TTFT (~{HISTORY_TOKENS}-token history)",
                        ratio(s.get("chat_ttft_cold_ms"), p.get("chat_ttft_cold_ms")), "x"))
            out.append((f"{name} / {peer}: CPU-s per 1k tokens, all processes",
                        ratio(s.get("cpu_s_per_1k_total"), p.get("cpu_s_per_1k_total")), "x"))
            out.append((f"edit: ours {name} / {peer} single-stream decode (plain story)",
                        ratio(s.get("edit_decode_tps"), p.get("decode_tps")), "x"))
            out.append((f"edit: ours {name} / {peer} edit decode", ratio(s.get("edit_decode_tps"),
                                                                         p.get("edit_decode_tps")), "x"))
        out.append((f"{name}: chat next-turn TTFT / cold TTFT", s.get("chat_next_over_cold"), "x"))
    for name, s in systems.items():
        out.append((f"{name}: JSON schema decode / free-text decode", s.get("json_over_decode"), "x"))
    for name in (n for n in systems if n.endswith(SPEC) and n[:-len(SPEC)] in systems):
        on, off = systems[name], systems[name[:-len(SPEC)]]
        label = f"speculation on/off, {name} / {name[:-len(SPEC)]}"
        out.append((f"{label}: free-text decode", ratio(on.get("decode_tps"), off.get("decode_tps")), "x"))
        out.append((f"{label}: edit decode", ratio(on.get("edit_decode_tps"), off.get("edit_decode_tps")), "x"))
        out.append((f"{label}: CPU-s per 1k tokens",
                    ratio(on.get("cpu_s_per_1k_total"), off.get("cpu_s_per_1k_total")), "x"))
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
    options = serve_help()
    runnable = [s for s in SYSTEMS if not s.flags_missing(options)]
    parser.add_argument("--systems", default=",".join(s.name for s in runnable),
                        help=f"comma list, run in this order: {', '.join(s.name for s in SYSTEMS)} (default: "
                             "those whose service options `serve --help` lists)")
    parser.add_argument("--skip-llama-server", action="store_true", help="drop the llama-server rows")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every system this many times, the order reversed each round (the machine's "
                             "speed drifts between process launches); rows: medians over the rounds, ratios: "
                             "median and range of the per-round ratios")
    parser.add_argument("--thread-policy", choices=("adaptive", "fixed"), default="adaptive",
                        help="ours: --thread-policy (default adaptive, the service's default)")
    args = parser.parse_args(argv)
    try:
        args.concurrency = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--concurrency: a comma list of integers, not {args.concurrency!r}")
    if not args.concurrency or min(args.concurrency) < 1:
        parser.error("--concurrency: levels of 1 or more")
    if args.repeats < 1 or args.max_tokens < 2 or args.rounds < 1:
        parser.error("--repeats and --rounds must be at least 1 and --max-tokens at least 2")
    by_name = {s.name: s for s in SYSTEMS}
    wanted = [w.strip() for w in args.systems.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(by_name)}")
    for name in wanted:
        if missing := by_name[name].flags_missing(options):
            parser.error(f"{name} needs the service's {', '.join(missing)}, which `python -m inference_service "
                         f"serve --help` does not list: drop it from --systems")
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
    args.edit_max_tokens = prompts.edit_max_tokens(model_file)
    header = (f"{MODEL} ({model_file.name}); {args.threads} compute threads for every system (ours: the cap, "
              f"{args.thread_policy} policy); {args.max_tokens}-token greedy streams, end-of-generation tokens "
              f"{sorted(bias)} banned; single-stream rows: median of {args.repeats} after a warm-up; "
              f"edit: greedy, end of generation allowed, at most {args.edit_max_tokens} tokens; JSON: schema of "
              f"{len(prompts.PET_SCHEMA['properties'])} fields, temperature {JSON_TEMPERATURE}, seeds "
              f"{JSON_SEED}+i, at most {JSON_MAX_TOKENS} tokens; edit and JSON rows: medians of {args.repeats}; "
              + (f"machine {busy:.0%} busy before the run" if busy is not None else "machine load unknown"))
    print(header, flush=True)
    make_clients(max(args.concurrency, default=1))  # before any server runs: see bench.sse

    # the in-process engine runs with the service's defaults: a system with other options is no match
    breakdown_for = next((s for s in args.systems if s.engine == "llamacpp" and not s.service_args), None)
    breakdown: dict | None = None
    rounds: list[dict[str, dict]] = []
    for number in range(args.rounds):
        order = args.systems if number % 2 == 0 else args.systems[::-1]
        this_round: dict[str, dict] = {}
        for system in order:
            print(f"{system.name}: {system.label} ..." + (f" (round {number + 1})" if args.rounds > 1 else ""),
                  flush=True)
            if system.kind == "ours":
                if system is breakdown_for and number == 0:
                    breakdown = {"system": system.name, "max_tokens": args.max_tokens, "repeats": args.repeats}
                    print(f"  {system.name}: TTFT breakdown, engine in process x {args.repeats + 1}", flush=True)
                    breakdown["engine"] = single_in_process(f"{system.name} engine", system, model, args, bias)
                    this_round[system.name] = run_ours(system, args, bias, breakdown)
                else:
                    this_round[system.name] = run_ours(system, args, bias, None)
            else:
                this_round[system.name] = run_llama_server(system, model_file, args, bias)
        rounds.append({s.name: this_round[s.name] for s in args.systems})
    systems = median_rows(rounds)
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
    spread = ratio_ranges([ratios(r, args) for r in rounds])
    elapsed = time.monotonic() - started
    report = [header, "", table(systems, args), "",
              "agg N = all tokens of N concurrent streams over the wall time; (x single) = that over the system's "
              "own single-stream decode rate; next/cold = chat TTFT of the next turn over that of the cold "
              f"~{HISTORY_TOKENS}-token history (lower: more of the history reused).", "",
              cost_table(systems), "",
              "CPU-s/1k tok = CPU-seconds (user + system, from /proc) each process tree used over the single and "
              "concurrent streams, per 1,000 tokens they streamed: service = ours' gRPC service (llama-server: "
              "its one process), edge = gunicorn's master and workers. edit = a copy of a "
              f"{args.edit_max_tokens - prompts.EDIT_SLACK_TOKENS}-token paragraph with one word replaced: ended = answers "
              "that ended by themselves, copy = closeness to the exact copy (0..1). json = answers to the "
              "schema: (x decode) = over the system's free-text single-stream decode; valid = parse and match "
              f"the schema; cut = stopped at {JSON_MAX_TOKENS} tokens."]
    if breakdown is not None:
        report += [""] + breakdown_lines(breakdown)
    if summary:
        width = max(len(k) for k, _, _ in summary)
        title = f"ratios (this run: medians of {len(rounds)} rounds, then the rounds' range):" if spread \
            else "ratios (this run):"
        report += ["", title] + [f"  {k:{width}s} {v:9.3f} {u}"
                                 + (f"   ({spread[k][0]:.3f} .. {spread[k][1]:.3f})" if k in spread else "")
                                 for k, v, u in summary]
    report += ["", f"took {elapsed / 60:.1f} min"]
    text = "\n".join(report)
    print()
    print(text)
    doc = {"meta": {"model": MODEL, "model_file": str(model_file), "threads": args.threads,
                    "thread_policy": args.thread_policy, "max_tokens": args.max_tokens, "repeats": args.repeats,
                    "concurrency": args.concurrency, "rounds": args.rounds, "banned_tokens": sorted(bias), "cpu_busy_before": busy,
                    "edit_max_tokens": args.edit_max_tokens, "json_max_tokens": JSON_MAX_TOKENS,
                    "json_temperature": JSON_TEMPERATURE, "json_seed": JSON_SEED, "json_schema": prompts.PET_SCHEMA,
                    "when": time.strftime("%Y-%m-%d %H:%M"), "elapsed_s": round(elapsed, 1),
                    "systems": {s.name: s.label for s in args.systems}},
           "systems": systems, "rounds": rounds if len(rounds) > 1 else None, "breakdown": breakdown,
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
