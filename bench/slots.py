"""`make bench-slots`: which slot count serves a 2-core machine best, for one stream and many.

In process (no transport), greedy, end-of-turn tokens banned so every stream makes exactly --max-tokens
tokens. For each slot count: aggregate tokens/s and median TTFT at 1, 2 and 4 concurrent
streams. Threads are split among the slots computing at once (the engine's rule).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import aggregate_tps, concurrent, median, successes, time_pieces  # noqa: E402
from bench.prompts import MODEL, end_of_turn_ids_in_process, no_eos_bias  # noqa: E402
from inference_service.engine.engine import Engine, EngineConfig  # noqa: E402
from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402
from inference_service.models.registry import ModelRegistry  # noqa: E402


def run_streams(engine: Engine, n: int, max_tokens: int) -> tuple[float, float]:
    """n streams at once: aggregate tokens/s and median TTFT (ms)."""
    sampling = SamplingParams(temperature=0.0, logit_bias=no_eos_bias(end_of_turn_ids_in_process(engine)))

    def one(i: int):
        request = GenerationRequest(
            model=MODEL,
            messages=(ChatMessage("user", f"[{i}-{time.time_ns()}] Write a story about a harbour."),),
            max_tokens=max_tokens,
            sampling=sampling,
        )
        return time_pieces(lambda: engine.generate(request), lambda chunk: len(chunk.token_ids))

    ok, failed = successes(concurrent(one, n), max_tokens)
    if failed:
        raise SystemExit(f"{len(failed)} of {n} streams failed: {failed[:3]}")
    return aggregate_tps(ok), median(s.ttft_s for s in ok) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", default="1,2,4")
    parser.add_argument("--streams", default="1,2,4")
    parser.add_argument("--max-tokens", type=int, default=100)
    args = parser.parse_args()
    model_file = ModelRegistry().resolve(MODEL)
    streams = [int(s) for s in args.streams.split(",")]
    print(f"{'slots':>5} " + " ".join(f"{f'{n} streams tok/s':>16} {'TTFT ms':>8}" for n in streams))
    for slots in (int(s) for s in args.slots.split(",")):
        engine = Engine.load([model_file], EngineConfig(slots=slots, max_waiting=64))
        engine.warm_up()
        cells = []
        for n in streams:
            tps, ttft = run_streams(engine, n, args.max_tokens)
            cells.append(f"{tps:16.1f} {ttft:8.0f}")
        print(f"{slots:>5} " + " ".join(cells), flush=True)
        del engine
    return 0


if __name__ == "__main__":
    sys.exit(main())
