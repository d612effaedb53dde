"""Router throughput with `--workers 2` against `--workers 1`, side by side in one run.

    source "$LLM_LAUNCH_SERVICES_DIR/env.sh"     # PostgreSQL and Redis (scripts/local-services start)
    .venv/bin/python -m bench.workers [--seconds 8] [--rounds 3] [--connections 64] [--redis URL]

Four routers run at once on one PostgreSQL registry, against one fast backend
(bench/fast_backend.py): shared mode (accounting on, every limit set on the key, limits in
Redis) and `--no-accounting`, each with 1 and 2 workers. wrk (one thread, keep-alive
connections) posts the same chat request to each in turn, in ROUNDS interleaved rounds of
SECONDS each, so slow phases of a shared machine hit every router alike. The table shows each
router's median req/s, p50 latency and CPU per request (all its processes), and 2 workers over 1.
Nothing is pinned: the workers may use every core, and so may the load, backend and databases.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import redis

from bench.load import WrkResult, run_wrk, wrk_available, write_wrk_files
from bench.quick_router_cost import BODY, cpu_ns, free_port, wait_ready
from bench.shared_limits import EVERY_LIMIT, Stack, pg_database, registry

CHAT = BODY.replace(b"fake-chat", b"bench-chat")  # the model bench/fast_backend.py lists
REDIS_DB = 13


class Round(NamedTuple):
    """One wrk phase against one router: wrk's figures, the router's CPU, the machine's busy share."""

    wrk: WrkResult
    cpu_ns: int
    busy: float  # a database of its own: the key ids of this registry must not meet another's counters


def tree(pid: int) -> list[int]:
    """PID and its descendants (the router's parent and its workers)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [p for child in task.read_text().split() for p in tree(int(child))]
        except FileNotFoundError:
            pass
    return found


def tree_cpu_ns(pid: int) -> int:
    total = 0
    for one in tree(pid):
        try:
            total += cpu_ns(one)
        except FileNotFoundError:
            pass  # a process that ended between listing and reading
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def start_router(stack: Stack, db: str, workers: int, *args: str) -> tuple[str, int]:
    """`llm-launch router --workers WORKERS ARGS` on a free port; waits until every worker serves."""
    port = free_port()
    proc = stack.spawn(sys.executable, "-c", "from launcher.cli import main; main()", "--db", db, "router",
                       "--port", str(port), "--workers", str(workers), "--set", "request_log=false", *args)
    log = stack.tmp / f"proc{len(stack.procs) - 1}.log"
    deadline = time.monotonic() + 60
    while "listening on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"router did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--redis", help="URL of a Redis database the run may empty (default: the server of "
                                        f"LLM_LAUNCH_TEST_REDIS_URL, database {REDIS_DB})")
    args = parser.parse_args()
    pg_server, redis_server = os.environ.get("LLM_LAUNCH_TEST_PG_URL"), os.environ.get("LLM_LAUNCH_TEST_REDIS_URL")
    redis_url = args.redis or (f"{redis_server.rsplit('/', 1)[0]}/{REDIS_DB}" if redis_server else "")
    if not pg_server or not redis_url:
        raise SystemExit("needs PostgreSQL and Redis: scripts/local-services start, then source its env.sh")
    if not wrk_available():
        raise SystemExit("needs wrk (Debian: apt-get install wrk)")
    with tempfile.TemporaryDirectory() as tmp, pg_database(pg_server) as pg:
        stack = Stack(Path(tmp))
        redis.Redis.from_url(redis_url).flushdb()
        try:
            compare(stack, pg, redis_url, args)
        finally:
            stack.stop()
            redis.Redis.from_url(redis_url).flushdb()


def compare(stack: Stack, pg: str, redis_url: str, args: argparse.Namespace) -> None:
    port = free_port()
    stack.spawn(sys.executable, "-m", "bench.fast_backend", "--port", str(port))
    wait_ready(f"http://127.0.0.1:{port}/health")
    key = registry(pg, f"http://127.0.0.1:{port}", EVERY_LIMIT, model="bench-chat")
    work = stack.tmp
    write_wrk_files(work, {"chat": CHAT})
    cores = tuple(sorted(os.sched_getaffinity(0)))
    load_at_start = f"{os.getloadavg()[0]:.2f}"  # other users of a shared machine show here
    targets = {(mode, n): start_router(stack, pg, n, *extra)
               for mode, extra in [("shared (PostgreSQL + Redis)", ["--set", f"redis_url={redis_url!r}"]),
                                   ("--no-accounting", ["--no-accounting"])]
               for n in (1, 2)}
    for url, _ in targets.values():  # warm-up: connections, the key's first seed from the ledger
        run_wrk(url, key, "chat", work, args.connections, 2, cores)
    results: dict[tuple[str, int], list[Round]] = {t: [] for t in targets}
    for _ in range(args.rounds):
        for target, (url, pid) in targets.items():
            before, (busy, total) = tree_cpu_ns(pid), machine_ticks()
            result = run_wrk(url, key, "chat", work, args.connections, args.seconds, cores)
            busy_after, total_after = machine_ticks()
            results[target].append(Round(result, tree_cpu_ns(pid) - before,
                                         (busy_after - busy) / max(1, total_after - total)))
    report(results, args)
    print(f"load average at the start {load_at_start}, at the end {os.getloadavg()[0]:.2f}")


def report(results: dict[tuple[str, int], list[Round]], args: argparse.Namespace) -> None:
    print(f"{'mode':28} {'workers':>7} {'req/s':>8} {'rounds':>22} {'p50 ms':>7} {'CPU us/req':>10} "
          f"{'router cores':>12} {'machine busy':>12} {'errors':>6} {'x 1 worker':>10}")
    for (mode, n), runs in results.items():
        rates = [r.wrk.rps for r in runs]
        median = statistics.median(rates)
        one = statistics.median(r.wrk.rps for r in results[(mode, 1)])
        cpu_ns_total = sum(r.cpu_ns for r in runs)
        cpu = cpu_ns_total / max(1, sum(r.wrk.requests for r in runs)) / 1000
        cores = cpu_ns_total / 1e9 / sum(r.wrk.seconds for r in runs)
        busy = statistics.mean(r.busy for r in runs)
        p50 = statistics.median(r.wrk.p50_us for r in runs) / 1000
        errors = sum(r.wrk.errors for r in runs)
        shown = " ".join(f"{rate:.0f}" for rate in rates)
        print(f"{mode:28} {n:>7} {median:8.0f} {shown:>22} {p50:7.2f} {cpu:10.1f} {cores:12.2f} {busy:11.0%} "
              f"{errors:>6} {median / one:10.2f}")
    print(f"chat through the router, wrk -t1 -c{args.connections}, {args.rounds} interleaved rounds of "
          f"{args.seconds} s each, on {os.cpu_count()} cores shared by wrk, the backend, Redis, PostgreSQL "
          f"and the routers")


if __name__ == "__main__":
    main()
