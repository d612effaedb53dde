"""Shared mode's cost and exactness, side by side in one run.

    source "$LLM_LAUNCH_SERVICES_DIR/env.sh"     # scripts/local-services start
    .venv/bin/python -m bench.shared_limits [--requests 3000]

1. Router CPU per chat request: `llm-launch router` in the embedded mode (SQLite registry,
   limits in its memory) and in shared mode (PostgreSQL registry, limits in Redis), the same key
   with every limit set, measured in interleaved rounds at concurrency 16 (the CPU of all threads
   of each router process; Redis's own CPU per request is shown beside it).
2. The exactness table: three shared routers, for each limit a burst spread round-robin over
   them, against a backend that answers after the burst was decided.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.quick_router_cost import BODY, cpu_ns, free_port, load, wait_ready
from launcher.core.db import open_engine, session_factory
from launcher.core.deployments import add_backend
from launcher.core.keys import create_key
from launcher.core.settings import KeyLimits

ROOT = Path(__file__).resolve().parents[1]
BIG = 10**12
EVERY_LIMIT = KeyLimits(rpm=10**9, tpm=BIG, max_parallel=10**6, daily_tokens=BIG, monthly_tokens=BIG,
                        daily_audio_seconds=10**9)
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
RESERVE = len(json.dumps(CHAT)) // 4 + 10
EXACTNESS = [("rpm", KeyLimits(rpm=100), 1000), ("tpm", KeyLimits(tpm=100 * RESERVE), 1000),
             ("max_parallel", KeyLimits(max_parallel=8), 200), ("daily_tokens", KeyLimits(daily_tokens=12 * RESERVE), 200),
             ("monthly_tokens", KeyLimits(monthly_tokens=9 * RESERVE), 200)]


class Stack:
    """Processes started for the run, stopped at its end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        (tmp / "settings.toml").write_text("")

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "LLM_LAUNCH_CONFIG": str(self.tmp / "settings.toml"), "PYTHONPATH": str(ROOT)}
        log = open(self.tmp / f"proc{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(proc)
        return proc

    def router(self, db: str, *settings: str) -> tuple[str, int]:
        port = free_port()
        proc = self.spawn(sys.executable, "-c", "from launcher.cli import main; main()", "--db", db, "router",
                          "--port", str(port), "--set", "request_log=false", *(f"--set={s}" for s in settings))
        wait_ready(f"http://127.0.0.1:{port}/health")
        return f"http://127.0.0.1:{port}", proc.pid

    def backend(self, *args: str) -> str:
        port = free_port()
        self.spawn(sys.executable, "-m", "tests.fake_backend", "--port", str(port), "--no-record",
                   "--model", "fake-chat", *args)
        wait_ready(f"http://127.0.0.1:{port}/health")
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(30)


@contextmanager
def pg_database(server: str) -> Iterator[str]:
    admin = create_engine(make_url(server), isolation_level="AUTOCOMMIT")
    name = f"llm_launch_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def registry(url: str, backend: str, limits: KeyLimits, model: str = "fake-chat") -> str:
    """BACKEND registered as MODEL, and a key with LIMITS; returns the key."""
    engine = open_engine(url)
    with session_factory(engine)() as session:
        add_backend(session, model, backend)
        key, _ = create_key(session, "bench", limits=limits)
    engine.dispose()
    return key


def redis_cpu_ns(client: redis.Redis) -> int:
    info = client.info("cpu")
    return int((float(info["used_cpu_sys"]) + float(info["used_cpu_user"])) * 1e9)


def cpu_costs(stack: Stack, pg: str, redis_url: str, count: int) -> None:
    backend = stack.backend()
    sqlite = f"sqlite:///{stack.tmp / 'registry.db'}"
    embedded_key = registry(sqlite, backend, EVERY_LIMIT)
    shared_key = registry(pg, backend, EVERY_LIMIT)
    targets = {"embedded (SQLite, limits in memory)": (*stack.router(sqlite), embedded_key),
               "shared (PostgreSQL + Redis)": (*stack.router(pg, f"redis_url={redis_url!r}"), shared_key)}
    client = redis.Redis.from_url(redis_url)
    spent = dict.fromkeys(targets, 0)
    in_redis = 0
    for url, _, key in targets.values():  # warm-up
        asyncio.run(load(url + "/v1/chat/completions", key, 300, 4, BODY))
    rounds = 3
    for _ in range(rounds):
        for name, (url, pid, key) in targets.items():
            before, redis_before = cpu_ns(pid), redis_cpu_ns(client)
            asyncio.run(load(url + "/v1/chat/completions", key, count // rounds, 16, BODY))
            spent[name] += cpu_ns(pid) - before
            if name.startswith("shared"):
                in_redis += redis_cpu_ns(client) - redis_before
    done = count // rounds * rounds
    embedded = spent[next(iter(spent))]
    print(f"{'router':40} {'CPU us/req':>10} {'x embedded':>10}")
    for name, ns in spent.items():
        print(f"{name:40} {ns / done / 1000:10.1f} {ns / embedded:10.2f}")
    print(f"{'  Redis itself, per shared request':40} {in_redis / done / 1000:10.1f}")
    print(f"chat, every limit set on the key, {done} requests each at concurrency 16 in {rounds} interleaved rounds")


async def _burst(urls: list[str], key: str, count: int) -> int:
    admitted = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     headers={"Authorization": f"Bearer {key}"}) as session:
        async def one(i: int) -> None:
            nonlocal admitted
            async with session.post(urls[i % len(urls)] + "/v1/chat/completions", json=CHAT) as reply:
                await reply.read()
                admitted += reply.status == 200
        await asyncio.gather(*(one(i) for i in range(count)))
    return admitted


def exactness(stack: Stack, pg: str, redis_url: str) -> None:
    backend = stack.backend("--latency-ms", "15000")
    engine = open_engine(pg)
    with session_factory(engine)() as session:
        add_backend(session, "fake-chat", backend)
    urls = [stack.router(pg, f"redis_url={redis_url!r}", "stall_timeout_s=300")[0] for _ in range(3)]
    print(f"\n{'limit':16} {'sent over 3 routers':>20} {'admitted':>9} {'allowed':>8}")
    for name, limits, sent in EXACTNESS:
        with session_factory(engine)() as session:
            key, _ = create_key(session, f"exact-{name}", limits=limits)
        time.sleep(1.5)  # the routers learn of the new key (NOTIFY, or their refresh)
        print(f"{name:16} {sent:>20} {asyncio.run(_burst(urls, key, sent)):>9} {_allowed(name, limits):>8}")
    engine.dispose()


def _allowed(name: str, limits: KeyLimits) -> int:
    value = int(getattr(limits, name))
    return value if name in ("rpm", "max_parallel") else value // RESERVE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    pg_server, redis_url = os.environ.get("LLM_LAUNCH_TEST_PG_URL"), os.environ.get("LLM_LAUNCH_TEST_REDIS_URL")
    if not pg_server or not redis_url:
        raise SystemExit("needs PostgreSQL and Redis: scripts/local-services start, then source its env.sh")
    # One Redis database per registry: key ids of two registries would share counters.
    redis_url, exact_redis = (redis_url.rsplit("/", 1)[0] + f"/{n}" for n in (15, 14))
    # Each part on a database of its own: the exactness backends must be the only ones.
    with tempfile.TemporaryDirectory() as tmp, pg_database(pg_server) as pg, pg_database(pg_server) as pg2:
        stack = Stack(Path(tmp))
        for url in (redis_url, exact_redis):
            redis.Redis.from_url(url).flushdb()
        try:
            cpu_costs(stack, pg, redis_url, args.requests)
            exactness(stack, pg2, exact_redis)
        finally:
            stack.stop()
            for url in (redis_url, exact_redis):
                redis.Redis.from_url(url).flushdb()


if __name__ == "__main__":
    main()
