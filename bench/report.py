"""Benchmark report: fixed-width table, PNG bar chart, raw JSON.

    from bench.report import write_report
    write_report({"engine": {...metrics...}, "grpc": {...}, "edge": {...}, "peer": {...}},
                 reference="peer", header="what was run, how", meta={...}, raw={...})

Rows are metrics (see METRICS: unknown metric names are appended as plain rows), columns are
systems, then one ratio column per non-reference system: value / reference value, computed
from the numbers of this one run. A ratio is suffixed "+" when that system is better than the
reference on that row and "-" when worse (direction from METRICS).

Outputs bench/results/bench.png (matplotlib, Agg) and bench/results/bench.json.
Re-render a saved run: python bench/report.py bench/results/bench.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# key, label, unit, better ("higher" | "lower" | None)
LEVELS = (1, 2, 4, 8)
METRICS: list[tuple[str, str, str, Optional[str]]] = [
    ("ttft_ms", "TTFT, single stream", "ms", "lower"),
    ("decode_tps", "decode, single stream", "tok/s", "higher"),
    ("tokens", "tokens a stream", "tok", None),
    ("prompt_tokens", "prompt eval: prompt size", "tok", None),
    ("prompt_ttft_ms", "prompt eval: TTFT", "ms", "lower"),
    ("prompt_tps", "prompt eval: rate", "tok/s", "higher"),
    *[(f"agg_tps_c{n}", f"aggregate, {n} stream{'s' * (n > 1)}", "tok/s", "higher") for n in LEVELS],
    *[(f"ttft_p50_ms_c{n}", f"TTFT p50, {n} stream{'s' * (n > 1)}", "ms", "lower") for n in LEVELS],
    ("chat_prompt_tokens", "chat prompt size", "tok", None),
    ("chat_ttft_cold_ms", "chat TTFT, cold history", "ms", "lower"),
    ("chat_ttft_next_ms", "chat TTFT, next turn", "ms", "lower"),
    ("chat_next_over_cold", "chat next / cold", "x", "lower"),
    *[row for n in LEVELS for row in (
        (f"aiperf_ttft_p50_ms_c{n}", f"aiperf TTFT p50, concurrency {n}", "ms", "lower"),
        (f"aiperf_ttft_p90_ms_c{n}", f"aiperf TTFT p90, concurrency {n}", "ms", "lower"),
        (f"aiperf_itl_p50_ms_c{n}", f"aiperf ITL p50, concurrency {n}", "ms", "lower"),
        (f"aiperf_itl_p90_ms_c{n}", f"aiperf ITL p90, concurrency {n}", "ms", "lower"),
        (f"aiperf_output_tps_c{n}", f"aiperf output, concurrency {n}", "tok/s", "higher"),
        (f"aiperf_input_tokens_c{n}", f"aiperf prompt size, concurrency {n}", "tok", None),
        (f"aiperf_output_tokens_c{n}", f"aiperf tokens a request, concurrency {n}", "tok", None))],
    ("edge_alone_fps_1", "edge alone, 1 stream", "frames/s", "higher"),
    ("edge_alone_fps_4", "edge alone, 4 streams", "frames/s", "higher"),
    ("rss_start_mb", "RSS after load", "MB", "lower"),
    ("rss_peak_mb", "peak RSS during run", "MB", "lower"),
    ("failed_requests", "failed requests", "", "lower"),
    ("foreign_cpu_pct", "CPU used by other processes", "%", None),
]
_KNOWN = {m[0] for m in METRICS}
# in the table but not the chart
CHARTED = {"ttft_ms", "decode_tps", "prompt_ttft_ms", "agg_tps_c1", "agg_tps_c4", "chat_ttft_cold_ms",
           "chat_ttft_next_ms", "aiperf_ttft_p50_ms_c1", "aiperf_itl_p50_ms_c1", "aiperf_output_tps_c4",
           "edge_alone_fps_1", "rss_peak_mb"}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
    if not _is_num(v):
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _rows(systems: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str, Optional[str]]]:
    rows = [m for m in METRICS if any(_is_num(s.get(m[0])) for s in systems.values())]
    extra = sorted({k for s in systems.values() for k, v in s.items()
                    if k not in _KNOWN and _is_num(v)})
    rows += [(k, k, "", None) for k in extra]
    return rows


def ratio(value: Any, ref: Any, better: Optional[str]) -> str:
    if not (_is_num(value) and _is_num(ref)) or ref == 0:
        return "-"
    r = value / ref
    mark = ""
    if better and not math.isclose(r, 1.0, rel_tol=0.02):
        mark = "+" if (r > 1) == (better == "higher") else "-"
    return f"{r:.2f}x{mark}"


def format_table(systems: Mapping[str, Mapping[str, Any]],
                 reference: Optional[str] = None, header: Optional[str] = None) -> str:
    names = list(systems)
    if reference is not None and reference not in systems:
        reference = None
    others = [n for n in names if n != reference] if reference else []
    rows = _rows(systems)
    label_w = max([len("metric (unit)")] + [len(f"{l} ({u})") if u else len(l)
                                            for _, l, u, _ in rows])
    col_w = max([9] + [len(n) for n in names])
    rat_heads = [f"{n}/{reference}" for n in others]
    rat_w = max([8] + [len(h) for h in rat_heads])
    head = f"{'metric (unit)':<{label_w}}  " + "  ".join(f"{n:>{col_w}}" for n in names)
    if rat_heads:
        head += "  |  " + "  ".join(f"{h:>{rat_w}}" for h in rat_heads)
    lines = ([header, ""] if header else []) + [head, "-" * len(head)]
    for key, label, unit, better in rows:
        lab = f"{label} ({unit})" if unit else label
        line = f"{lab:<{label_w}}  " + "  ".join(
            f"{_fmt(systems[n].get(key)):>{col_w}}" for n in names)
        if rat_heads:
            ref = systems[reference].get(key)
            line += "  |  " + "  ".join(
                f"{ratio(systems[n].get(key), ref, better):>{rat_w}}" for n in others)
        lines.append(line)
    if rat_heads:
        lines.append("")
        lines.append(f"ratios: system / {reference}, this run; '+' better than {reference}, "
                     f"'-' worse (within 2%: no mark)")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot, drawing off screen (Agg), as every benchmark chart does."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Lays ``fig`` out, writes it to ``path`` (PNG, 110 dpi) and closes it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def save_chart(systems: Mapping[str, Mapping[str, Any]], path: Path,
               title: str = "LLM serving benchmark") -> Path:
    plt = pyplot()
    names = list(systems)
    rows = [r for r in _rows(systems) if r[0] in CHARTED]
    ncols = 4
    nrows = max(1, math.ceil(len(rows) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label, unit, better) in zip(axes.flat, rows):
        vals = [systems[n].get(key) for n in names]
        heights = [v if _is_num(v) else 0.0 for v in vals]
        bars = ax.bar(range(len(names)), heights,
                      color=[colours[i % len(colours)] for i in range(len(names))])
        for b, v in zip(bars, vals):
            ax.annotate(_fmt(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                        textcoords="offset points")
        hint = {"higher": "  (higher better)", "lower": "  (lower better)"}.get(better, "")
        ax.set_title(f"{label}{hint}", fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8, rotation=15)
        ax.tick_params(axis="y", labelsize=7)
        top = max(heights) if heights else 0
        ax.set_ylim(0, top * 1.18 if top > 0 else 1)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def print_failures(failures: Mapping[str, list[str]], note: str) -> bool:
    """Each system's failed requests (count, then the first 10) on stderr, under ``note``;
    True when any failed (the run then exits 1)."""
    if not any(failures.values()):
        return False
    print(f"\nFAILED requests ({note}):", file=sys.stderr)
    for name, items in failures.items():
        if items:
            print(f"  {name}: {len(items)} failed", file=sys.stderr)
            for item in items[:10]:
                print(f"    {item}", file=sys.stderr)
    return True


def write_report(systems: Mapping[str, Mapping[str, Any]], *, reference: Optional[str] = None,
                 header: Optional[str] = None, meta: Optional[Mapping[str, Any]] = None,
                 raw: Optional[Mapping] = None, out_dir: Path = RESULTS_DIR, print_table: bool = True) -> dict:
    """Print the table, write bench.json and bench.png under out_dir; returns the JSON doc."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = format_table(systems, reference, header)
    if print_table:
        print(table)
    doc = {"meta": dict(meta or {}), "reference": reference, "header": header,
           "systems": {k: dict(v) for k, v in systems.items()},
           "table": table.splitlines(), "raw": raw or {}}
    (out_dir / "bench.json").write_text(json.dumps(doc, indent=2, default=str))
    m = meta or {}
    title = "LLM serving benchmark"
    if m.get("model"):
        title += f" - {m['model']}"
    if m.get("when"):
        title += f" - {m['when']}"
    png = save_chart(systems, out_dir / "bench.png", title)
    if print_table:
        print(f"\nwrote {out_dir / 'bench.json'} and {png}")
    return doc


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else RESULTS_DIR / "bench.json"
    doc = json.loads(src.read_text())
    write_report(doc["systems"], reference=doc.get("reference"), header=doc.get("header"), meta=doc.get("meta"),
                 raw=doc.get("raw"), out_dir=src.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
