"""Soak: the real router under a steady mixed load for minutes, with clients hanging up at random.

    .venv/bin/python -m bench.soak              # 10 minutes (the documented full soak)
    .venv/bin/python -m bench.soak --short      # about 60 s (what tests/integration/test_soak_short.py runs)
    .venv/bin/python -m bench.soak --duration 120 --rate 60 --json out.json

`llm-launch router` and three fake backends (chat, embeddings, whisper) run as processes on
loopback. Chat (plain and streamed), embeddings and audio requests go at a steady rate; a share of
the streams is abandoned after the first chunk (the injected fault, under a key of its own).
Reported: the router's RSS and open descriptors at start and end, errors beyond the injected
ones, and the usage ledger against what the backends reported to the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.procs import Proc, free_port, start, stop, wait_healthy
from bench.targets import llm_launch

SECRET = "soak-backend-secret"
KINDS = (("chat", 0.35), ("stream", 0.35), ("embeddings", 0.15), ("audio", 0.15))
AUDIO = (b'--soak\r\nContent-Disposition: form-data; name="model"\r\n\r\nsoak-whisper\r\n--soak\r\n'
         b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + b"RIFF" + bytes(4096)
         + b"\r\n--soak--\r\n")


@dataclass
class Usage:
    requests: int = 0
    prompt: int = 0
    completion: int = 0
    audio: float = 0.0


@dataclass
class Report:
    duration_s: float
    sent: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # beyond the injected disconnects
    disconnects_injected: int = 0
    seen: Usage = field(default_factory=Usage)  # what the backends reported to the clients
    ledger: Usage = field(default_factory=Usage)  # what the router's ledger holds for that key
    ledger_quitters: int = 0  # requests charged to the key whose clients hung up
    rss_kib: list[int] = field(default_factory=list)  # start (after warm-up), every 30 s, end
    fds: list[int] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> str:
        return (f"soak {self.duration_s:.0f} s: sent {sum(self.sent.values())} {self.sent}; injected disconnects "
                f"{self.disconnects_injected}; errors beyond injected {self.error_count} {self.errors}\n"
                f"router RSS start {self.rss_kib[0]} KiB, end {self.rss_kib[-1]} KiB; open fds start "
                f"{self.fds[0]}, end {self.fds[-1]}\n"
                f"ledger {asdict(self.ledger)} vs backend-reported {asdict(self.seen)}: "
                f"{'equal' if self.ledger == self.seen else 'DIFFERENT'}; abandoned streams charged "
                f"{self.ledger_quitters} of {self.disconnects_injected}")


def proc_figures(pid: int) -> tuple[int, int]:
    """RSS in KiB and the number of open file descriptors of PID."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


class Load:
    """Clients sending a steady mix; records what they saw."""

    def __init__(self, url: str, keys: dict[str, str], report: Report, quit_share: float, seed: int) -> None:
        self.url, self.keys, self.report, self.quit_share = url, keys, report, quit_share
        self.random = random.Random(seed)

    async def run(self, rate: float, seconds: float, concurrency: int) -> None:
        """Start one request every 1/RATE s for SECONDS, at most CONCURRENCY at once."""
        gate = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks: set[asyncio.Task[None]] = set()
            begin = time.monotonic()
            n = 0
            while (now := time.monotonic()) - begin < seconds:
                await asyncio.sleep(max(0.0, begin + n / rate - now))
                n += 1
                await gate.acquire()
                task = asyncio.create_task(self._one(session, gate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)

    async def _one(self, session: aiohttp.ClientSession, gate: asyncio.Semaphore) -> None:
        kind = self.random.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        quit_early = kind == "stream" and self.random.random() < self.quit_share
        self.report.sent[kind] = self.report.sent.get(kind, 0) + 1
        try:
            await self._send(session, kind, quit_early)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            name = f"{kind}: {type(exc).__name__}"
            self.report.errors[name] = self.report.errors.get(name, 0) + 1
        finally:
            gate.release()

    async def _send(self, session: aiohttp.ClientSession, kind: str, quit_early: bool) -> None:
        key = self.keys["quitter" if quit_early else "steady"]
        headers = {"Authorization": f"Bearer {key}"}
        path, body, data = self._request(kind)
        timeout = aiohttp.ClientTimeout(total=120)
        async with session.post(self.url + path, json=body, data=data, headers=headers, timeout=timeout) as reply:
            if reply.status != 200:
                raise ValueError(f"status {reply.status}")
            if quit_early:
                await reply.content.readany()
                reply.close()  # the client hangs up mid-stream: the injected fault
                self.report.disconnects_injected += 1
                return
            raw = await reply.read()
        self._account(kind, raw)

    def _request(self, kind: str) -> tuple[str, Any, Any]:
        words = " ".join(f"w{self.random.randrange(1000)}" for _ in range(self.random.randint(1, 40)))
        if kind in ("chat", "stream"):
            body: dict[str, Any] = {"model": "soak-chat", "messages": [{"role": "user", "content": words}]}
            if kind == "stream":
                body.update(stream=True, stream_options={"include_usage": True})
            return "/v1/chat/completions", body, None
        if kind == "embeddings":
            return "/v1/embeddings", {"model": "soak-embed", "input": words}, None
        form = aiohttp.FormData()
        form.add_field("model", "soak-whisper")
        form.add_field("file", bytes(4096), filename="a.wav", content_type="audio/wav")
        return "/v1/audio/transcriptions", None, form

    def _account(self, kind: str, raw: bytes) -> None:
        """Add the usage the backend reported in this answer."""
        if kind == "stream":
            if not raw.endswith(b"data: [DONE]\n\n"):
                raise ValueError("stream cut short")
            events = [json.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
            usage = next(e["usage"] for e in events if e.get("usage"))
        else:
            usage = json.loads(raw)["usage"]
        seen = self.report.seen
        seen.requests += 1
        if usage.get("type") == "duration":
            seen.audio += float(usage["seconds"])
            return
        seen.prompt += int(usage.get("prompt_tokens") or 0)
        seen.completion += int(usage.get("completion_tokens") or 0)


def ledger_of(db: Path, key_name: str) -> Usage:
    """The ledger's totals for one key, read with plain sqlite3."""
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT COALESCE(SUM(requests),0), COALESCE(SUM(prompt_tokens),0), "
                           "COALESCE(SUM(completion_tokens),0), COALESCE(SUM(audio_seconds),0) "
                           "FROM usage_daily WHERE key_name = ?", (key_name,)).fetchone()
    return Usage(int(row[0]), int(row[1]), int(row[2]), float(row[3]))


def setup(work: Path) -> tuple[Path, dict[str, str], list[list[str]]]:
    """The registry (keys, three backends on free ports) and the backends' command lines."""
    from launcher.core.db import open_engine, session_factory
    from launcher.core.keys import create_key
    from launcher.core.deployments import add_backend
    from launcher.core.settings import KeyLimits

    db = work / "registry.db"
    engine = open_engine(f"sqlite:///{db}")
    commands = []
    with session_factory(engine)() as session:
        for model, kind, extra in (("soak-chat", "chat", ["--chunks", "20", "--chunk-delay-ms", "5"]),
                                   ("soak-embed", "embeddings", ["--embedding-dim", "64"]),
                                   ("soak-whisper", "transcription", [])):
            port = free_port()
            add_backend(session, model, f"http://127.0.0.1:{port}", kind=kind, secret=SECRET)
            commands.append([sys.executable, "-m", "tests.fake_backend", "--port", str(port), "--model", model,
                             f"--secret={SECRET}", "--no-record", *extra])
        keys = {name: create_key(session, name, limits=KeyLimits(rpm=10**9, tpm=10**12, max_parallel=10**6))[0]
                for name in ("steady", "quitter")}
    engine.dispose()
    return db, keys, commands


def soak(seconds: float, rate: float, concurrency: int, quit_share: float, work: Path) -> Report:
    """Run the whole soak in WORK and return its report."""
    db, keys, commands = setup(work)
    backends = [start(f"backend{i}", argv, work) for i, argv in enumerate(commands)]
    port = free_port()
    router = start("router", [*llm_launch(), "--db", str(db), "router", "--port", str(port),
                              "--set", "ledger_flush_s=1.0", "--set", "health_interval_s=5"], work,
                   env={**os.environ, "LLM_LAUNCH_CONFIG": str(work / "none.toml")})
    report = Report(duration_s=seconds)
    try:
        for proc, argv in zip(backends, commands):
            wait_healthy(proc, f"http://127.0.0.1:{argv[argv.index('--port') + 1]}/health")
        wait_healthy(router, f"http://127.0.0.1:{port}/health")
        asyncio.run(_drive(router, f"http://127.0.0.1:{port}", keys, report, rate, concurrency, quit_share))
        stop(router)  # a graceful stop flushes the ledger
    finally:
        for proc in [router, *backends]:
            stop(proc)
    report.ledger = ledger_of(db, "steady")
    report.ledger_quitters = ledger_of(db, "quitter").requests
    return report


async def _drive(router: Proc, url: str, keys: dict[str, str], report: Report, rate: float,
                 concurrency: int, quit_share: float) -> None:
    load = Load(url, keys, report, quit_share, seed=8)
    warm_up = min(10.0, report.duration_s / 6)
    await load.run(rate, warm_up, concurrency)  # the first figures after caches and pools are warm
    sampler = asyncio.create_task(_sample(router.pid, report, 30.0))
    await load.run(rate, report.duration_s - warm_up, concurrency)
    sampler.cancel()
    await asyncio.sleep(2.0)  # idle connections and finished streams settle
    rss, fds = proc_figures(router.pid)
    report.rss_kib.append(rss)
    report.fds.append(fds)


async def _sample(pid: int, report: Report, every_s: float) -> None:
    while True:
        rss, fds = proc_figures(pid)
        report.rss_kib.append(rss)
        report.fds.append(fds)
        await asyncio.sleep(every_s)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; exit 1 when errors beyond the injected ones happened or the ledger disagrees."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--short", action="store_true", help="60 s, for CI")
    parser.add_argument("--rate", type=float, default=40.0, help="requests started per second")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--quit-share", type=float, default=0.2, help="share of streams abandoned mid-way")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    seconds = 60.0 if args.short else args.duration
    with tempfile.TemporaryDirectory(prefix="llm-launch-soak-") as folder:
        (Path(folder) / "none.toml").write_text("")
        report = soak(seconds, args.rate, args.concurrency, args.quit_share, Path(folder))
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "error_count": report.error_count}, indent=2))
    return 0 if report.error_count == 0 and report.ledger == report.seen else 1


if __name__ == "__main__":
    sys.exit(main())
