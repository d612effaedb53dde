"""The figures issues 4 and 6 ask for, each judged pass or miss on the mean of both rounds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.report import Results, fmt, mean, ratio, values


@dataclass(frozen=True)
class Verdict:
    figure: str
    target: str
    measured: str
    passed: bool | None  # None: could not be measured in this run


def _rounds(results: Results, target: str, figure: str) -> str:
    return " / ".join(fmt(v) for v in values(results, target, figure))


def _ratio_verdict(results: Results, label: str, goal: str, top: str, bottom: str,
                   figure: str, ok: Callable[[float], bool]) -> Verdict:
    found = ratio(results, top, bottom, figure)
    if found is None:
        return Verdict(label, goal, "n/a (not measured)", None)
    return Verdict(label, goal, f"{found:.3f}x", ok(found))


def _value_verdict(results: Results, label: str, goal: str, target: str, figure: str,
                   ok: Callable[[float], bool], unit: str = "") -> Verdict:
    found = mean(values(results, target, figure))
    if found is None:
        return Verdict(label, goal, "n/a (not measured)", None)
    return Verdict(label, goal, f"{fmt(found)}{unit} ({_rounds(results, target, figure)})", ok(found))


def _growth(results: Results, label: str, name: str) -> Verdict:
    found = ratio(results, name, "router-base", "cpu_us")
    if found is None:
        return Verdict(label, "≤ +10%", "n/a (not measured)", None)
    return Verdict(label, "≤ +10%", f"{(found - 1) * 100:+.1f}%", found <= 1.10)


def verdicts(results: Results) -> list[Verdict]:
    """Every figure to reach, in the order of the issues."""
    many_rss = mean(values(results, "many-router", "rss_mb"))
    many_errors = mean(values(results, "many-router", "errors"))
    queries = mean(values(results, "reconcile", "queries"))
    return [
        _ratio_verdict(results, "router CPU per chat request vs floor (c=64)", "≤ 1.5x",
                       "router", "floor", "cpu_us", lambda r: r <= 1.5),
        _value_verdict(results, "added latency p50 at c=1", "≤ 500 µs", "router", "added_p50_us",
                       lambda v: v <= 500, " µs"),
        _ratio_verdict(results, "paced streams: chunks/s vs direct", "≥ 0.98x", "router", "direct",
                       "chunks_s", lambda r: r >= 0.98),
        _value_verdict(results, "paced streams: TTFT p50 over direct", "≤ 1 ms", "router",
                       "added_ttft_ms", lambda v: v <= 1.0, " ms"),
        Verdict("1,000 slow streams: errors, router peak RSS", "0, ≤ 200 MB",
                f"{fmt(many_errors)}, {fmt(many_rss)} MB" if many_rss is not None else "n/a (not measured)",
                None if many_rss is None else bool(many_errors == 0 and many_rss <= 200)),
        _growth(results, "CPU per request, 1 → 10,000 keys", "router-keys"),
        _growth(results, "CPU per request, 1 → 100 backends", "router-backends"),
        _value_verdict(results, "reconcile pass, 1,000 deployments: launcher CPU", "≤ 50 ms, 1 query",
                       "reconcile", "total_ms", lambda v: v <= 50 and queries == 1, " ms"),
        _value_verdict(results, "launcher's own overhead in `up` (beyond sbatch)", "(report only)",
                       "up", "submit_ms", lambda v: True, " ms"),
        _ratio_verdict(results, "issue 4: router CPU, accounting on vs off (c=64)", "≤ 1.5x",
                       "router", "router-noacct", "cpu_us", lambda r: r <= 1.5),
        _value_verdict(results, "issue 4: ledger records/s (end to end)", "≥ 20,000/s", "ledger",
                       "end_to_end_per_s", lambda v: v >= 20_000, "/s"),
    ]


def verdict_table(results: Results) -> list[str]:
    lines = ["| figure to reach | goal | measured (mean; rounds) | verdict |", "|---|---|---|---|"]
    for v in verdicts(results):
        word = "n/a" if v.passed is None else "pass" if v.passed else "**miss**"
        lines.append(f"| {v.figure} | {v.target} | {v.measured} | {word} |")
    return lines
