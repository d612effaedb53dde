"""The table: every figure for every target (both rounds), ratios, and pass/miss per issue figure."""

from __future__ import annotations

import math
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.measure import Figures

Results = dict[str, list[Figures]]
COLUMNS = ("direct", "floor", "nginx", "router", "router-noacct")
ROWS = (
    ("startup_ms", "start-up to /health answering (ms)"),
    ("p50_us", "latency p50, c=1 (µs)"),
    ("p99_us", "latency p99, c=1 (µs)"),
    ("added_p50_us", "added latency p50 over direct, c=1 (µs)"),
    ("cpu_c1_us", "CPU per chat request, c=1 (µs)"),
    ("cpu_us", "CPU per chat request, c=64 (µs)"),
    ("rps", "chat requests/s, c=64"),
    ("embed_cpu_us", "CPU per embeddings request (4096 floats), c=16 (µs)"),
    ("embed_rps", "embeddings requests/s, c=16"),
    ("ttft_ms", "paced streams: TTFT p50 (ms)"),
    ("added_ttft_ms", "paced streams: TTFT over direct (ms)"),
    ("chunks_s", "paced streams: chunks/s (median stream x streams)"),
    ("stream_cpu_ms", "paced streams: proxy CPU per stream (ms)"),
    ("lone_ttft_ms", "lone streams, one at a time: TTFT p50 (ms)"),
    ("added_lone_ttft_ms", "lone streams: TTFT over direct (ms)"),
    ("errors", "errors (all phases)"),
    ("rss_mb", "peak RSS (MB)"),
)


def fmt(value: float | None) -> str:
    """A number with sensible precision; '–' when missing."""
    if value is None or math.isnan(value):
        return "–"
    magnitude = abs(value)
    if magnitude >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"


def values(results: Results, target: str, figure: str) -> list[float]:
    """FIGURE of TARGET in each round (derived figures computed against direct's same round)."""
    rounds = results.get(target, [])
    if figure.startswith("added_"):
        base = figure.removeprefix("added_")
        direct = results.get("direct", [])
        return [r[base] - d[base] for r, d in zip(rounds, direct) if base in r]
    return [r[figure] for r in rounds if figure in r]


def mean(numbers: Sequence[float]) -> float | None:
    return statistics.fmean(numbers) if numbers else None


def cell(results: Results, target: str, figure: str) -> str:
    """'round 1 / round 2'."""
    found = values(results, target, figure)
    return " / ".join(fmt(v) for v in found) if found else "–"


def ratio(results: Results, top: str, bottom: str, figure: str) -> float | None:
    a, b = mean(values(results, top, figure)), mean(values(results, bottom, figure))
    return a / b if a is not None and b else None


def main_table(results: Results) -> list[str]:
    columns = [c for c in COLUMNS if c in results]
    head = ["figure (round 1 / round 2)", *columns, "router ÷ direct", "router ÷ floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for figure, label in ROWS:
        cells = [cell(results, c, figure) for c in columns]
        extra = [fmt(ratio(results, "router", base, figure)) + "x"
                 if not figure.startswith("added_") and ratio(results, "router", base, figure)
                 else "–" for base in ("direct", "floor")]
        lines.append("| " + " | ".join([label, *cells, *extra]) + " |")
    return lines


def machine() -> list[str]:
    """Date, machine and tool versions."""
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    nginx = _version(["nginx", "-v"]) if shutil.which("nginx") else "not installed"
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: nproc={os.cpu_count()}, {cpu}, kernel {platform.release()}, "
        f"Python {platform.python_version()}",
        f"- tools: {_version(['wrk', '--version']) or 'wrk'}; {nginx}",
        f"- load average at the end (1/5/15 min; the machine may be shared): "
        f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return ""
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else ""


def growth_table(results: Results) -> list[str]:
    lines = ["| growth (router, accounting on) | round 1 / round 2 | vs 1 key, 1 backend |",
             "|---|---|---|"]
    for name, label in (("router-base", "CPU per chat request, 1 key, 1 backend (µs)"),
                        ("router-keys", "CPU per chat request, 10,000 keys (µs)"),
                        ("router-backends", "CPU per chat request, 100 backends (µs)")):
        change = ratio(results, name, "router-base", "cpu_us")
        growth = f"{(change - 1) * 100:+.1f}%" if change and name != "router-base" else "–"
        lines.append(f"| {label} | {cell(results, name, 'cpu_us')} | {growth} |")
    for name in ("many-direct", "many-floor", "many-router"):
        for figure, label in (("errors", "errors"), ("rss_mb", "peak RSS (MB)"),
                              ("ttft_ms", "TTFT p50 (ms)"), ("chunks_s", "chunks/s")):
            if name in results:
                lines.append(f"| many slow streams, {name.split('-')[1]}: {label} | "
                             f"{cell(results, name, figure)} | |")
    for target, figure, label in CONTROL_ROWS:
        found = cell(results, target, figure) if target in results else "n/a (not built yet)"
        lines.append(f"| {label} | {found} | |")
    return lines


CONTROL_ROWS = (
    ("reconcile", "total_ms", "supervisor pass over 1,000 deployments: launcher CPU (ms)"),
    ("reconcile", "wall_ms", "… wall time (ms)"),
    ("reconcile", "queries", "… Slurm queries"),
    ("reconcile", "registry_ms", "… registry read, 1,000 rows (CPU ms)"),
    ("reconcile", "parse_ms", "… `squeue --json` parse, 1,000 jobs / 2.9 MB (CPU ms)"),
    ("reconcile", "plan_ms", "… pure plan (CPU ms)"),
    ("up", "submit_ms", "`up`: launcher overhead it reports (render, sbatch stand-in, record; ms)"),
    ("up", "cpu_ms", "`up`: CPU of the whole command, interpreter start included (ms)"),
    ("up", "wall_ms", "`up`: wall time of the whole command (ms)"),
    ("ledger", "record_per_s", "ledger: record() calls/s on the event loop"),
    ("ledger", "end_to_end_per_s", "ledger: records/s end to end, SQLite writes included"),
)
