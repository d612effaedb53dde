"""Quick router cost: CPU per request of the proxy process and added p50 latency, same run.

    .venv/bin/python bench/quick_router_cost.py [--requests 3000] [--apis]

Starts the fake backend (tests/fake_backend.py), a bare aiohttp pass-through proxy (the floor),
and `llm-launch router` twice (accounting on and off) on loopback, then sends the same chat
request to each: at concurrency 1 for latency, at concurrency 16 for CPU. CPU time is read from
/proc/PID/task/*/schedstat (nanoseconds, all threads of the proxy process).

--apis: instead, the router's (accounting on) CPU per request for the same question asked as a
chat completion, a Responses API request and an Anthropic Messages request, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BODY = b'{"model":"fake-chat","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":16}'
# The same question in each API the router serves for chat models.
API_BODIES = {
    "/v1/chat/completions": BODY,
    "/v1/responses": b'{"model":"fake-chat","input":"Say hello in five words.","max_output_tokens":16}',
    "/v1/messages": b'{"model":"fake-chat","messages":[{"role":"user","content":"Say hello in five words."}],'
                    b'"max_tokens":16}',
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of PID, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended between listing and reading
    return total


def wait_ready(url: str, timeout: float = 30.0) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def floor_proxy(port: int, upstream: str, key: str) -> None:
    """The floor: key check against a set, one upstream session, bytes through."""
    from aiohttp import web

    keys = {f"Bearer {key}"}

    async def main() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

        async def handle(request: web.Request) -> web.StreamResponse:
            if request.headers.get("Authorization") not in keys:
                return web.Response(status=401)
            body = await request.read()
            async with session.post(upstream + request.path, data=body,
                                    headers={"Content-Type": "application/json"}) as up:
                if up.content_type != "text/event-stream":
                    return web.Response(body=await up.read(), status=up.status, content_type=up.content_type)
                out = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
                await out.prepare(request)
                async for data in up.content.iter_any():
                    await out.write(data)
                await out.write_eof()
                return out

        async def health(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    _run(main())


def _run(coro: object) -> None:
    try:
        import uvloop
        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


async def load(url: str, key: str, count: int, concurrency: int, body: bytes = BODY) -> list[float]:
    """Send COUNT requests (BODY) with CONCURRENCY workers; latencies in seconds."""
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        remaining = [count]

        async def worker() -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                start = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as reply:
                    await reply.read()
                    assert reply.status == 200, reply.status
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def streams(url: str, key: str, count: int = 16, rounds: int = 2) -> tuple[float, float]:
    """COUNT concurrent paced streams, ROUNDS times: p50 time to first chunk (ms), chunks/s per stream."""
    body = BODY.replace(b'"fake-chat"', b'"fake-stream"').replace(b'"max_tokens":16', b'"stream":true')
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    ttfts: list[float] = []
    rates: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> None:
            start = time.perf_counter()
            chunks, first = 0, 0.0
            async with session.post(url, data=body, headers=headers) as reply:
                async for data in reply.content.iter_any():
                    if not first:
                        first = time.perf_counter()
                    chunks += data.count(b"data: ")
            ttfts.append(first - start)
            rates.append(chunks / (time.perf_counter() - start))

        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(count)))
    return statistics.median(ttfts) * 1000, statistics.median(rates)


def measure(name: str, url: str, pid: int | None, key: str, count: int) -> dict[str, float | str]:
    asyncio.run(load(url, key, 300, 4))  # warm-up: connections, caches
    lat = asyncio.run(load(url, key, count, 1))
    before = cpu_ns(pid) if pid else 0
    asyncio.run(load(url, key, count, 16))
    cpu_us = (cpu_ns(pid) - before) / count / 1000 if pid else 0.0
    ttft, rate = asyncio.run(streams(url, key))
    return {"target": name, "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": statistics.quantiles(lat, n=100)[98] * 1000, "cpu_us": cpu_us,
            "ttft_ms": ttft, "chunks_s": rate}


def setup_registry(tmp: Path, backend_url: str, stream_url: str) -> tuple[str, str]:
    sys.path.insert(0, str(ROOT))
    from launcher.core.db import open_engine, session_factory
    from launcher.core.keys import create_key
    from launcher.core.deployments import add_backend
    from launcher.core.settings import KeyLimits

    url = f"sqlite:///{tmp / 'registry.db'}"
    engine = open_engine(url)
    with session_factory(engine)() as session:
        add_backend(session, "fake-chat", backend_url)
        add_backend(session, "fake-stream", stream_url)
        key, _ = create_key(session, "bench", limits=KeyLimits(rpm=10**9, tpm=10**12))
    engine.dispose()
    return url, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--apis", action="store_true", help="CPU per request of chat, Responses and Messages.")
    parser.add_argument("--floor-proxy", nargs=3, metavar=("PORT", "UPSTREAM", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_proxy:
        floor_proxy(int(args.floor_proxy[0]), args.floor_proxy[1], args.floor_proxy[2])
        return
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            run_all(tmp, procs, args.requests, args.apis)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)


def run_all(tmp: Path, procs: list[subprocess.Popen[bytes]], count: int, apis: bool = False) -> None:
    def spawn(*argv: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "LLM_LAUNCH_CONFIG": str(tmp / "settings.toml"), "PYTHONPATH": str(ROOT)}
        log = open(tmp / f"proc{len(procs)}.log", "wb")  # the router's one line per request goes here
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        procs.append(proc)
        return proc

    (tmp / "settings.toml").write_text("")
    backend_port, floor_port, router_port, bare_port = (free_port() for _ in range(4))
    backend = f"http://127.0.0.1:{backend_port}"
    spawn(sys.executable, "-m", "tests.fake_backend", "--port", str(backend_port), "--no-record",
          "--model", "fake-chat", "--model", "fake-stream", "--chunks", "50", "--chunk-delay-ms", "10")
    wait_ready(backend + "/health")
    db, key = setup_registry(tmp, backend, backend)
    floor = spawn(sys.executable, __file__, "--floor-proxy", str(floor_port), backend, key)
    cli = [sys.executable, "-c", "from launcher.cli import main; main()", "--db", db, "router"]
    router = spawn(*cli, "--port", str(router_port))
    bare = spawn(*cli, "--port", str(bare_port), "--no-accounting")
    try:
        for port in (floor_port, router_port, bare_port):
            wait_ready(f"http://127.0.0.1:{port}/health")
    except SystemExit:
        for log in sorted(tmp.glob("proc*.log")):
            print(log.name, log.read_text()[-2000:], file=sys.stderr)
        raise
    if apis:
        api_costs(f"http://127.0.0.1:{router_port}", router.pid, key, count)
        return
    path = "/v1/chat/completions"
    rows = [
        measure("direct (fake backend)", backend + path, None, key, count),
        measure("floor: bare aiohttp proxy", f"http://127.0.0.1:{floor_port}{path}", floor.pid, key, count),
        measure("router, accounting on", f"http://127.0.0.1:{router_port}{path}", router.pid, key, count),
        measure("router, --no-accounting", f"http://127.0.0.1:{bare_port}{path}", bare.pid, key, count),
    ]
    report(rows)


def api_costs(router: str, pid: int, key: str, count: int) -> None:
    """The router's CPU per request for each API, interleaved in rounds so that noise hits all alike."""
    spent = dict.fromkeys(API_BODIES, 0)
    for path, body in API_BODIES.items():  # warm-up
        asyncio.run(load(router + path, key, 300, 4, body))
    for _ in range(3):
        for path, body in API_BODIES.items():
            before = cpu_ns(pid)
            asyncio.run(load(router + path, key, count // 3, 16, body))
            spent[path] += cpu_ns(pid) - before
    chat = spent["/v1/chat/completions"]
    print(f"{'endpoint':24} {'CPU us/req':>10} {'x chat':>7}")
    for path, ns in spent.items():
        print(f"{path:24} {ns / (count // 3 * 3) / 1000:10.1f} {ns / chat:7.2f}")
    print(f"router with accounting on, {count // 3 * 3} requests each at concurrency 16, in 3 interleaved rounds")


def report(rows: list[dict[str, float | str]]) -> None:
    direct, floor = float(rows[0]["p50_ms"]), float(rows[1]["cpu_us"])
    ttft, rate = float(rows[0]["ttft_ms"]), float(rows[0]["chunks_s"])
    print(f"{'target':28} {'p50 ms':>7} {'p99 ms':>7} {'added p50':>9} {'CPU us/req':>10} {'x floor':>7}"
          f" {'TTFT ms':>8} {'+TTFT':>6} {'chunks/s':>8} {'x direct':>8}")
    for row in rows:
        cpu = float(row["cpu_us"])
        print(f"{row['target']:28} {row['p50_ms']:7.3f} {row['p99_ms']:7.3f} "
              f"{float(row['p50_ms']) - direct:9.3f} {cpu:10.1f} {cpu / floor if cpu else 0:7.2f}"
              f" {row['ttft_ms']:8.2f} {float(row['ttft_ms']) - ttft:6.2f} {row['chunks_s']:8.1f}"
              f" {float(row['chunks_s']) / rate:8.3f}")
    print("p50/p99: non-streamed chat at concurrency 1; CPU: at concurrency 16, all threads of the proxy;"
          " streams: 16 concurrent, 50 chunks 10 ms apart")


if __name__ == "__main__":
    main()
