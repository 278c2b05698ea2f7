"""`make bench-cluster`: next-turn TTFT of chats routed across service replicas, per policy.

One REST edge in front of --replicas gRPC services (``--slots 1 --threads 1 --max-waiting 8``
each by default), ``INFERENCE_TARGET=a,b,c``; the edge routes by ``EDGE_ROUTING``, one policy
after another (prefix-affinity, least-loaded, round-robin by default). Between policies both
the edge and the replicas are restarted, so every policy starts on empty caches (a replica's
prefix cache is its slots' KV: with one slot it holds one conversation's prefix at a time).

Per policy, --conversations chats of --turns turns each: a ~--history-tokens history
(bench/prompts.chat_history, its own nonce first, so no cache holds any of it before it is
sent) and a question; every later turn repeats the whole conversation, with the previous
answer, and asks a new question. Answers are short (--max-tokens, greedy). --clients threads
drive them at once, each running its own conversations one after another, turn after turn
(conversation i belongs to client i mod --clients), so the replicas see the clients' chats
interleaved. Each stream is timed as in every bench row (bench/sse.py: the clock starts
before the request is sent); the edge's usage chunk gives prompt_tokens and
prompt_tokens_details.cached_tokens, the prompt tokens the replica reused from its cache.

Reported per policy: next-turn (turns 2..N) TTFT p50 and p95, turn-1 (cold) TTFT p50, TTFT
p50 of each turn, the mean cached fraction of next turns' prompts, how many next turns the
edge sent to the replica of the conversation's previous turn (from the edge's debug log,
which names the replica of each X-Request-Id), how many reused at least half of the previous
turn's prompt (they landed where that prefix still was), and failures; then round-robin
p50 / prefix-affinity p50 (the aim: 3x or more) and least-loaded / prefix-affinity.

Why --clients defaults to 2. A replica's cache is its slots' KV, so the replicas together
hold replicas x slots conversations; more live conversations than that evict one another
whatever the policy. And this is a closed loop (no think time): with as many clients as
replicas (or a multiple), every replica is busy, so least-loaded is sticky by accident (the
replica a client's previous turn just freed is the only idle one), and round-robin can lock
in phase (clients answered in a steady cycle get the same replica every turn: 3 clients
with a conversation each did exactly that). Two clients, fewer than and coprime with 3
replicas, avoid both.
Prefix affinity hashes conversations to replicas independently, so two live conversations
may share a one-slot replica (its load bound still admits a second call) and evict each
other while a replica idles; that varies from run to run with the hashes.

Results: bench/results/cluster.{json,png} (the JSON has every turn), servers' logs
bench/results/cluster-*.log. Failed streams (and the turns a failure left unasked) are
counted and reported; if any, the run exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from bench import prompts  # noqa: E402
from bench.measure import median, percentile  # noqa: E402
from bench.procfs import cpu_busy_fraction  # noqa: E402
from bench.report import print_failures, pyplot, save_figure  # noqa: E402
from bench.prompts import MODEL  # noqa: E402
from bench.servers import start_edge, start_replicas, stop_replicas  # noqa: E402
from bench.sse import chat_stream  # noqa: E402

RESULTS = REPO / "bench" / "results"
POLICIES = ("prefix-affinity", "least-loaded", "round-robin")
QUESTIONS = ["Which places did the notes mention?",
             "Thanks. And which years?",
             "Who repaired something, according to the notes?",
             "Name one thing that was counted.",
             "Which note mentioned a ferry?",
             "Summarise the first note in one line.",
             "What was guarded, and where?",
             "Which bridge was mentioned?"]
STREAM_TIMEOUT_S = 600.0
REUSED_SHARE = 0.5  # a next turn "reused the previous turn" when this share of its prompt was cached


@dataclass
class Turn:
    """One request of one conversation as the client saw it."""

    policy: str
    conversation: int
    turn: int                    # 1-based
    client: int
    t_start_s: float             # since the policy's first request
    ttft_ms: Optional[float] = None
    prompt_tokens: Optional[int] = None
    cached_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    previous_prompt_tokens: Optional[int] = None  # the same conversation's previous turn's
    request_id: Optional[str] = None
    replica: Optional[str] = None                 # where the edge sent it (its debug log), if seen
    previous_replica: Optional[str] = None
    error: Optional[str] = None

    @property
    def cached_fraction(self) -> Optional[float]:
        if self.cached_tokens is None or not self.prompt_tokens:
            return None
        return self.cached_tokens / self.prompt_tokens

    @property
    def reused_previous(self) -> Optional[bool]:
        if self.cached_tokens is None or not self.previous_prompt_tokens:
            return None
        return self.cached_tokens >= REUSED_SHARE * self.previous_prompt_tokens

    @property
    def same_replica(self) -> Optional[bool]:
        if self.replica is None or self.previous_replica is None:
            return None
        return self.replica == self.previous_replica


class UsageTap(httpx.Client):
    """An httpx client that keeps the last usage object of the streams it carries, so that
    bench.sse.chat_stream times the stream as everywhere else and the usage's
    ``prompt_tokens_details`` (which it does not keep) is still seen; it sends ``request_id``
    as X-Request-Id. One request at a time."""

    usage: Optional[dict] = None
    request_id: Optional[str] = None

    @contextlib.contextmanager
    def stream(self, *args, **kwargs):
        self.usage = None
        if self.request_id:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "X-Request-Id": self.request_id}
        with super().stream(*args, **kwargs) as response:
            lines = response.iter_lines

            def tapped():
                for line in lines():
                    if line.startswith("data:") and '"usage"' in line:
                        with contextlib.suppress(ValueError, AttributeError):
                            self.usage = json.loads(line[5:].strip()).get("usage") or self.usage
                    yield line

            response.iter_lines = tapped
            yield response


def opening(conversation: int, nonce: str, history_tokens: int) -> list[dict]:
    """A conversation's history before its first question: its own nonce and filler."""
    return prompts.chat_history(history_tokens, nonce=f"{nonce}-{conversation}", seed=7 + conversation)


def question(conversation: int, turn: int) -> dict:
    return {"role": "user", "content": QUESTIONS[(conversation + turn) % len(QUESTIONS)]}


def drive(policy: str, base_url: str, args, nonce: str) -> list[Turn]:
    """--clients threads, each running its conversations (i mod clients) one after another,
    turn after turn; every turn's record (a failed turn ends its conversation: the turns left
    are recorded as not asked)."""
    turns: list[Turn] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def client(k: int) -> None:
        with UsageTap(timeout=httpx.Timeout(STREAM_TIMEOUT_S, connect=5.0)) as http:
            for c in range(k, args.conversations, args.clients):
                messages = opening(c, nonce, args.history_tokens)
                previous: Optional[int] = None
                for t in range(1, args.turns + 1):
                    messages = messages + [question(c, t)]
                    record = Turn(policy, c, t, k, round(time.perf_counter() - t0, 3), previous_prompt_tokens=previous,
                                  request_id=f"cluster-{nonce}-c{c}-t{t}")
                    http.request_id = record.request_id
                    try:
                        s = chat_stream(base_url, MODEL, messages, args.max_tokens, timeout_s=STREAM_TIMEOUT_S,
                                        client=http)
                        record.error = s.error
                        if s.ttft_s is not None:
                            record.ttft_ms = round(s.ttft_s * 1000, 1)
                        usage = http.usage or {}
                        record.prompt_tokens = usage.get("prompt_tokens")
                        record.completion_tokens = usage.get("completion_tokens")
                        record.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                    except Exception as e:  # noqa: BLE001  (recorded as this turn's failure)
                        record.error = f"{type(e).__name__}: {e}"
                    with lock:
                        turns.append(record)
                    if record.error is not None:
                        with lock:
                            turns.extend(Turn(policy, c, later, k, record.t_start_s,
                                              error=f"not asked: turn {t} failed")
                                         for later in range(t + 1, args.turns + 1))
                        break
                    previous = record.prompt_tokens
                    messages = messages + [{"role": "assistant", "content": s.text}]
                    with lock:
                        done = sum(1 for r in turns if r.error is None)
                    print(f"    {policy}: conversation {c} turn {t}: TTFT {record.ttft_ms:,.0f} ms, "
                          f"{record.cached_tokens}/{record.prompt_tokens} prompt tokens cached "
                          f"({done}/{args.conversations * args.turns})", flush=True)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(turns, key=lambda r: (r.conversation, r.turn))


ROUTED = re.compile(r"request (\S+) -> (\S+) \(")


def routed_replicas(edge_log: Path, turns: list[Turn], addresses: list[str]) -> int:
    """Fills each turn's replica (and its conversation's previous turn's) from the edge's debug
    lines "request ID -> ADDRESS (...)" (the last one of a retried request); replicas are
    named r0, r1, ... in start order. How many turns were found."""
    names = {address: f"r{i}" for i, address in enumerate(addresses)}
    where: dict[str, str] = {}
    try:
        for line in edge_log.read_text(errors="replace").splitlines():
            m = ROUTED.search(line)
            if m:
                where[m.group(1)] = names.get(m.group(2), m.group(2))
    except OSError:
        return 0
    last: dict[int, Optional[str]] = {}
    for r in sorted(turns, key=lambda r: (r.conversation, r.turn)):
        r.replica = where.get(r.request_id or "")
        r.previous_replica = last.get(r.conversation) if r.turn > 1 else None
        last[r.conversation] = r.replica
    return sum(1 for r in turns if r.replica is not None)


def summarize(turns: list[Turn], args) -> dict:
    ok = [r for r in turns if r.error is None and r.ttft_ms is not None]
    cold = [r.ttft_ms for r in ok if r.turn == 1]
    nxt = [r for r in ok if r.turn > 1]
    nxt_ttft = [r.ttft_ms for r in nxt]
    fractions = [r.cached_fraction for r in nxt if r.cached_fraction is not None]
    reused = [r.reused_previous for r in nxt if r.reused_previous is not None]
    same = [r.same_replica for r in nxt if r.same_replica is not None]
    return {
        "next_ttft_p50_ms": percentile(nxt_ttft, 50),
        "next_ttft_p95_ms": percentile(nxt_ttft, 95),
        "next_ttft_mean_ms": statistics.fmean(nxt_ttft) if nxt_ttft else None,
        "cold_ttft_p50_ms": percentile(cold, 50),
        "turn_ttft_p50_ms": {t: percentile([r.ttft_ms for r in ok if r.turn == t], 50)
                             for t in range(1, args.turns + 1)},
        "next_cached_fraction_mean": statistics.fmean(fractions) if fractions else None,
        "cold_cached_fraction_mean": (statistics.fmean(f) if (f := [r.cached_fraction for r in ok if r.turn == 1
                                                                     and r.cached_fraction is not None]) else None),
        "next_reused_previous": sum(reused) if reused else None,
        "next_same_replica": sum(same) if same else None,
        "next_same_replica_known": len(same),
        "requests_by_replica": dict(sorted(Counter(r.replica for r in ok if r.replica).items())),
        "next_turns_ok": len(nxt),
        "prompt_tokens_turn1_median": median(r.prompt_tokens for r in ok if r.turn == 1),
        "prompt_tokens_last_median": median(r.prompt_tokens for r in ok if r.turn == args.turns),
        "requests": len(turns),
        "failed_requests": sum(1 for r in turns if r.error is not None and not r.error.startswith("not asked")),
        "not_asked": sum(1 for r in turns if r.error is not None and r.error.startswith("not asked")),
    }


def run_policy(policy: str, args) -> tuple[dict, list[Turn]]:
    """Fresh replicas and a fresh edge routing by ``policy``; the conversations; all stopped."""
    nonce = uuid.uuid4().hex[:8]
    print(f"{policy}: starting {args.replicas} replicas and the edge ...", flush=True)
    replicas = start_replicas(args.replicas, args.slots, RESULTS, f"cluster-{policy}-replica", threads=args.threads,
                              engine=args.engine, max_waiting=args.max_waiting)
    try:
        target = ",".join(address for _, address in replicas)
        with start_edge(target, RESULTS, f"cluster-{policy}-edge", workers=args.edge_workers, routing=policy,
                        log_level="debug") as edge:  # debug: the edge logs where each request went
            started = time.monotonic()
            turns = drive(policy, edge.base_url, args, nonce)
            elapsed = time.monotonic() - started
    finally:
        stop_replicas(replicas)
    if not routed_replicas(edge.log_path, turns, [address for _, address in replicas]):
        print(f"  {policy}: no routing lines in {edge.log_path}: replicas not observed", flush=True)
    rows = summarize(turns, args)
    rows["elapsed_s"] = round(elapsed, 1)
    rows["replicas"] = target
    return rows, turns


# ---------------------------------------------------------------- report

def _f(v, digits: int = 0, suffix: str = "") -> str:
    return "-" if v is None else f"{v:,.{digits}f}{suffix}"


def table(policies: dict[str, dict], args) -> str:
    head = (["policy", "next-turn TTFT p50 ms", "p95 ms", "cold (turn 1) p50 ms"]
            + [f"turn {t} p50 ms" for t in range(2, args.turns + 1)]
            + ["next turns cached", "same replica as prev.", "reused prev. prompt", "failed"])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, r in policies.items():
        reused, same = r.get("next_reused_previous"), r.get("next_same_replica")
        cells = [name, _f(r["next_ttft_p50_ms"]), _f(r["next_ttft_p95_ms"]), _f(r["cold_ttft_p50_ms"])]
        cells += [_f(r["turn_ttft_p50_ms"].get(t)) for t in range(2, args.turns + 1)]
        cells += [_f(None if r["next_cached_fraction_mean"] is None else 100 * r["next_cached_fraction_mean"], 0, "%"),
                  "-" if same is None else f"{same}/{r['next_same_replica_known']}",
                  "-" if reused is None else f"{reused}/{r['next_turns_ok']}",
                  str(r["failed_requests"] + r["not_asked"])]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def ratios(policies: dict[str, dict]) -> dict[str, float]:
    out = {}
    base = (policies.get("prefix-affinity") or {}).get("next_ttft_p50_ms")
    for other in ("round-robin", "least-loaded"):
        value = (policies.get(other) or {}).get("next_ttft_p50_ms")
        if base and value is not None:
            out[f"{other} / prefix-affinity, next-turn TTFT p50"] = value / base
    return out


def save_chart(policies: dict[str, dict], path: Path, title: str) -> Path:
    names = list(policies)
    fig, ax = pyplot().subplots(figsize=(7.5, 4.6))
    width = 0.38
    for j, (key, label) in enumerate((("next_ttft_p50_ms", "p50"), ("next_ttft_p95_ms", "p95"))):
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        values = [policies[n].get(key) or 0.0 for n in names]
        bars = ax.bar(xs, values, width, label=f"next-turn TTFT {label}")
        for bar, name in zip(bars, names):
            if policies[name].get(key) is not None:
                ax.annotate(f"{policies[name][key]:,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    labels = []
    for n in names:
        fraction = policies[n].get("next_cached_fraction_mean")
        labels.append(n + ("" if fraction is None else f"\n{fraction:.0%} of next prompts cached"))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_ylabel("TTFT ms, turns 2+ (lower better)")
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"comma list, run in this order (default {','.join(POLICIES)})")
    parser.add_argument("--replicas", type=int, default=3, help="gRPC service replicas behind the edge (default 3)")
    parser.add_argument("--slots", type=int, default=1, help="--slots of each replica (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="--threads of each replica (default 1)")
    parser.add_argument("--max-waiting", type=int, default=8, help="--max-waiting of each replica (default 8)")
    parser.add_argument("--engine", choices=("auto", "ctransformers", "llamacpp"), default=None,
                        help="--engine of each replica (default: the service's default)")
    parser.add_argument("--edge-workers", type=int, default=1,
                        help="edge gunicorn workers (default 1: each worker routes, and keeps affinity, on its own)")
    parser.add_argument("--conversations", type=int, default=12, help="conversations a policy (default 12)")
    parser.add_argument("--turns", type=int, default=4, help="turns a conversation (default 4)")
    parser.add_argument("--history-tokens", type=int, default=1000,
                        help="tokens of a conversation's history before its first question (default ~1000)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens an answer at most, greedy (default 16)")
    parser.add_argument("--clients", type=int, default=2,
                        help="client threads at once, each running its conversations in turn (default 2; a "
                             "multiple of --replicas lets least-loaded and round-robin stick by accident)")
    args = parser.parse_args(argv)
    wanted = [w.strip() for w in args.policies.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in POLICIES]
    if unknown or not wanted:
        parser.error(f"--policies: a comma list of {', '.join(POLICIES)}")
    args.policies = list(dict.fromkeys(wanted))
    for name in ("replicas", "slots", "threads", "edge_workers", "conversations", "turns", "clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_waiting < 0 or args.history_tokens < 50 or args.max_tokens < 1:
        parser.error("--max-waiting must be 0 or more, --history-tokens 50 or more, --max-tokens 1 or more")
    args.clients = min(args.clients, args.conversations)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks stop our servers
    RESULTS.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    busy = cpu_busy_fraction(1.0)
    started = time.monotonic()
    compute = args.replicas * args.threads
    header = (f"{MODEL}; {args.replicas} replicas x (--slots {args.slots} --threads {args.threads} --max-waiting "
              f"{args.max_waiting}) behind one edge ({args.edge_workers} worker"
              f"{'s' * (args.edge_workers > 1)}); {args.conversations} conversations x {args.turns} turns, "
              f"~{args.history_tokens}-token histories, answers <= {args.max_tokens} tokens greedy, {args.clients} "
              f"client{'s' * (args.clients > 1)} at once; replicas and edge restarted for each policy. "
              f"{compute} compute threads on {cores} cores"
              + (" fit only roughly (the edge and this client share the cores too)" if compute >= cores else "")
              + "; " + (f"machine {busy:.0%} busy before the run" if busy is not None else "machine load unknown"))
    print(header, flush=True)
    if args.clients % args.replicas == 0:
        print(f"note: --clients {args.clients} is a multiple of --replicas {args.replicas}: least-loaded and "
              "round-robin may stick to a client's replica by accident (see the docstring)", flush=True)

    policies: dict[str, dict] = {}
    records: list[Turn] = []
    for policy in args.policies:
        rows, turns = run_policy(policy, args)
        policies[policy] = rows
        records += turns
        print(f"{policy}: next-turn TTFT p50 {_f(rows['next_ttft_p50_ms'])} ms, p95 {_f(rows['next_ttft_p95_ms'])} ms,"
              f" cold p50 {_f(rows['cold_ttft_p50_ms'])} ms, {rows['failed_requests']} failed, requests by replica "
              f"{rows['requests_by_replica'] or '(not seen)'} ({rows['elapsed_s']:.0f} s)", flush=True)

    summary = ratios(policies)
    elapsed = time.monotonic() - started
    report = [header, "", table(policies, args), "",
              "next-turn = turns 2..N; cold = turn 1 (its whole history evaluated); next turns cached = mean share "
              "of a next turn's prompt the replica had cached (usage.prompt_tokens_details.cached_tokens); same "
              "replica as prev. = next turns the edge sent where the conversation's previous turn went (its debug "
              f"log); reused prev. prompt = next turns with at least {REUSED_SHARE:.0%} of the previous turn's "
              "prompt cached (on a replica still holding it: another conversation in between on its one slot "
              "evicts it). p95 over few requests is close to the maximum. Closed loop, no think time: with as "
              "many clients as replicas, least-loaded and round-robin stick by accident; prefix affinity may put two "
              "live conversations on one replica (hash collision) where they evict each other: see `same replica as "
              "prev.` and `reused prev. prompt`."]
    if summary:
        report += ["", "ratios (this run):"] + [f"  {k:52s} {v:8.2f}x" for k, v in summary.items()]
        rr = summary.get("round-robin / prefix-affinity, next-turn TTFT p50")
        if rr is not None:
            report.append(f"  aim: round-robin / prefix-affinity >= 3x: {'met' if rr >= 3 else 'NOT met'}")
    report += ["", f"took {elapsed / 60:.1f} min"]
    text = "\n".join(report)
    print()
    print(text)
    failures = defaultdict(list)
    for r in records:
        if r.error is not None:
            failures[r.policy].append(f"conversation {r.conversation} turn {r.turn}: {r.error}")
    doc = {"meta": {"model": MODEL, "replicas": args.replicas, "slots": args.slots, "threads": args.threads,
                    "max_waiting": args.max_waiting, "engine": args.engine, "edge_workers": args.edge_workers,
                    "conversations": args.conversations, "turns": args.turns, "history_tokens": args.history_tokens,
                    "max_tokens": args.max_tokens, "clients": args.clients, "cores": cores,
                    "cpu_busy_before": busy, "when": time.strftime("%Y-%m-%d %H:%M"),
                    "elapsed_s": round(elapsed, 1), "policies": args.policies},
           "policies": policies, "ratios": summary, "turns": [asdict(r) for r in records],
           "failures": dict(failures), "report": text.splitlines()}
    (RESULTS / "cluster.json").write_text(json.dumps(doc, indent=2, default=str))
    png = save_chart(policies, RESULTS / "cluster.png",
                     f"{MODEL}, {args.replicas} replicas x {args.slots} slot{'s' * (args.slots > 1)}, "
                     f"{args.conversations} chats x {args.turns} turns, ~{args.history_tokens}-token histories - "
                     f"{doc['meta']['when']}")
    print(f"\nwrote {RESULTS / 'cluster.json'} and {png}")
    return 1 if print_failures(failures, "failed or not asked; the rows count only the successes") else 0


if __name__ == "__main__":
    sys.exit(main())
