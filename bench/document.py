"""bench/RESULTS.md: machine, command, the tables, and what was skipped."""

from __future__ import annotations

from bench.measure import Plan
from bench.procs import Cores
from bench.report import Results, growth_table, machine, main_table
from bench.verdicts import verdict_table


def render(results: Results, notes: list[str], plan: Plan, cores: Cores, seconds: float,
           command: list[str]) -> str:
    """The whole results document as Markdown."""
    pinning = (f"proxy on core {','.join(map(str, cores.proxy))}; backend, wrk and stream client "
               f"on core {','.join(map(str, cores.load))}" if cores.proxy != cores.load else "no pinning (one core)")
    lines = [
        "# Benchmark results", "",
        *machine(),
        f"- command: `{' '.join(command)}` ({seconds:.0f} s)",
        f"- pinning: {pinning}",
        f"- phases: {plan.seconds} s each, {plan.reps} round(s); wrk -t1 for rates; "
        f"paced streams {plan.streams} x {plan.stream_chunks} chunks {plan.stream_interval_ms:g} ms apart; "
        f"lone streams {plan.lone_streams} one after another, 5 chunks; "
        f"slow streams {plan.many_streams} x {plan.many_chunks} chunks {plan.many_interval_ms:g} ms apart",
        "- CPU = utime+stime of the proxy's process tree over exactly the phase, divided by the "
        "requests wrk completed (direct: the fake backend's own CPU, i.e. its capacity)",
        "",
        *main_table(results), "",
        *growth_table(results), "",
        *verdict_table(results), "",
        "A figure marked **miss** is explained, with its measured cause, in bench/README.md, "
        "section \"Known gaps\".", "",
    ]
    if notes:
        lines += ["Notes:", *(f"- {n}" for n in notes), ""]
    return "\n".join(lines)
