"""`make bench-threads`: where 2 compute threads stop beating 1, by how much of a core a
neighbour takes (what the adaptive thread policy's margins rest on: engine/cpu_budget.py).

In this process: two llama.cpp engines on the default model, one with 1 and one with 2 fixed
compute threads. For each neighbour load (a process busy that fraction of every 10 ms), both
run --repeats greedy single streams of --max-tokens tokens (end of turn banned), alternating
and in reversed order every other repeat; the table shows the median decode tok/s of each
and their ratio. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import prompts  # noqa: E402
from bench.prompts import MODEL  # noqa: E402

BUSY_FRACTION_OF_EVERY_10_MS = """
import sys, time
duty, period = float(sys.argv[1]), 0.01
while True:
    started = time.perf_counter()
    while time.perf_counter() - started < duty * period:
        pass
    time.sleep(period * (1 - duty))
"""


def decode_tps(engine, max_tokens: int, bias: dict[int, float]) -> float:
    from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams

    request = GenerationRequest(model=MODEL, messages=(ChatMessage("user", prompts.story(str(time.time_ns()))),),
                                max_tokens=max_tokens, sampling=SamplingParams(temperature=0.0, logit_bias=bias))
    first, tokens = None, 0
    for chunk in engine.generate(request):
        if first is None:
            first = time.perf_counter()
            continue
        tokens += len(chunk.token_ids)
    return tokens / (time.perf_counter() - first)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default="0,0.2,0.35,0.5,0.7,1.0", help="neighbour loads, fractions of a core")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=150)
    args = parser.parse_args(argv)

    from bench.engines import end_of_generation_ids
    from inference_service.engine.engine import Engine, EngineConfig
    from inference_service.models.registry import ModelRegistry

    model = ModelRegistry().resolve(MODEL)
    bias = prompts.no_eos_bias(end_of_generation_ids(model.source_path))
    engines = {threads: Engine.load([model], EngineConfig(slots=1, threads=threads, thread_policy="fixed",
                                                          engine="llamacpp"))
               for threads in (1, 2)}
    for engine in engines.values():
        engine.warm_up()
    print("| neighbour, cores | 1 thread, tok/s | 2 threads, tok/s | 2 / 1 |")
    print("|---:|---:|---:|---:|")
    try:
        for load in (float(x) for x in args.loads.split(",")):
            neighbour = (subprocess.Popen([sys.executable, "-c", BUSY_FRACTION_OF_EVERY_10_MS, str(load)])
                         if load > 0 else None)
            try:
                time.sleep(0.5)
                rates: dict[int, list[float]] = {1: [], 2: []}
                for repeat in range(args.repeats):
                    for threads in ((1, 2) if repeat % 2 == 0 else (2, 1)):
                        rates[threads].append(decode_tps(engines[threads], args.max_tokens, bias))
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
            one, two = statistics.median(rates[1]), statistics.median(rates[2])
            print(f"| {load:.2f} | {one:.1f} | {two:.1f} | {two / one:.2f}x |", flush=True)
    finally:
        for engine in engines.values():
            engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
