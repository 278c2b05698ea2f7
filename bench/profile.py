"""`make profile`: where the service's time goes while it streams, as py-spy flame graphs.

Starts the real service (llama.cpp engine, 4 slots unless told otherwise), records it with
py-spy (Python frames of every thread) while gRPC clients stream: one
stream, then --streams at once, sampling as chat clients do (temperature 0.8, top_p 0.95).
Writes bench/results/profile-<label>.svg (open it in a browser) and a text summary of the
hottest frames, own time and inclusive, to stdout and bench/results/profile-<label>.txt.

    python bench/profile.py --label after
    python bench/profile.py --label before --checkout /path/to/an/older/worktree

Run it on a quiet machine: py-spy takes a share of a core itself.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench.prompts import MODEL  # noqa: E402
from bench.servers import start_service  # noqa: E402
from harness.processes import stop_process  # noqa: E402
from inference_service.v1 import inference_pb2 as pb  # noqa: E402
from inference_service.v1 import inference_pb2_grpc as rpc  # noqa: E402

RESULTS = REPO / "bench" / "results"


def stream(stub, i: int, tokens: int) -> int:
    request = pb.GenerateRequest(model=MODEL, max_tokens=tokens, temperature=0.8, top_p=0.95, seed=i,
                                 ignore_eos=True)
    request.messages.add(role="user", content=f"{i}. Write a long story about a dragon and a lighthouse.")
    return sum(len(r.token_ids) for r in stub.Generate(request, timeout=600))


def load(address: str, streams: int, tokens: int) -> tuple[int, float]:
    """One stream, then ``streams`` at once: (tokens streamed, seconds)."""
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        stub = rpc.InferenceServiceStub(channel)
        total = stream(stub, 0, tokens)
        counts = [0] * streams
        workers = [threading.Thread(target=lambda k=k: counts.__setitem__(k, stream(stub, k + 1, tokens)))
                   for k in range(streams)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return total + sum(counts), time.monotonic() - started


# Leaf frames of threads blocked, not working (py-spy does not always see them as idle).
WAITING = ("Condition.wait (", "_consume (inference_service/engine/handoff.py", "serve (inference_service/server.py",
           "_serve (grpc/_server.py")


def summary(raw: Path, top: int = 25) -> str:
    """Own and inclusive sample counts per frame from py-spy's raw (collapsed) output, the
    samples of blocked threads left out."""
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if frames[-1].startswith(WAITING):
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples of working threads (the llama.cpp decode included; blocked threads left out)", "", "own time:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="after", help="names the outputs: profile-<label>.svg/.txt")
    parser.add_argument("--engine", default="llamacpp", choices=("llamacpp", "ctransformers"))
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--streams", type=int, default=4, help="streams at once after the single one")
    parser.add_argument("--tokens", type=int, default=300, help="tokens a stream")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples a second")
    parser.add_argument("--checkout", type=Path, default=REPO,
                        help="the tree whose service is profiled (e.g. a worktree of an older commit)")
    parser.add_argument("--py-spy", default=str(Path(sys.executable).parent / "py-spy"))
    args = parser.parse_args(argv)
    if not Path(args.py_spy).exists():
        parser.error(f"{args.py_spy} missing: pip install py-spy (make profile does)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    svg, raw = RESULTS / f"profile-{args.label}.svg", RESULTS / f"profile-{args.label}.raw"
    proc, address = start_service(args.slots, RESULTS, engine=args.engine, name=f"profile-{args.label}-service",
                                  cwd=args.checkout)
    try:
        stream(rpc.InferenceServiceStub(grpc.insecure_channel(address)), 99, 8)  # warm
        common = [args.py_spy, "record", "--pid", str(proc.pid), "--rate", str(args.rate), "--nonblocking"]
        recorders = [subprocess.Popen(common + ["--format", fmt, "--output", str(path)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL) for fmt, path in (("flamegraph", svg), ("raw", raw))]
        time.sleep(1.0)  # both attached
        tokens, seconds = load(address, args.streams, args.tokens)
        for recorder in recorders:
            recorder.send_signal(2)  # py-spy writes its output on SIGINT
        for recorder in recorders:
            recorder.wait(timeout=60)
    finally:
        stop_process(proc)
    text = (f"{args.engine}, {args.slots} slots, checkout {args.checkout}: {tokens} tokens in {seconds:.1f} s "
            f"(1 stream, then {args.streams} at once, {args.tokens} tokens each)\n" + summary(raw))
    (RESULTS / f"profile-{args.label}.txt").write_text(text + "\n")
    raw.unlink(missing_ok=True)
    print(text)
    print(f"\nflame graph: {svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
