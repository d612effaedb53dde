"""Helpers for the fault tests: a tally of what clients saw, misbehaving TCP servers, a process backend."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.conftest import SECRET, LoopThread
from tests.waiting import wait_for

CHAT: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Tally:
    """What clients saw: ok, failed (a well-formed error: envelope or SSE error event) or lost."""

    name: str
    sent: int = 0
    ok: int = 0
    failed: int = 0
    lost: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, status: str) -> None:
        with self.lock:
            self.sent += 1
            setattr(self, outcome, getattr(self, outcome) + 1)
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def report(self) -> str:
        line = (f"FAULT {self.name}: sent={self.sent} ok={self.ok} failed={self.failed} lost={self.lost} "
                f"statuses={dict(sorted(self.statuses.items()))}")
        print("\n" + line)
        return line


def classify(response: requests.Response, body: bytes, stream: bool) -> tuple[str, str]:
    """ok / failed / lost for one finished response, and a status label."""
    status = str(response.status_code)
    if response.status_code >= 400:
        error = json.loads(body).get("error") if body.startswith(b"{") else None
        return ("failed" if isinstance(error, dict) and "message" in error else "lost"), status
    if stream:
        if body.endswith(b"data: [DONE]\n\n"):
            return "ok", status
        return ("failed", "stream-error-event") if b'data: {"error"' in body else ("lost", "stream-cut")
    return ("ok", status) if b'"choices"' in body or b'"data"' in body or b'"text"' in body else ("lost", status)


def one_request(url: str, key: str, tally: Tally, body: dict[str, Any] | bytes = CHAT, stream: bool = False,
                path: str = "/v1/chat/completions", timeout: float = 60.0) -> None:
    """Send one request and record how it ended; a connection error or timeout is lost."""
    payload = body if isinstance(body, bytes) else json.dumps({**body, "stream": stream}).encode()
    try:
        with requests.post(url + path, data=payload, stream=True, timeout=timeout,
                           headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as reply:
            content = reply.raw.read(decode_content=False)
            tally.add(*classify(reply, content, stream))
    except (requests.RequestException, OSError) as exc:
        tally.add("lost", type(exc).__name__)


def burst(count: int, action: Callable[[], None], workers: int = 8) -> None:
    """Run ACTION COUNT times on WORKERS threads and wait for all."""
    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(action) for _ in range(count)]:
            future.result()


class MisbehavingServer:
    """A TCP server on the test loop: GETs (health probes) are answered with a model list, then
    HANDLE(reader, writer) takes over at the first POST (its first 4 bytes already read)."""

    def __init__(self, servers: LoopThread, handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> None:
        self._servers = servers
        self._handle = handle
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MisbehavingServer:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                while (await reader.readexactly(4)) == b"GET ":  # health probes get a proper answer
                    await read_head(reader)
                    writer.write(MODELS_ANSWER)
                    await writer.drain()
                await self._handle(reader, writer)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def start() -> None:
            self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._servers.run(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                for task in [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith("serve")]:  # type: ignore[union-attr]
                    task.cancel()
        self._servers.run(stop())


MODELS_BODY = json.dumps({"object": "list", "data": [{"id": "fake-chat", "object": "model"}]}).encode()
MODELS_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                 + str(len(MODELS_BODY)).encode() + b"\r\n\r\n" + MODELS_BODY)


async def read_head(reader: asyncio.StreamReader) -> int:
    """Read a request's head; its Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def chat_answer() -> bytes:
    """A valid chat completion answer with usage, as a full HTTP response."""
    body = json.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_backend(port: int, *args: str) -> subprocess.Popen[bytes]:
    """The fake backend as its own process (so it can be SIGKILLed), serving fake-chat."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_backend", "--port", str(port), "--model", "fake-chat",
                             f"--secret={SECRET}", "--no-record", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _answers(f"http://127.0.0.1:{port}/health"), 30, "the backend process")
    return proc


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False



def total(rows: Iterable[Any], index: int) -> int:
    return sum(int(r[index] or 0) for r in rows)


def ledger_requests(db_path: str) -> int:
    """Requests the usage ledger holds, read with plain sqlite3 (as an admin would)."""
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(requests), 0) FROM usage_daily").fetchone()[0])


def integrity(db_path: str) -> str:
    """SQLite's own verdict on the file: 'ok' when nothing is half-written."""
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


# Runs in its own process: the supervisor's read-modify-write of a model target, N times, with its busy retries.
SUPERVISOR_WRITER = """
import sys
from launcher.core.db import open_engine, session_factory, utcnow
from launcher.control.supervisor import with_busy_retries
from launcher.core.targets import TargetUpdate, load_targets, save_target
engine = open_engine(sys.argv[1])
sessions = session_factory(engine)
def bump():
    with sessions() as session:
        target = load_targets(session)["busy-model"]
        save_target(session, TargetUpdate("busy-model", target.quick_failures + 1, None, None), utcnow())
        session.commit()
for _ in range(int(sys.argv[2])):
    with_busy_retries(bump)
print("done")
"""
