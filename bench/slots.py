"""`make bench-slots`: which slot count serves a 2-core machine best, for one stream and many.

In process (no transport), greedy, EOS banned so every stream makes exactly --max-tokens
tokens. For each slot count: aggregate tokens/s and median TTFT at 1, 2 and 4 concurrent
streams. Threads are split among the slots computing at once (the engine's rule).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference_service.engine.engine import Engine, EngineConfig  # noqa: E402
from inference_service.engine.types import ChatMessage, GenerationRequest, SamplingParams  # noqa: E402
from inference_service.models.registry import ModelRegistry  # noqa: E402

MODEL = "smollm2:135m"


def run_streams(engine: Engine, n: int, max_tokens: int) -> tuple[float, float]:
    ttfts: list[float] = []
    tokens: list[int] = []
    start = time.perf_counter()

    def one(i: int) -> None:
        request = GenerationRequest(
            model=MODEL,
            messages=(ChatMessage("user", f"[{i}-{time.time_ns()}] Write a story about a harbour."),),
            max_tokens=max_tokens,
            sampling=SamplingParams(temperature=0.0, logit_bias={0: -100.0, 2: -100.0}),
        )
        t0 = time.perf_counter()
        count = 0
        for chunk in engine.generate(request):
            if count == 0 and chunk.token_ids:
                ttfts.append(time.perf_counter() - t0)
            count += len(chunk.token_ids)
        tokens.append(count)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return sum(tokens) / elapsed, statistics.median(ttfts) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", default="1,2,4")
    parser.add_argument("--streams", default="1,2,4")
    parser.add_argument("--max-tokens", type=int, default=100)
    args = parser.parse_args()
    model_file = ModelRegistry().resolve(MODEL)
    streams = [int(s) for s in args.streams.split(",")]
    print(f"{'slots':>5} " + " ".join(f"{f'{n} streams tok/s':>16} {f'TTFT ms':>8}" for n in streams))
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
