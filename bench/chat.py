"""`make bench-chat`: many users at once: next-turn TTFT and the share of the prompt cached.

N conversations (--counts, default 2, 4, 8) of --turns turns (4) over ~--history-tokens
(1,000) histories, each with its own nonce first (no cache holds any of it before it is
sent), on one server with --slots slots (4), in two modes:

* ``turns``: one client; the conversations take turns (c0 t1, c1 t1, ..., c0 t2, c1 t2, ...),
  as users of a shared assistant do;
* ``together``: N clients at once, each running its conversation turn after turn.

Systems, each restarted for every (N, mode) so every run starts on empty caches: our service
through the edge on ctransformers and on llama.cpp (``--slots``), and llama.cpp's own
``llama-server -np`` (built by ``bash bench/install_peer.sh llama-server``, the same llama.cpp
as our llama.cpp engine). Answers are short (--max-tokens, greedy); each stream is timed as in
every bench row (bench/sse.py: the clock starts before the request is sent). The cached share
comes from the usage chunk's ``prompt_tokens_details.cached_tokens`` (llama-server: its
``timings.cache_n`` where the usage lacks it).

Reported per system, N and mode: next-turn (turns 2..) TTFT p50 and p95, turn-1 (cold) TTFT
p50, the mean share of next turns' prompts served from cache; then ours / llama-server next-turn
p50 for each N and mode. Results: bench/results/chat.{json,png}, logs bench/results/chat-*.log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench.cluster import QUESTIONS, Turn, opening  # noqa: E402
from bench.measure import percentile  # noqa: E402
from bench.prompts import MODEL  # noqa: E402
from bench.servers import LLAMA_SERVER, start_edge, start_llama_server, start_service  # noqa: E402
from bench.sse import chat_stream  # noqa: E402
from harness.processes import stop_process  # noqa: E402

RESULTS = REPO / "bench" / "results"
STREAM_TIMEOUT_S = 900.0
SYSTEMS = ("ours-ctransformers", "ours-llamacpp", "llama-server")
MODES = ("turns", "together")


class UsageTap(httpx.Client):
    """An httpx client that keeps the last stream's usage and llama-server's timings (which
    bench.sse.chat_stream does not keep). One request at a time per client."""

    usage: Optional[dict] = None
    timings: Optional[dict] = None

    @contextlib.contextmanager
    def stream(self, *args, **kwargs):
        self.usage = self.timings = None
        with super().stream(*args, **kwargs) as response:
            lines = response.iter_lines

            def tapped():
                for line in lines():
                    if line.startswith("data:") and ('"usage"' in line or '"timings"' in line):
                        with contextlib.suppress(ValueError, AttributeError):
                            frame = json.loads(line[5:].strip())
                            self.usage = frame.get("usage") or self.usage
                            self.timings = frame.get("timings") or self.timings
                    yield line

            response.iter_lines = tapped
            yield response

    def cached_tokens(self) -> Optional[int]:
        cached = ((self.usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is None and self.timings:
            cached = self.timings.get("cache_n")
        return cached


@dataclass
class Run:
    system: str
    conversations: int
    mode: str
    turns: list[Turn]


def ask(http: UsageTap, base_url: str, record: Turn, messages: list[dict], max_tokens: int) -> str:
    try:
        s = chat_stream(base_url, MODEL, messages, max_tokens, timeout_s=STREAM_TIMEOUT_S, client=http)
    except Exception as e:  # noqa: BLE001 - recorded as this turn's failure
        record.error = f"{type(e).__name__}: {e}"
        return ""
    usage = http.usage or {}
    record.error, record.ttft_ms = s.error, None if s.ttft_s is None else round(s.ttft_s * 1000, 1)
    record.prompt_tokens, record.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
    record.cached_tokens = http.cached_tokens()
    return s.text


def question(conversation: int, turn: int) -> dict:
    return {"role": "user", "content": QUESTIONS[(conversation + turn) % len(QUESTIONS)]}


def drive(system: str, base_url: str, count: int, mode: str, args) -> list[Turn]:
    nonce = uuid.uuid4().hex[:8]
    histories = [opening(c, nonce, args.history_tokens) for c in range(count)]
    records: list[Turn] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def one_turn(http: UsageTap, c: int, t: int, client: int) -> bool:
        histories[c] = histories[c] + [question(c, t)]
        record = Turn(system, c, t, client, round(time.perf_counter() - t0, 3))
        text = ask(http, base_url, record, histories[c], args.max_tokens)
        histories[c] = histories[c] + [{"role": "assistant", "content": text}]
        with lock:
            records.append(record)
        print(f"    {system} N={count} {mode}: conversation {c} turn {t}: TTFT {record.ttft_ms or 0:,.0f} ms, "
              f"{record.cached_tokens}/{record.prompt_tokens} cached{'  ' + record.error if record.error else ''}",
              flush=True)
        return record.error is None

    timeout = httpx.Timeout(STREAM_TIMEOUT_S, connect=5.0)
    if mode == "turns":
        with UsageTap(timeout=timeout) as http:
            for t in range(1, args.turns + 1):
                for c in range(count):
                    one_turn(http, c, t, 0)
    else:
        def client(c: int) -> None:
            with UsageTap(timeout=timeout) as http:
                for t in range(1, args.turns + 1):
                    if not one_turn(http, c, t, c):
                        return

        threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return sorted(records, key=lambda r: (r.conversation, r.turn))


@contextlib.contextmanager
def running(system: str, args, tag: str):
    """The system's base URL, fresh (empty caches), stopped afterwards."""
    if system == "llama-server":
        with start_llama_server(args.model_file, RESULTS, args.threads, args.slots, name=f"chat-{tag}") as server:
            yield server.base_url
        return
    engine = system.split("-", 1)[1]
    process, address = start_service(args.slots, RESULTS, args.threads, engine=engine, name=f"chat-{tag}-service")
    try:
        with start_edge(address, RESULTS, f"chat-{tag}-edge") as edge:
            yield edge.base_url
    finally:
        stop_process(process)


def summarize(turns: list[Turn]) -> dict:
    ok = [r for r in turns if r.error is None and r.ttft_ms is not None]
    nxt = [r for r in ok if r.turn > 1]
    shares = [r.cached_fraction for r in nxt if r.cached_fraction is not None]
    return {
        "next_ttft_p50_ms": percentile([r.ttft_ms for r in nxt], 50),
        "next_ttft_p95_ms": percentile([r.ttft_ms for r in nxt], 95),
        "cold_ttft_p50_ms": percentile([r.ttft_ms for r in ok if r.turn == 1], 50),
        "next_cached_share": sum(shares) / len(shares) if shares else None,
        "failed": sum(1 for r in turns if r.error is not None),
        "prompt_tokens_last_p50": percentile([r.prompt_tokens for r in ok if r.turn == max(t.turn for t in ok)
                                              and r.prompt_tokens], 50) if ok else None,
    }


def _f(v, digits: int = 0, suffix: str = "") -> str:
    return "-" if v is None else f"{v:,.{digits}f}{suffix}"


def table(results: dict, args) -> str:
    head = ["system", "N", "mode", "next-turn TTFT p50 ms", "p95 ms", "cold p50 ms", "next turns cached", "failed"]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for key, r in results.items():
        system, count, mode = key.split("|")
        share = r["next_cached_share"]
        out.append("| " + " | ".join([system, count, mode, _f(r["next_ttft_p50_ms"]), _f(r["next_ttft_p95_ms"]),
                                      _f(r["cold_ttft_p50_ms"]), _f(None if share is None else 100 * share, 1, "%"),
                                      str(r["failed"])]) + " |")
    return "\n".join(out)


def ratio_lines(results: dict, args) -> list[str]:
    lines = []
    for count in args.counts:
        for mode in MODES:
            peer = (results.get(f"llama-server|{count}|{mode}") or {}).get("next_ttft_p50_ms")
            for system in args.systems:
                if system == "llama-server":
                    continue
                ours = (results.get(f"{system}|{count}|{mode}") or {}).get("next_ttft_p50_ms")
                if ours and peer:
                    lines.append(f"{system} / llama-server next-turn TTFT p50, N={count} {mode}: {ours / peer:.2f}x")
    return lines


def save_chart(results: dict, args, path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(MODES), figsize=(11, 4), sharey=True)
    width = 0.8 / max(1, len(args.systems))
    for ax, mode in zip(axes, MODES):
        for k, system in enumerate(args.systems):
            values = [(results.get(f"{system}|{n}|{mode}") or {}).get("next_ttft_p50_ms") or 0 for n in args.counts]
            ax.bar([i + k * width for i in range(len(args.counts))], values, width, label=system)
        ax.set_xticks([i + width * (len(args.systems) - 1) / 2 for i in range(len(args.counts))])
        ax.set_xticklabels([f"N={n}" for n in args.counts])
        ax.set_yscale("log")
        ax.set_title(f"{mode}: next-turn TTFT p50 (ms, log)")
        ax.axvline(x=sum(1 for n in args.counts if n <= args.slots) - 0.5 + width * (len(args.systems) - 1) / 2,
                   color="grey", linestyle=":", linewidth=1)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{args.turns} turns over ~{args.history_tokens}-token histories, {args.slots} slots, "
                 f"{args.threads} threads (dotted: N = slots)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8])
    parser.add_argument("--modes", type=lambda s: s.split(","), default=list(MODES))
    parser.add_argument("--systems", type=lambda s: s.split(","), default=list(SYSTEMS))
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--history-tokens", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not LLAMA_SERVER.exists() and "llama-server" in args.systems:
        print(f"{LLAMA_SERVER} missing (bash bench/install_peer.sh llama-server): llama-server skipped", flush=True)
        args.systems = [s for s in args.systems if s != "llama-server"]
    from inference_service.models.registry import ModelRegistry

    args.model_file = ModelRegistry().resolve(MODEL).source_path
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    runs: list[Run] = []
    started = time.monotonic()
    for count in args.counts:
        for mode in args.modes:
            for system in args.systems:
                print(f"{system}: N={count}, {mode} ...", flush=True)
                with running(system, args, f"{system}-{count}-{mode}") as base_url:
                    turns = drive(system, base_url, count, mode, args)
                runs.append(Run(system, count, mode, turns))
                results[f"{system}|{count}|{mode}"] = summarize(turns)
    print()
    print(table(results, args))
    print()
    for line in ratio_lines(results, args):
        print(line)
    (RESULTS / "chat.json").write_text(json.dumps({
        "settings": {k: v for k, v in vars(args).items() if k != "model_file"},
        "elapsed_s": round(time.monotonic() - started),
        "results": results,
        "turns": [{**asdict(t)} for run in runs for t in run.turns],
    }, indent=1))
    chart = save_chart(results, args, RESULTS / "chat.png")
    print(f"\nbench/results/chat.json{', ' + str(chart.relative_to(REPO)) if chart else ''}")
    return 1 if any(r["failed"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
