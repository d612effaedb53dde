"""One round of measurements against one running target."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from bench.load import run_streams, run_wrk
from bench.procs import Cores
from bench.router_setup import CHAT_MODEL, EMBED_MODEL
from bench.targets import Running

Figures = dict[str, float]


@dataclass(frozen=True)
class Plan:
    """How long and how hard each phase runs; --quick and --smoke shrink it."""

    seconds: int = 5
    warmup_s: int = 1
    rate_connections: int = 64
    embed_connections: int = 16
    streams: int = 16
    stream_chunks: int = 50
    stream_interval_ms: float = 10.0
    many_streams: int = 1000
    many_chunks: int = 20
    many_interval_ms: float = 250.0
    growth: bool = True
    reps: int = 2
    batches: int = 3  # of paced streams per round, for a steadier TTFT median
    lone_streams: int = 20  # one at a time: TTFT without other streams queued in the proxy


QUICK = Plan(seconds=2, warmup_s=0, many_chunks=8)
SMOKE = Plan(seconds=1, warmup_s=0, streams=4, stream_chunks=5, many_streams=20, many_chunks=3,
             many_interval_ms=50.0, growth=False, reps=1, batches=1, lone_streams=3)


def request_bodies() -> dict[str, bytes]:
    """The POST bodies wrk sends: a short chat request and an embeddings request."""
    chat = {"model": CHAT_MODEL, "max_tokens": 16,
            "messages": [{"role": "user", "content": "Say ok sixteen times."}]}
    embed = {"model": EMBED_MODEL, "input": "The quick brown fox jumps over the lazy dog."}
    return {"chat": json.dumps(chat).encode(), "embed": json.dumps(embed).encode()}


def _rate(target: Running, path: str, body: str, connections: int, seconds: int,
          work: Path, cores: Cores) -> Figures:
    """One wrk phase; CPU per request of the target's process over exactly that phase."""
    before = procs.cpu_seconds(target.proc.pid)
    result = run_wrk(target.url + path, target.key, body, work, connections, seconds, cores.load)
    cpu = procs.cpu_seconds(target.proc.pid) - before
    return {"rps": result.rps, "p50_us": result.p50_us, "p99_us": result.p99_us,
            "errors": result.errors,
            "cpu_us": cpu * 1e6 / result.requests if result.requests else float("nan")}


def routes(target: Running, body: bytes, path: str = "/v1/chat/completions",
           timeout_s: float = 60.0) -> float:
    """Wait until a request through TARGET succeeds (the router's first backend probe); seconds."""
    start = time.perf_counter()
    request = urllib.request.Request(target.url + path, data=body, headers={
        "Authorization": f"Bearer {target.key}", "Content-Type": "application/json"})
    while time.perf_counter() - start < timeout_s:
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                answer.read()
                return time.perf_counter() - start
        except (urllib.error.URLError, OSError):
            time.sleep(0.01)
    raise RuntimeError(f"{target.name} did not route a request within {timeout_s} s; see {target.proc.log}")


def warm_up(target: Running, plan: Plan, work: Path, cores: Cores) -> None:
    """Wait until the target routes, then fill pools and caches."""
    bodies = request_bodies()
    routes(target, bodies["chat"])
    routes(target, bodies["embed"], "/v1/embeddings")
    if plan.warmup_s:
        _rate(target, "/v1/chat/completions", "chat", 8, plan.warmup_s, work, cores)
        _rate(target, "/v1/embeddings", "embed", 4, plan.warmup_s, work, cores)


def measure(target: Running, plan: Plan, work: Path, cores: Cores) -> Figures:
    """Latency at c=1, rate at c=64, embeddings at c=16, paced streams, RSS, start-up."""
    chat, embed = "/v1/chat/completions", "/v1/embeddings"
    warm_up(target, plan, work, cores)
    one = _rate(target, chat, "chat", 1, plan.seconds, work, cores)
    many = _rate(target, chat, "chat", plan.rate_connections, plan.seconds, work, cores)
    emb = _rate(target, embed, "embed", plan.embed_connections, plan.seconds, work, cores)
    before = procs.cpu_seconds(target.proc.pid)
    streams = asyncio.run(run_streams(target.url + chat, target.key, CHAT_MODEL, plan.streams,
                                      plan.stream_chunks, plan.stream_interval_ms, plan.batches))
    stream_cpu = procs.cpu_seconds(target.proc.pid) - before
    lone = asyncio.run(run_streams(target.url + chat, target.key, CHAT_MODEL, 1, 5,
                                   plan.stream_interval_ms, plan.lone_streams))
    return {
        "startup_ms": target.startup_s * 1000,
        "p50_us": one["p50_us"], "p99_us": one["p99_us"], "cpu_c1_us": one["cpu_us"],
        "rps": many["rps"], "cpu_us": many["cpu_us"],
        "embed_rps": emb["rps"], "embed_cpu_us": emb["cpu_us"],
        "ttft_ms": streams.ttft_p50_ms, "chunks_s": streams.chunks_per_s,
        "stream_cpu_ms": stream_cpu * 1e3 / (plan.streams * plan.batches),
        "lone_ttft_ms": lone.ttft_p50_ms,
        "errors": one["errors"] + many["errors"] + emb["errors"] + streams.errors + lone.errors,
        "rss_mb": procs.peak_rss_mb(target.proc.pid),
    }


def measure_cpu(target: Running, plan: Plan, work: Path, cores: Cores) -> Figures:
    """Only the CPU per chat request at c=64 (for the growth rows)."""
    warm_up(target, plan, work, cores)
    many = _rate(target, "/v1/chat/completions", "chat", plan.rate_connections, plan.seconds,
                 work, cores)
    return {"cpu_us": many["cpu_us"], "rps": many["rps"], "errors": many["errors"]}


def measure_many_streams(target: Running, plan: Plan) -> Figures:
    """Many slow concurrent streams: errors and the proxy's peak RSS."""
    result = asyncio.run(run_streams(
        target.url + "/v1/chat/completions", target.key, CHAT_MODEL, plan.many_streams,
        plan.many_chunks, plan.many_interval_ms))
    return {"errors": result.errors, "rss_mb": procs.peak_rss_mb(target.proc.pid),
            "ttft_ms": result.ttft_p50_ms, "chunks_s": result.chunks_per_s}
