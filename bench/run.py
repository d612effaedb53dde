"""`python -m bench.run [--quick|--smoke]`: every target side by side, one table, bench/RESULTS.md."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import document, procs
from bench.load import wrk_available, write_wrk_files
from bench.measure import QUICK, SMOKE, Figures, Plan, measure, measure_cpu
from bench.measure import measure_many_streams, request_bodies
from bench.procs import Cores
from bench.router_setup import add_backends, add_keys, make_registry, router_available
from bench.router_setup import write_config
from bench.targets import Bench, Running, nginx_available, start_backend, start_floor
from bench.targets import start_nginx, start_router

Starter = Callable[[], Running]


def log(message: str) -> None:
    """Progress on stderr; the table goes to stdout."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def with_target(name: str, start: Starter) -> Running | None:
    """Start a target; a target that fails to start is reported, not fatal."""
    try:
        return start()
    except RuntimeError as exc:
        log(f"{name} did not start: {exc}")
        return None


class Runner:
    """Holds the run's setup; each method is one part of the run."""

    def __init__(self, plan: Plan, work: Path) -> None:
        self.plan, self.work, self.cores = plan, work, Cores.detect()
        # A prefix: a secret starting with "-" would read as an option to argparse.
        self.secret, key = "bench-" + secrets.token_urlsafe(16), "sk-bench-" + secrets.token_urlsafe(16)
        self.backend_port = procs.free_port()
        self.bench = Bench(work=work, cores=self.cores, secret=self.secret, key=key,
                           backend_url=f"http://127.0.0.1:{self.backend_port}")
        self.results: dict[str, list[Figures]] = {}
        self.notes: list[str] = []
        self.dbs: dict[str, Path] = {}
        self.router_key = ""

    def prepare_router(self) -> None:
        """The router's registries: base (1 key, 1 backend per model), 10,000 keys, 100 backends."""
        config = write_config(self.work / "settings.toml")
        base = self.work / "base.db"
        self.router_key = make_registry(base, config, self.bench.backend_url, self.secret)
        self.dbs["base"] = base
        if self.plan.growth:
            for name in ("keys", "backends"):
                db = self.work / f"{name}.db"
                shutil.copy(base, db)
                if name == "keys":
                    add_keys(db, 9_999)
                else:
                    add_backends(db, 98, self.bench.backend_url, self.secret)
                self.dbs[name] = db

    def router(self, name: str, db: str = "base", accounting: bool = True) -> Starter:
        config = self.work / "settings.toml"
        def start() -> Running:
            running = start_router(self.bench, name, self.dbs[db], config, accounting)
            running.key = self.router_key
            return running
        return start

    def targets(self) -> list[tuple[str, Starter]]:
        chosen: list[tuple[str, Starter]] = [("floor", lambda: start_floor(self.bench))]
        if nginx_available():
            chosen.append(("nginx", lambda: start_nginx(self.bench)))
        if self.dbs:
            chosen.append(("router", self.router("router")))
            chosen.append(("router-noacct", self.router("router-noacct", accounting=False)))
        return chosen

    def record(self, name: str, figures: Figures) -> None:
        self.results.setdefault(name, []).append(figures)
        log(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items()))

    def rep(self) -> None:
        """One round over every target, the backend restarted first (its start-up is direct's)."""
        backend, url, startup = start_backend(self.work, self.cores, self.secret, self.backend_port)
        try:
            direct = Running("direct", url, self.secret, backend, startup)
            self.record("direct", measure(direct, self.plan, self.work, self.cores))
            for name, start in self.targets():
                self.one(name, start, lambda t: measure(t, self.plan, self.work, self.cores))
            if self.plan.growth and self.dbs:
                # the base registry again, right before: growth is judged on neighbouring phases
                for db in ("base", "keys", "backends"):
                    self.one(f"router-{db}", self.router(f"router-{db}", db),
                             lambda t: measure_cpu(t, self.plan, self.work, self.cores))
            self.many_streams(direct)
        finally:
            procs.stop(backend)

    def many_streams(self, direct: Running) -> None:
        """Many slow streams through the floor and the router, each on a fresh process."""
        self.record("many-direct", measure_many_streams(direct, self.plan))
        starters = [("many-floor", lambda: start_floor(self.bench))]
        if self.dbs:
            starters.append(("many-router", self.router("many-router")))
        for name, start in starters:
            self.one(name, start, lambda t: measure_many_streams(t, self.plan))

    def one(self, name: str, start: Starter, run: Callable[[Running], Figures]) -> None:
        target = with_target(name, start)
        if target is None:
            self.notes.append(f"{name} did not start (see its log)")
            return
        try:
            self.record(name, run(target))
        except RuntimeError as exc:
            log(f"{name} failed: {exc}")
            self.notes.append(f"{name} failed: {str(exc).splitlines()[0]}")
        finally:
            procs.stop(target.proc)

    def ledger(self) -> None:
        """Issue 4's ledger rate, from bench.ledger_throughput (end to end, SQLite writes included)."""
        if importlib.util.find_spec("bench.ledger_throughput") is None:
            return
        records = 20_000 if self.plan.reps == 1 else 100_000
        code = ("import asyncio, json, sys; from bench.ledger_throughput import ledger_rates; "
                f"print(json.dumps(asyncio.run(ledger_rates({records}, 1000, False, 1.0))))")
        for _ in range(self.plan.reps):
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                self.notes.append(f"ledger throughput failed: {done.stderr.strip().splitlines()[-1:]}")
                return
            absorbed, end_to_end = json.loads(done.stdout.splitlines()[-1])
            self.record("ledger", {"record_per_s": absorbed, "end_to_end_per_s": end_to_end})

    def control_plane(self) -> None:
        """Reconcile pass and `up`, measured in a fresh process (see bench.control_plane)."""
        if importlib.util.find_spec("launcher.control.supervisor") is None:
            self.notes.append("control plane: launcher.supervisor not built yet")
            return
        argv = [sys.executable, "-m", "bench.control_plane", str(self.work / "control"),
                str(self.plan.reps)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            self.notes.append(f"control plane failed: {done.stderr.strip().splitlines()[-1:]}")
            return
        for name, rounds in json.loads(done.stdout.splitlines()[-1]).items():
            for figures in rounds:
                self.record(name, figures)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="Shorter phases (under 2 minutes).")
    mode.add_argument("--smoke", action="store_true", help="One tiny round: checks the suite runs.")
    parser.add_argument("--output", default=str(Path(__file__).with_name("RESULTS.md")),
                        help="Where to write the table ('-' for nowhere).")
    parser.add_argument("--keep", action="store_true", help="Keep the work dir (logs) after the run.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table and writes it unless --output -."""
    args = parse_args(argv)
    plan = SMOKE if args.smoke else QUICK if args.quick else Plan()
    if not wrk_available():
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    procs.raise_open_files()
    cores = Cores.detect()
    os.sched_setaffinity(0, cores.load)  # this process is the stream client: keep it off the proxy's core
    work = Path(tempfile.mkdtemp(prefix="llm-bench-"))
    started = time.perf_counter()
    runner = Runner(plan, work)
    write_wrk_files(work, request_bodies())
    try:
        if router_available():
            runner.prepare_router()
        else:
            runner.notes.append("router not built yet (router.app or `llm-launch router` missing)")
        for i in range(plan.reps):
            log(f"round {i + 1} of {plan.reps}")
            runner.rep()
        runner.control_plane()
        runner.ledger()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"logs kept in {work}")
    text = document.render(runner.results, runner.notes, plan, cores, time.perf_counter() - started,
                         ["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])
    print(text)
    if args.output != "-":
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
