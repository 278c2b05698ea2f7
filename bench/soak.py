"""``make soak``: mixed hostile traffic against the real service and edge, watching memory.

16 clients (``--clients``) for 2 minutes (``--seconds``) mix, at random: streamed chats read to
the end, non-streamed completions, streams the client abandons at a random point (before the
first token included), non-streamed requests abandoned mid-generation, prompts beyond the
context (400 expected; up to 600 kB), and long prompts that fill the KV cache far. It prints

* failures: any answer other than 2xx, the expected 400 for over-long prompts, and 429;
* RSS and anonymous memory (``Pss_Anon`` of /proc/PID/smaps_rollup) of the service at start,
  after warm-up and at the end (growth after warm-up should stay under 10%), beside the bound
  docs/operations.md documents (slots x KV cache at the configured context + a constant);
* the service's CPU time in the seconds after the clients stop (should be about 0: no work
  of departed clients goes on) and its GetStatus totals.

Every request goes to loopback only; loops are bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.procfs import proc_ticks  # noqa: E402
from bench.prompts import filler_text  # noqa: E402
from bench.servers import start_edge, start_service  # noqa: E402
from harness.processes import stop_process  # noqa: E402
from inference_service.engine.memory import kv_cache_bytes  # noqa: E402
from inference_service.models.registry import ModelRegistry  # noqa: E402
from inference_service.v1 import inference_pb2 as pb  # noqa: E402
from inference_service.v1 import inference_pb2_grpc as pb_grpc  # noqa: E402

MODEL = "smollm2:135m"
# The memory bound of docs/operations.md: Pss_Anon <= BASE_ANON_MB + slots x SLOT_OVERHEAD x KV cache.
BASE_ANON_MB = 200
SLOT_OVERHEAD = 1.15  # the compute buffer beside each KV cache (measured: about 5%)


def memory_mb(pid: int) -> dict:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup[1:] if line.endswith("kB")}
    return {"rss_mb": round(fields["Rss"] / 1024, 1), "pss_anon_mb": round(fields["Pss_Anon"] / 1024, 1)}


def cpu_seconds(pid: int) -> float:
    return proc_ticks(pid) / 100.0


class Client:
    """One soak client: picks an action at random, records its outcome."""

    def __init__(self, base_url: str, rng: random.Random, outcomes: Counter, failures: list, lock: threading.Lock):
        self.base_url = base_url
        self.rng = rng
        self.outcomes = outcomes
        self.failures = failures
        self.lock = lock
        self.http = httpx.Client(base_url=base_url, timeout=httpx.Timeout(120.0, connect=10.0))

    def record(self, action: str, outcome: str, ok: bool, detail: str = "") -> None:
        with self.lock:
            self.outcomes[(action, outcome)] += 1
            if not ok:
                self.failures.append(f"{action}: {outcome} {detail[:200]}")

    def status_outcome(self, action: str, status: int, text: str, expected: tuple[int, ...] = (200,)) -> None:
        ok = status in expected or status == 429
        self.record(action, str(status), ok, text)

    def run_one(self) -> None:
        roll = self.rng.random()
        try:
            if roll < 0.30:
                self.stream_to_end()
            elif roll < 0.50:
                self.non_stream()
            elif roll < 0.70:
                self.abandon_stream()
            elif roll < 0.82:
                self.abandon_non_stream()
            elif roll < 0.90:
                self.over_long_prompt()
            else:
                self.long_prompt()
        except httpx.HTTPError as exc:
            self.record("request", type(exc).__name__, False, str(exc))

    def chat_body(self, **extra) -> dict:
        words = filler_text(self.rng, self.rng.randint(1, 6))
        return {"model": MODEL, "messages": [{"role": "user", "content": words}],
                "temperature": self.rng.choice([0, 0.7, 1.0]), **extra}

    def stream_to_end(self) -> None:
        body = self.chat_body(stream=True, max_tokens=self.rng.randint(8, 64))
        with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
            text = "".join(r.iter_text())
            ok = r.status_code == 200 and text.rstrip().endswith("data: [DONE]")
            self.status_outcome("stream", r.status_code if ok or r.status_code != 200 else 599, text)

    def non_stream(self) -> None:
        body = {"model": MODEL, "prompt": filler_text(self.rng, 2), "max_tokens": self.rng.randint(8, 48)}
        r = self.http.post("/v1/completions", json=body)
        self.status_outcome("non-stream", r.status_code, r.text)

    def abandon_stream(self) -> None:
        frames = self.rng.randint(0, 12)
        body = self.chat_body(stream=True, max_tokens=200)
        with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                self.status_outcome("abandoned stream", r.status_code, r.read().decode(errors="replace"))
                return
            for i, _ in enumerate(r.iter_lines()):
                if i >= frames:
                    break
        self.record("abandoned stream", "left", True)

    def abandon_non_stream(self) -> None:
        """A raw socket, so the departure can come at any moment, before any answer."""
        body = json.dumps({"model": MODEL, "prompt": filler_text(self.rng, 3), "max_tokens": 300}).encode()
        host, port = self.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(self.rng.uniform(0.05, 1.5))
        self.record("abandoned non-stream", "left", True)

    def over_long_prompt(self) -> None:
        """Beyond the context: 26 kB, 200 kB (tokenized, then refused) or 600 kB (refused untokenized)."""
        body = {"model": MODEL, "prompt": filler_text(self.rng, self.rng.choice([400, 3000, 8000])),
                "max_tokens": 16}
        r = self.http.post("/v1/completions", json=body)
        self.status_outcome("over-long prompt", r.status_code, r.text, expected=(400,))

    def long_prompt(self) -> None:
        """About 1,500 prompt tokens: the KV cache is written far into the context."""
        body = {"model": MODEL, "prompt": filler_text(self.rng, 90), "max_tokens": 8,
                "stream": self.rng.random() < 0.5}
        r = self.http.post("/v1/completions", json=body)
        self.status_outcome("long prompt", r.status_code, r.text)


def fill_every_slot(base_url: str, address: str, slots: int, context_length: int) -> None:
    """Prompts just short of the context on every slot at once: each KV cache is now resident
    in full, as it is on any service that has run long enough, so later growth is a leak."""
    rng = random.Random(0)
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        text = ""
        while True:
            longer = text + " " + filler_text(rng, 10)
            tokens = len(stub.Tokenize(pb.TokenizeRequest(model=MODEL, text=longer), timeout=30).token_ids)
            if tokens > context_length - 64:
                break
            text = longer
    bodies = [{"model": MODEL, "prompt": f"{i} {text}", "raw": True, "max_tokens": 2} for i in range(slots)]
    with httpx.Client(base_url=base_url, timeout=600) as http:
        threads = [threading.Thread(target=http.post, args=("/v1/completions",), kwargs={"json": b}) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def run_clients(base_url: str, clients: int, seconds: float, seed: int, outcomes: Counter, failures: list) -> None:
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def loop(i: int) -> None:
        client = Client(base_url, random.Random(seed * 1000 + i), outcomes, failures, lock)
        try:
            while time.monotonic() < end:
                client.run_one()
        finally:
            client.http.close()

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 300)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--warm-up", type=float, default=30.0, help="seconds of traffic before the warm-up sample")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    log_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    service, address = start_service(args.slots, log_dir)
    failures: list[str] = []
    outcomes: Counter = Counter()
    try:
        with start_edge(address, log_dir, "edge", workers=1, threads=32) as edge:
            samples = {"start": memory_mb(service.pid)}
            fill_every_slot(edge.base_url, address, args.slots, args.context_length)
            samples["every slot filled"] = memory_mb(service.pid)
            warm = threading.Thread(target=run_clients, args=(edge.base_url, args.clients, args.seconds, args.seed,
                                                              outcomes, failures))
            warm.start()
            warm.join(min(args.warm_up, args.seconds))
            samples["after warm-up"] = memory_mb(service.pid)
            warm.join()
            samples["end"] = memory_mb(service.pid)
            time.sleep(1.0)
            cpu_before = cpu_seconds(service.pid)
            time.sleep(3.0)
            idle_cpu = cpu_seconds(service.pid) - cpu_before
            with grpc.insecure_channel(address) as channel:
                status = pb_grpc.InferenceServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
    finally:
        stop_process(service)

    print(f"\nsoak: {args.clients} clients, {args.seconds:.0f} s, slots {args.slots}, logs in {log_dir}\n")
    print("| action | outcome | count |\n| --- | --- | --- |")
    for (action, outcome), count in sorted(outcomes.items()):
        print(f"| {action} | {outcome} | {count} |")
    print("\n| memory | RSS (MB) | Pss_Anon (MB) |\n| --- | --- | --- |")
    for name, sample in samples.items():
        print(f"| {name} | {sample['rss_mb']} | {sample['pss_anon_mb']} |")
    growth = samples["end"]["pss_anon_mb"] / samples["after warm-up"]["pss_anon_mb"] - 1
    kv_mb = kv_cache_bytes(ModelRegistry().resolve(MODEL).source_path, args.context_length) / 2**20
    bound = BASE_ANON_MB + args.slots * kv_mb * SLOT_OVERHEAD
    print(f"\nanonymous memory growth after warm-up: {growth:+.1%}")
    print(f"documented bound: {BASE_ANON_MB} MB + {args.slots} slots x {SLOT_OVERHEAD} x {kv_mb:.0f} MB KV "
          f"= {bound:.0f} MB; highest sample {max(s['pss_anon_mb'] for s in samples.values())} MB")
    print(f"service CPU in the 3 s after the clients stopped: {idle_cpu:.2f} s")
    print(f"GetStatus: started {status.generations_started}, finished {status.generations_finished}, "
          f"cancelled {status.generations_cancelled}, failed {status.generations_failed}, "
          f"busy slots {[m.busy_slots for m in status.models]}, waiting {[m.waiting for m in status.models]}")
    print(f"failures: {len(failures)}")
    for failure in failures[:20]:
        print("  " + failure)
    over_bound = max(s["pss_anon_mb"] for s in samples.values()) > bound
    bad = bool(failures) or growth > 0.10 or over_bound or idle_cpu > 0.5 or any(m.busy_slots for m in status.models)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
