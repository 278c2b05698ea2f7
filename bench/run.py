"""`make bench`: one run, one table, one chart.

Measures on the same model file, one after another (never two at once: on 2 cores two
CPU-heavy processes slow each other badly):

1. engine   — the engine called in process (no transport);
2. grpc     — the same requests through the real gRPC service (a subprocess);
3. edge     — the real REST edge on gunicorn in front of that service (OpenAI SSE);
4. peer     — llama-cpp-python's own OpenAI server (``.bench-venv``, bench/install_peer.sh);
5. edge alone against an instant fake engine: SSE frames per second per worker.

Every ratio is computed within this run. Results: bench/results/bench.{json,png}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench import openai_load as load  # noqa: E402
from bench.report import write_report  # noqa: E402

MODEL = "smollm2:135m"
# EOS and <|im_end|> banned so every system generates exactly max_tokens tokens.
NO_EOS_BIAS = {2: -100.0, 0: -100.0}
STORY = [{"role": "user", "content": "Write a long story about a lighthouse keeper and a storm."}]


def _prompt_of_tokens(n: int, nonce: str) -> str:
    base = ("The quick brown fox jumps over the lazy dog while the harbour bells ring and "
            "the fishermen mend their nets under a grey northern sky. ")
    return f"[{nonce}] " + base * (n // 28 + 1)


def _summarise(samples: list[dict]) -> dict:
    keys = samples[0].keys()
    return {k: statistics.median(s[k] for s in samples) for k in keys}


def _timed(chunks, count) -> dict:
    """Times an iterator of stream pieces: TTFT, decode tok/s over tokens after the first piece."""
    t0 = time.perf_counter()
    first = last = None
    tokens_after_first = 0
    total = 0
    for piece in chunks:
        n = count(piece)
        if n == 0:
            continue
        now = time.perf_counter()
        if first is None:
            first = now
        else:
            tokens_after_first += n
        last = now
        total += n
    return {
        "ttft_ms": (first - t0) * 1000,
        "decode_tps": tokens_after_first / (last - first) if last > first else 0.0,
        "tokens": total,
    }


# ---------------------------------------------------------------- engine in process / gRPC

def engine_requests(max_tokens: int, nonce: str, prompt_tokens: int):
    from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams

    sampling = SamplingParams(temperature=0.0, logit_bias={**NO_EOS_BIAS, 2: -100.0})
    decode = GenerationRequest(model=MODEL, messages=(ChatMessage("user", f"[{nonce}] " + STORY[0]["content"]),),
                               max_tokens=max_tokens, sampling=sampling)
    prompt = GenerationRequest(model=MODEL, prompt=_prompt_of_tokens(prompt_tokens, nonce), raw=True,
                               max_tokens=1, sampling=sampling)
    return decode, prompt


def measure_in_process(max_tokens: int, repeats: int, prompt_tokens: int, slots: int) -> dict:
    from inference_service.engine.engine import Engine, EngineConfig
    from inference_service.models.registry import ModelRegistry

    engine = Engine.load([ModelRegistry().resolve(MODEL)], EngineConfig(slots=slots))
    engine.warm_up()
    decode_runs, prompt_runs = [], []
    for i in range(repeats):
        decode, prompt = engine_requests(max_tokens, f"e{i}{time.time_ns()}", prompt_tokens)
        decode_runs.append(_timed(engine.generate(decode), lambda c: len(c.token_ids)))
        n_prompt = len(engine.prepare(prompt).prompt_ids)
        t0 = time.perf_counter()
        for _ in engine.generate(prompt):
            pass
        prompt_runs.append({"prompt_tps": n_prompt / (time.perf_counter() - t0),
                            "prompt_ttft_ms": (time.perf_counter() - t0) * 1000, "prompt_tokens": n_prompt})
    return {**_summarise(decode_runs), **_summarise(prompt_runs)}


def measure_grpc(address: str, max_tokens: int, repeats: int, prompt_tokens: int) -> dict:
    from inference_service import convert  # noqa: F401  (same process layout as clients)
    from inference_service.v1 import inference_pb2 as pb
    from inference_service.v1 import inference_pb2_grpc as pb_grpc

    stub = pb_grpc.InferenceServiceStub(grpc.insecure_channel(address))
    list(stub.Generate(pb.GenerateRequest(model=MODEL, prompt="warm", raw=True, max_tokens=2)))
    decode_runs, prompt_runs = [], []
    for i in range(repeats):
        nonce = f"g{i}{time.time_ns()}"
        decode = pb.GenerateRequest(model=MODEL, messages=[pb.ChatMessage(role="user", content=f"[{nonce}] " + STORY[0]["content"])],
                                    max_tokens=max_tokens, temperature=0.0, logit_bias=NO_EOS_BIAS)
        decode_runs.append(_timed(stub.Generate(decode), lambda r: len(r.token_ids)))
        prompt = pb.GenerateRequest(model=MODEL, prompt=_prompt_of_tokens(prompt_tokens, nonce), raw=True,
                                    max_tokens=1, temperature=0.0)
        t0 = time.perf_counter()
        usage = None
        for r in stub.Generate(prompt):
            usage = r.usage if r.HasField("usage") else usage
        elapsed = time.perf_counter() - t0
        prompt_runs.append({"prompt_tps": usage.prompt_tokens / elapsed, "prompt_ttft_ms": elapsed * 1000,
                            "prompt_tokens": usage.prompt_tokens})
    return {**_summarise(decode_runs), **_summarise(prompt_runs)}


def measure_http(base_url: str, max_tokens: int, repeats: int) -> dict:
    """The same decode request as in process, as an OpenAI streamed chat (edge or peer)."""
    runs = []
    bias = {str(k): v for k, v in NO_EOS_BIAS.items()}
    for i in range(repeats + 1):  # the first is a warm-up
        messages = [{"role": "user", "content": f"[h{i}{time.time_ns()}] " + STORY[0]["content"]}]
        r = load.measure_stream(base_url, MODEL, messages, max_tokens, temperature=0.0,
                                extra={"logit_bias": bias})
        if not r.ok:
            raise SystemExit(f"stream against {base_url} failed: {r.error}")
        if i:
            runs.append({"ttft_ms": r.ttft_s * 1000, "decode_tps": r.decode_tps, "tokens": r.completion_tokens})
    return _summarise(runs)


# ---------------------------------------------------------------- processes

def start_service(slots: int, log_dir: Path):
    address = f"127.0.0.1:{load.free_port()}"
    log = (log_dir / "service.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "inference_service", "serve", "--address", address,
                             "--slots", str(slots), "--max-waiting", "64"],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"service exited; see {log_dir / 'service.log'}")
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                return proc, address
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise SystemExit("service did not become SERVING")


def start_edge(target: str, log_dir: Path, name: str, workers: int = 1, threads: int = 16):
    port = load.free_port()
    env = dict(os.environ, INFERENCE_TARGET=target, EDGE_BIND=f"127.0.0.1:{port}",
               EDGE_WORKERS=str(workers), EDGE_THREADS=str(threads), EDGE_LOG_LEVEL="warning")
    argv = [str(Path(sys.executable).with_name("gunicorn")), "-c", "python:rest_edge.gunicorn_conf",
            "--access-logfile", "/dev/null"]
    return load.start_server(argv, f"http://127.0.0.1:{port}", None, log_path=str(log_dir / f"{name}.log"),
                             env=env, cwd=str(REPO))


# ---------------------------------------------------------------- edge alone

def measure_edge_alone(log_dir: Path, frames: int = 2000, streams: int = 4) -> dict:
    """SSE frames/s of one gunicorn worker in front of a fake engine that answers instantly."""
    from inference_service.engine.types import GenerationChunk, Usage
    from inference_service.server import create_server

    class InstantEngine:
        def generate(self, request, cancelled=None, deadline=None):
            for i in range(frames - 1):
                yield GenerationChunk(text=" tok", token_ids=(i % 1000,))
            yield GenerationChunk(text="", finish_reason="length", usage=Usage(1, frames))

        def models(self):
            from inference_service.engine.types import ModelDescription
            return [ModelDescription(MODEL, 0, "bench", 4096, True)]

    server = create_server(InstantEngine(), "127.0.0.1:0")
    try:
        with start_edge(f"127.0.0.1:{server.port}", log_dir, "edge_alone") as edge:
            def one(results, i):
                r = load.measure_stream(edge.base_url, MODEL, [{"role": "user", "content": f"x{i}"}],
                                        max_tokens=frames, include_usage=False)
                results.append(r)
            single: list = []
            t0 = time.perf_counter()
            one(single, 0)
            single_fps = single[0].content_frames / (time.perf_counter() - t0)
            many: list = []
            threads = [threading.Thread(target=one, args=(many, i)) for i in range(streams)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            many_fps = sum(r.content_frames for r in many) / (time.perf_counter() - t0)
    finally:
        server.server.stop(0)
    return {"edge_alone_fps_1": single_fps, f"edge_alone_fps_{streams}": many_fps}


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=320)
    parser.add_argument("--slots", type=int, default=int(os.environ.get("INFERENCE_SLOTS", "2")))
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-suite", action="store_true", help="only single-stream rows")
    args = parser.parse_args(argv)
    concurrency = tuple(int(x) for x in args.concurrency.split(","))
    log_dir = REPO / "bench" / "results"
    log_dir.mkdir(parents=True, exist_ok=True)
    from inference_service.models.registry import ModelRegistry
    model_file = ModelRegistry().resolve(MODEL)

    systems: dict[str, dict] = {}
    print("engine in process ...", flush=True)
    systems["engine"] = measure_in_process(args.max_tokens, args.repeats, args.prompt_tokens, args.slots)

    print(f"gRPC service ({args.slots} slots) ...", flush=True)
    proc, address = start_service(args.slots, log_dir)
    try:
        systems["grpc"] = measure_grpc(address, args.max_tokens, args.repeats, args.prompt_tokens)
        print("REST edge on gunicorn ...", flush=True)
        with start_edge(address, log_dir, "edge") as edge:
            systems["edge"] = measure_http(edge.base_url, args.max_tokens, args.repeats)
            if not args.skip_suite:
                suite = load.run_suite(edge.base_url, MODEL, pid=proc.pid, max_tokens=args.max_tokens // 2,
                                       concurrency=concurrency)
                systems["edge"].update({k: v for k, v in suite["metrics"].items()
                                        if k not in ("ttft_ms", "decode_tps", "stream_total_s")})
    finally:
        load.stop_process(proc)

    if not args.skip_peer:
        print("peer: llama-cpp-python server ...", flush=True)
        with load.start_peer(str(model_file.source_path), log_path=str(log_dir / "peer.log")) as peer:
            systems["peer"] = measure_http(peer.base_url, args.max_tokens, args.repeats)
            if not args.skip_suite:
                suite = load.run_suite(peer.base_url, MODEL, pid=peer.pid, max_tokens=args.max_tokens // 2,
                                       concurrency=concurrency)
                systems["peer"].update({k: v for k, v in suite["metrics"].items()
                                        if k not in ("ttft_ms", "decode_tps", "stream_total_s")})

    print("edge alone, instant fake engine ...", flush=True)
    systems["edge"].update(measure_edge_alone(log_dir))

    e, g = systems["engine"], systems["grpc"]
    summary = {
        "grpc/engine decode tok/s": g["decode_tps"] / e["decode_tps"],
        "grpc - engine TTFT (ms)": g["ttft_ms"] - e["ttft_ms"],
        "grpc - engine prompt eval (ms)": g["prompt_ttft_ms"] - e["prompt_ttft_ms"],
        "edge/engine decode tok/s": systems["edge"]["decode_tps"] / e["decode_tps"],
    }
    if "peer" in systems:
        summary["edge/peer decode tok/s"] = systems["edge"]["decode_tps"] / systems["peer"]["decode_tps"]
        summary["edge/peer TTFT"] = systems["edge"]["ttft_ms"] / systems["peer"]["ttft_ms"]
    write_report(systems, reference="peer" if "peer" in systems else "engine",
                 meta={"max_tokens": args.max_tokens, "slots": args.slots, "repeats": args.repeats,
                       "summary": summary})
    print("\nratios (this run):")
    for k, v in summary.items():
        print(f"  {k:34s} {v:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
