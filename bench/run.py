"""`make bench`: one run, one table, one chart.

Measures on the same model file, with the same number of compute threads (--threads), one
system after another (never two at once: on 2 cores two CPU-heavy processes slow each other
badly):

1. engine   - the engine called in process (no transport);
2. grpc     - the same requests through the real gRPC service (a subprocess);
3. edge     - the real REST edge on gunicorn in front of that service (OpenAI SSE);
4. peer     - llama-cpp-python's own OpenAI server (.bench-venv, bench/install_peer.sh);
5. edge alone, in front of an instant fake engine: SSE frames per second per worker.

Our harness times every row the same way (bench/measure.py: each clock starts at the call,
one decode formula). The edge and the peer are also driven by NVIDIA's aiperf
(bench/aiperf_run.py, .bench-venv-aiperf, bench/install_aiperf.sh): the "aiperf" rows.
Every ratio is computed within this run. Results: bench/results/bench.{json,png}. Only
successful streams are counted; if any failed, the table marks it and the run exits 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench import aiperf_run, prompts  # noqa: E402
from bench.chat_turns import chat_turn_rows  # noqa: E402
from bench.measure import Stream, aggregate_tps, concurrent, median, single_rows, successes, time_pieces  # noqa: E402
from bench.procfs import CpuAudit, PeakMemory, cpu_busy_fraction  # noqa: E402
from bench.prompts import MODEL, http_bias  # noqa: E402
from bench.report import print_failures, write_report  # noqa: E402
from bench.servers import start_edge, start_peer, start_service  # noqa: E402  (soak.py imports the first two from here)
from bench.sse import chat_stream  # noqa: E402
from harness.processes import stop_process  # noqa: E402

RESULTS = REPO / "bench" / "results"
FAILURES: dict[str, list[str]] = defaultdict(list)  # system -> what failed


def kept(system: str, what: str, streams: list[Stream], tokens: int | None = None) -> list[Stream]:
    """The successful streams; the others are recorded as failures of ``system``."""
    ok, failed = successes(streams, tokens)
    FAILURES[system].extend(f"{what}: {error}" for error in failed)
    return ok


def stream_rows(system: str, decode: list[Stream], prompt: list[Stream], max_tokens: int) -> dict:
    """Single-stream rows (the first decode stream is a warm-up) and prompt-evaluation rows."""
    rows = single_rows(kept(system, "decode", decode[1:], max_tokens))
    prompt = kept(system, "prompt", prompt, 1)
    if prompt:
        rows.update(prompt_tokens=median(s.prompt_tokens for s in prompt),
                    prompt_ttft_ms=median(s.ttft_s * 1000 for s in prompt),
                    prompt_tps=median(s.prompt_tokens / s.ttft_s for s in prompt))
    return rows


# ---------------------------------------------------------------- engine in process, gRPC

def measure_in_process(args) -> tuple[dict, list[int]]:
    from inference_service.engine.engine import Engine, EngineConfig
    from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams
    from inference_service.models.registry import ModelRegistry

    engine = Engine.load([ModelRegistry().resolve(MODEL)], EngineConfig(slots=args.slots, threads=args.threads))
    engine.warm_up()
    end_of_turn = prompts.end_of_turn_ids_in_process(engine)
    sampling = SamplingParams(temperature=0.0, logit_bias=prompts.no_eos_bias(end_of_turn))
    decode, prompt = [], []
    for i in range(args.repeats + 1):
        nonce = f"e{i}{time.time_ns()}"
        request = GenerationRequest(model=MODEL, messages=(ChatMessage("user", prompts.story(nonce)),),
                                    max_tokens=args.max_tokens, sampling=sampling)
        decode.append(time_pieces(lambda: engine.generate(request), lambda c: len(c.token_ids)))
        request = GenerationRequest(model=MODEL, prompt=prompts.prompt_of_tokens(args.prompt_tokens, nonce), raw=True,
                                    max_tokens=1, sampling=sampling)
        prompt.append(time_pieces(lambda: engine.generate(request), lambda c: len(c.token_ids),
                                  lambda c: c.usage and c.usage.prompt_tokens))
    return stream_rows("engine", decode, prompt[1:], args.max_tokens), end_of_turn


def measure_grpc(address: str, args, bias: dict[int, float]) -> dict:
    from inference_service.v1 import inference_pb2 as pb
    from inference_service.v1 import inference_pb2_grpc as pb_grpc

    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))
    decode, prompt = [], []
    for i in range(args.repeats + 1):
        nonce = f"g{i}{time.time_ns()}"
        request = pb.GenerateRequest(model=MODEL, messages=[pb.ChatMessage(role="user", content=prompts.story(nonce))],
                                     max_tokens=args.max_tokens, temperature=0.0, logit_bias=bias)
        decode.append(time_pieces(lambda: stub.Generate(request, timeout=600), lambda r: len(r.token_ids)))
        request = pb.GenerateRequest(model=MODEL, prompt=prompts.prompt_of_tokens(args.prompt_tokens, nonce), raw=True,
                                     max_tokens=1, temperature=0.0, logit_bias=bias)
        prompt.append(time_pieces(lambda: stub.Generate(request, timeout=600), lambda r: len(r.token_ids),
                                  lambda r: r.usage.prompt_tokens if r.HasField("usage") else None))
    return stream_rows("grpc", decode, prompt[1:], args.max_tokens)


# ---------------------------------------------------------------- over HTTP: edge, peer

def measure_http(system: str, base_url: str, args, bias: dict[int, float]) -> dict:
    """The decode request of the engine and gRPC rows, as an OpenAI streamed chat."""
    decode = [chat_stream(base_url, MODEL, [{"role": "user", "content": prompts.story(f"h{i}{time.time_ns()}")}],
                          args.max_tokens, extra=http_bias(bias)) for i in range(args.repeats + 1)]
    return stream_rows(system, decode, [], args.max_tokens)


def measure_suite(system: str, base_url: str, pids: list[int], args, bias: dict[int, float]) -> dict:
    """N streams at once for each N in --concurrency, then a chat's next turn; peak memory of
    ``pids`` (with their children) and CPU used by other processes meanwhile."""
    rows: dict = {}
    max_tokens = args.max_tokens // 2
    with PeakMemory(*pids) as memory, CpuAudit(*pids) as cpu:
        for n in args.concurrency:
            print(f"  {system}: {n} streams at once", flush=True)
            nonce = uuid.uuid4().hex[:8]  # prompts no cache has seen
            streams = concurrent(lambda i: chat_stream(base_url, MODEL, prompts.essay(i, nonce), max_tokens,
                                                       extra=http_bias(bias)), n)
            ok = kept(system, f"{n} streams", streams, max_tokens)
            if len(ok) == n:  # a level with a failed stream gets no figure
                rows[f"agg_tps_c{n}"] = aggregate_tps(ok)
                rows[f"ttft_p50_ms_c{n}"] = median(s.ttft_s * 1000 for s in ok)
        print(f"  {system}: chat, cold history and next turn", flush=True)
        rows.update(chat_turn_rows(base_url, args.repeats, lambda what, streams: kept(system, what, streams)))
    rows.update(rss_start_mb=round(memory.start_mb, 1), rss_peak_mb=round(memory.peak_mb, 1),
                foreign_cpu_pct=cpu.result()["foreign_pct"])
    return rows


def measure_aiperf(system: str, base_url: str, tokenizer_dir: Path, args, bias: dict[int, float]) -> dict:
    rows: dict = {}
    for n in args.aiperf_concurrency:
        print(f"  {system}: aiperf, concurrency {n}, {args.aiperf_requests} requests", flush=True)
        try:
            result = aiperf_run.profile(base_url, MODEL, tokenizer_dir, RESULTS / "aiperf" / f"{system}-c{n}",
                                        concurrency=n, requests=args.aiperf_requests,
                                        extra_inputs={**http_bias(bias), "temperature": 0.0})
        except (RuntimeError, OSError) as error:
            FAILURES[system].append(f"aiperf c{n}: {error}")
            continue
        rows.update({f"aiperf_{k}_c{n}": v for k, v in result.items()})
    return rows


# ---------------------------------------------------------------- edge alone

def measure_edge_alone(frames: int = 2000, streams: int = 4) -> dict:
    """SSE frames/s of one gunicorn worker in front of a fake engine that answers instantly."""
    from inference_service.engine.types import (
        EmbeddingResult,
        EngineStatus,
        GenerationChunk,
        InferenceEngine,
        ModelDescription,
        ModelStatus,
        Usage,
    )
    from inference_service.errors import InvalidRequest
    from inference_service.server import create_server

    class InstantEngine(InferenceEngine):
        """Answers every stream with ``frames`` chunks at once: the edge is all that is timed."""

        def generate(self, request, cancelled=None, deadline=None):
            for i in range(frames - 1):
                yield GenerationChunk(text=" tok", token_ids=(i % 1000,))
            yield GenerationChunk(text="", finish_reason="length", usage=Usage(1, frames - 1))

        def models(self):
            return [ModelDescription(MODEL, 0, "bench", 4096, True, engine="instant")]

        def status(self):
            return EngineStatus(models=(ModelStatus(MODEL, slots=64, busy_slots=0, waiting=0, max_waiting=0),))

        def tokenize(self, model_name, text="", messages=(), raw=False):
            return [], []

        def embed(self, model_name, inputs, cancelled=None) -> EmbeddingResult:
            raise InvalidRequest("the instant engine computes no embeddings", "model")

    server = create_server(InstantEngine(), "127.0.0.1:0")
    rows = {}
    try:
        with start_edge(f"127.0.0.1:{server.port}", RESULTS, "edge_alone") as edge:
            def one(i: int) -> Stream:
                return chat_stream(edge.base_url, MODEL, [{"role": "user", "content": f"x{i}"}], frames,
                                   include_usage=False)

            for n in (1, streams):
                ok = kept("edge", f"edge alone, {n} streams", concurrent(one, n), frames - 1)
                rows[f"edge_alone_fps_{n}"] = aggregate_tps(ok) if len(ok) == n else None
    finally:
        server.server.stop(0)
    return rows


# ---------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="compute threads of every system: engine, service, peer (default: CPU count)")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=320)
    parser.add_argument("--slots", type=int, default=int(os.environ.get("INFERENCE_SLOTS", "2")))
    parser.add_argument("--concurrency", default="1,2,4,8", help="our harness's concurrency levels")
    parser.add_argument("--aiperf-concurrency", default="1,4")
    parser.add_argument("--aiperf-requests", type=int, default=20)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-suite", action="store_true", help="only single-stream rows (and no aiperf)")
    parser.add_argument("--skip-aiperf", action="store_true")
    args = parser.parse_args(argv)
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.aiperf_concurrency = [int(x) for x in args.aiperf_concurrency.split(",")]
    if not args.skip_aiperf and not args.skip_suite and not aiperf_run.AIPERF.exists():
        parser.error(f"{aiperf_run.AIPERF} missing: run bash bench/install_aiperf.sh (or pass --skip-aiperf)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop our servers
    from inference_service.models.registry import ModelRegistry

    model_file = ModelRegistry().resolve(MODEL).source_path
    RESULTS.mkdir(parents=True, exist_ok=True)
    busy = cpu_busy_fraction(1.0)
    header = (f"{MODEL} ({model_file.name}); {args.threads} compute threads for every system (ours: the cap, "
              f"adaptive policy); {args.slots} slots; {args.max_tokens} tokens a stream, median of {args.repeats} "
              f"after a warm-up; machine {busy:.0%} busy before the run")
    print(header, flush=True)
    with_aiperf = not (args.skip_aiperf or args.skip_suite)
    tokenizer = aiperf_run.write_tokenizer(model_file, RESULTS / "aiperf" / "tokenizer") if with_aiperf else None

    systems: dict[str, dict] = {}
    print("engine in process ...", flush=True)
    systems["engine"], end_of_turn = measure_in_process(args)

    print(f"gRPC service ({args.slots} slots) ...", flush=True)
    bias = prompts.no_eos_bias(end_of_turn)  # every system: EOS banned, exactly max_tokens tokens
    proc, address = start_service(args.slots, RESULTS, args.threads)
    try:
        with grpc.insecure_channel(address) as channel:
            if prompts.end_of_turn_ids_over_grpc(channel) != end_of_turn:
                raise SystemExit("the service and the engine disagree on the end-of-turn tokens")
        systems["grpc"] = measure_grpc(address, args, bias)
        print("REST edge on gunicorn ...", flush=True)
        with start_edge(address, RESULTS, "edge") as edge:
            systems["edge"] = measure_http("edge", edge.base_url, args, bias)
            if not args.skip_suite:
                systems["edge"].update(measure_suite("edge", edge.base_url, [proc.pid, edge.pid], args, bias))
            if with_aiperf:
                systems["edge"].update(measure_aiperf("edge", edge.base_url, tokenizer, args, bias))
    finally:
        stop_process(proc)

    if not args.skip_peer:
        print("peer: llama-cpp-python server ...", flush=True)
        with start_peer(model_file, RESULTS, args.threads) as peer:
            systems["peer"] = measure_http("peer", peer.base_url, args, bias)
            if not args.skip_suite:
                systems["peer"].update(measure_suite("peer", peer.base_url, [peer.pid], args, bias))
            if with_aiperf:
                systems["peer"].update(measure_aiperf("peer", peer.base_url, tokenizer, args, bias))

    print("edge alone, instant fake engine ...", flush=True)
    systems["edge"].update(measure_edge_alone())
    for name, failures in FAILURES.items():
        systems[name]["failed_requests"] = len(failures)

    summary = ratios(systems)
    write_report(systems, reference="peer" if "peer" in systems else "engine", header=header,
                 meta={"model": MODEL, "threads": args.threads, "slots": args.slots, "max_tokens": args.max_tokens,
                       "repeats": args.repeats, "cpu_busy_before": busy, "summary": summary,
                       "failures": dict(FAILURES), "when": time.strftime("%Y-%m-%d %H:%M")})
    print("\nratios (this run):")
    for k, v in summary.items():
        print(f"  {k:44s} {v:8.3f}")
    return 1 if print_failures(FAILURES, "their rows count only the successes") else 0


def ratios(systems: dict[str, dict]) -> dict[str, float]:
    def ratio(a, b):
        return a / b if a is not None and b else None

    e, g, h = systems["engine"], systems["grpc"], systems["edge"]
    out = {"grpc/engine decode tok/s": ratio(g.get("decode_tps"), e.get("decode_tps")),
           "grpc - engine TTFT (ms)": g["ttft_ms"] - e["ttft_ms"] if g.get("ttft_ms") and e.get("ttft_ms") else None,
           "grpc - engine prompt eval (ms)": (g["prompt_ttft_ms"] - e["prompt_ttft_ms"]
                                              if g.get("prompt_ttft_ms") and e.get("prompt_ttft_ms") else None),
           "edge/engine decode tok/s": ratio(h.get("decode_tps"), e.get("decode_tps"))}
    if "peer" in systems:
        p = systems["peer"]
        out["edge/peer decode tok/s"] = ratio(h.get("decode_tps"), p.get("decode_tps"))
        out["edge/peer TTFT"] = ratio(h.get("ttft_ms"), p.get("ttft_ms"))
    for name in ("edge", "peer"):  # the same quantity, two harnesses: 1 stream's decode rate
        s = systems.get(name, {})
        if s.get("aiperf_itl_p50_ms_c1"):
            out[f"{name}: aiperf (1000/ITL p50) / ours decode tok/s"] = ratio(1000 / s["aiperf_itl_p50_ms_c1"],
                                                                           s.get("decode_tps"))
    return {k: v for k, v in out.items() if v is not None}


if __name__ == "__main__":
    sys.exit(main())
