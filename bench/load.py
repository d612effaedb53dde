"""Load generators: wrk (C, not Python-bound) for request rates, an asyncio client for streams."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.procs import pinned

# POST body and key from the environment; done() prints one JSON line the runner parses.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
local f = io.open(os.getenv("BENCH_BODY_FILE"), "rb")
wrk.body = f:read("*a")
f:close()

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"errors": %d, "status_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_available() -> bool:
    """Whether the wrk binary is on PATH."""
    return shutil.which("wrk") is not None


def write_wrk_files(work: Path, bodies: dict[str, bytes]) -> None:
    """The Lua script and one body file per name in WORK."""
    (work / "post.lua").write_text(WRK_SCRIPT)
    for name, body in bodies.items():
        (work / f"{name}.json").write_bytes(body)


def run_wrk(url: str, key: str, body: str, work: Path, connections: int, seconds: int,
            cores: tuple[int, ...]) -> WrkResult:
    """POST WORK/BODY.json to URL for SECONDS with CONNECTIONS keep-alive connections."""
    argv = pinned(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                   "-s", str(work / "post.lua"), url], cores)
    env = {**os.environ, "BENCH_KEY": key, "BENCH_BODY_FILE": str(work / f"{body}.json")}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    data = json.loads(line[6:])
    return WrkResult(requests=data["requests"], seconds=data["duration_us"] / 1e6,
                     p50_us=data["p50_us"], p99_us=data["p99_us"],
                     errors=data["errors"] + data["status_errors"])


@dataclass(frozen=True)
class StreamResult:
    """TTFTs of every stream, the per-stream delivery rates, and how many streams failed."""

    streams: int  # at once
    ttfts: tuple[float, ...]
    rates: tuple[float, ...]  # chunks/s of each stream, first chunk to last
    errors: int

    @property
    def ttft_p50_ms(self) -> float:
        return statistics.median(self.ttfts) * 1000 if self.ttfts else float("nan")

    @property
    def chunks_per_s(self) -> float:
        """The median stream's rate times the streams at once: what they receive together."""
        return statistics.median(self.rates) * self.streams if self.rates else float("nan")


async def _one_stream(session: aiohttp.ClientSession, url: str, body: bytes, key: str,
                      expect: int, delay_s: float) -> tuple[float, float, bool]:
    """(time to first token, chunks/s from first to last chunk, ok) for one streamed request."""
    await asyncio.sleep(delay_s)
    start, first, last, chunks = time.perf_counter(), 0.0, 0.0, 0
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            if resp.status != 200:
                return 0.0, 0.0, False
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    chunks += 1
                    last = time.perf_counter()
                    first = first or last
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return 0.0, 0.0, False
    rate = (chunks - 1) / (last - first) if chunks > 1 and last > first else 0.0
    return first - start, rate, chunks >= expect


async def run_streams(url: str, key: str, model: str, streams: int, chunks: int,
                      interval_ms: float, batches: int = 1) -> StreamResult:
    """BATCHES x STREAMS concurrent streams of CHUNKS chunks INTERVAL_MS apart.

    Starts are spread evenly over one chunk interval, as users' requests arrive: a burst of
    simultaneous starts would measure the queue in front of the proxy, not its added latency.
    """
    body = json.dumps({"model": model, "stream": True, "max_tokens": chunks,
                       "bench_interval_ms": interval_ms,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    results: list[tuple[float, float, bool]] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(batches):
            results += await asyncio.gather(
                *(_one_stream(session, url, body, key, chunks, i * interval_ms / 1000 / streams)
                  for i in range(streams)))
    ok = [r for r in results if r[2]]
    return StreamResult(streams=streams, ttfts=tuple(r[0] for r in ok),
                        rates=tuple(r[1] for r in ok), errors=len(results) - len(ok))
