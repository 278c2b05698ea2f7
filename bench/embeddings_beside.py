"""`make bench-embeddings-beside`: a chat stream's decode speed beside embeddings requests.

One service (llama.cpp engine, --slots 4) and the edge on the default model. Each round, the
same greedy single stream (end of turn banned) three ways:

* alone, before any embeddings request of this launch;
* after one embeddings request (answered and over: nothing runs beside the stream);
* while another client sends embeddings requests back to back.

Each round is a new launch, so "alone" is really before any embeddings. The table shows the
median decode tok/s of each and their ratios to "alone"; below it, the embeddings' own rate
alone and beside the stream (texts/s, requests that ended while the stream ran). A service that ran llama.cpp's
compute on more than one thread (before inference_service/engine/compute_thread.py) showed
"after" at about 0.6x for the rest of its life. Run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import prompts  # noqa: E402
from bench.engines import RESULTS, end_of_generation_ids  # noqa: E402
from bench.prompts import MODEL, http_bias  # noqa: E402
from bench.servers import start_edge, start_service  # noqa: E402
from bench.sse import chat_stream, make_clients  # noqa: E402
from harness.processes import stop_process  # noqa: E402

WAYS = ("alone", "after embeddings", "while embedding")
TEXTS = [f"Passage {i}: the harbour town keeps its old lighthouse, its fish market and its ferry." for i in range(16)]


def decode_tps(base_url: str, max_tokens: int, bias: dict) -> float:
    stream = chat_stream(base_url, MODEL, [{"role": "user", "content": prompts.story(str(time.time_ns()))}],
                         max_tokens, extra=http_bias(bias))
    if stream.error or stream.completion_tokens != max_tokens:
        raise SystemExit(f"the chat stream failed: {stream.error or stream.completion_tokens}")
    return stream.decode_tps


def embed(client: httpx.Client, base_url: str) -> None:
    answer = client.post(f"{base_url}/v1/embeddings", json={"model": MODEL, "input": TEXTS}, timeout=120)
    answer.raise_for_status()


def one_launch(args, bias: dict) -> dict[str, float]:
    proc, address = start_service(4, RESULTS, args.threads, engine="llamacpp", name="embeddings-beside-service")
    try:
        with start_edge(address, RESULTS, "embeddings-beside-edge") as edge, httpx.Client() as client:
            url = edge.base_url

            def median_decode_tps() -> float:
                return statistics.median(decode_tps(url, args.max_tokens, bias) for _ in range(args.repeats))

            decode_tps(url, args.max_tokens, bias)  # warm-up
            rows = {"alone": median_decode_tps()}
            started = time.perf_counter()
            embed(client, url)
            rows["embed alone"] = len(TEXTS) / (time.perf_counter() - started)
            rows["after embeddings"] = median_decode_tps()
            stop = threading.Event()
            embedded: list[float] = []
            failed: list[BaseException] = []

            def keep_embedding():
                try:  # on the client made before measuring (a new one is a burst of CPU: bench.sse)
                    while not stop.is_set():
                        embed(client, url)
                        embedded.append(time.perf_counter())
                except Exception as error:  # reported below: a silent 0 texts/s would be a lie
                    failed.append(error)

            embedder = threading.Thread(target=keep_embedding, daemon=True)
            embedder.start()
            started = time.perf_counter()
            try:
                rows["while embedding"] = median_decode_tps()
                ended = time.perf_counter()
                done = [t for t in embedded if t <= ended]
                rows["embed beside"] = len(TEXTS) * len(done) / (ended - started)
            finally:
                stop.set()
                embedder.join(120)
            if failed:
                raise SystemExit(f"the embeddings client failed: {failed[0]!r}")
            return rows
    finally:
        stop_process(proc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="launches of the service")
    parser.add_argument("--repeats", type=int, default=3, help="streams per way and launch")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from inference_service.models.registry import ModelRegistry

    bias = prompts.no_eos_bias(end_of_generation_ids(ModelRegistry().resolve(MODEL).source_path))
    make_clients(args.repeats + 2)
    rounds = []
    for r in range(args.rounds):
        rounds.append(one_launch(args, bias))
        print(f"round {r + 1}: " + ", ".join(f"{w} {v:.1f}" for w, v in rounds[-1].items()), flush=True)
    print(f"\nsingle-stream decode, tok/s (median of {args.rounds} launches x {args.repeats} streams, "
          f"{args.max_tokens} tokens, llama.cpp engine, {args.threads} threads, through the edge)\n")
    print("| | tok/s | / alone |\n| --- | ---: | ---: |")
    for way in WAYS:
        value = statistics.median(r[way] for r in rounds)
        ratio = statistics.median(r[way] / r["alone"] for r in rounds)
        print(f"| {way} | {value:.1f} | {ratio:.2f}x |")
    alone = statistics.median(r["embed alone"] for r in rounds)
    beside = statistics.median(r["embed beside"] for r in rounds)
    print(f"\nembeddings: {alone:.1f} texts/s alone, {beside:.1f} while the stream decoded "
          f"({beside / alone:.2f}x; {len(TEXTS)} texts a request, back to back)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
