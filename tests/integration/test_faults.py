"""Fault injection with real processes and sockets: backends that die, stall, babble or read slowly;
the router SIGKILLed under load; several writers on the registry at once; a read-only or full disk.

Each test prints a line `FAULT <name>: sent=… ok=… failed=… lost=…` (run with -s to see them):
failed means the client got a well-formed error (the envelope, or an SSE error event), lost means
it got nothing usable (a cut connection, a hang). No fault may lose a request.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from launcher.core.db import open_engine, session_factory, utcnow
from launcher.core.schema import ApiKey, Deployment, ModelTarget
from launcher.core.settings import KeyLimits, RouterSettings, Settings
from router.app import create_app
from router.serve import start
from tests.conftest import SECRET, TEST_ROUTER, LoopThread, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.integration.fault_tools import (
    CHAT, SUPERVISOR_WRITER, MisbehavingServer, Tally, burst, chat_answer, free_port, integrity, ledger_requests,
    one_request, process_backend, read_head,
)
from tests.integration.test_registration import TOKEN, submitted_job
from tests.integration.test_router_cli import RouterProcess, _command, router_process  # noqa: F401
from tests.waiting import wait_for

STREAM_CHAT = {"chunks": 40, "chunk_delay_ms": 25}


def _pair(registry: Registry, make_backend: Callable[..., FakeBackend], bad_url: str) -> FakeBackend:
    """A healthy replica next to BAD_URL, both serving fake-chat."""
    good = make_backend(models=["fake-chat"], secret=SECRET, **STREAM_CHAT)
    registry.add_backend("fake-chat", bad_url)
    registry.add_backend("fake-chat", good.url)
    return good


def test_backend_process_killed_mid_stream(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
) -> None:
    port = free_port()
    proc = process_backend(port, "--chunks", "40", "--chunk-delay-ms", "25")
    _pair(registry, make_backend, f"http://127.0.0.1:{port}")
    key = registry.add_key("k")
    router = make_router(stall_timeout_s=5.0)
    tally = Tally("backend killed mid-stream")
    during = threading.Thread(target=burst, args=(12, lambda: one_request(router.url, key, tally, stream=True), 12))
    during.start()
    time.sleep(0.4)  # streams from both replicas are under way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    during.join(60)
    burst(12, lambda: one_request(router.url, key, tally, stream=True))  # after the kill: the other replica
    tally.report()
    assert tally.lost == 0
    assert 0 < tally.failed <= 6  # only the streams already under way on the killed process
    assert tally.statuses.get("stream-error-event", 0) == tally.failed


def test_backend_that_accepts_and_never_answers(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
    servers: LoopThread,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads everything, answers nothing, until the router hangs up

    bad = MisbehavingServer(servers, silent).start()
    _pair(registry, make_backend, bad.url)
    key = registry.add_key("k")
    router = make_router()
    tally = Tally("backend accepts and never answers")
    burst(8, lambda: one_request(router.url, key, tally))
    burst(16, lambda: one_request(router.url, key, tally))  # the silent one is out of rotation now
    tally.report()
    bad.stop()
    assert tally.lost == 0
    assert tally.failed == tally.statuses.get("504", 0) <= 8  # a stall is a 504, never replayed elsewhere
    assert tally.ok >= 16


@pytest.mark.parametrize("garbage", [b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"x",
                                     b"HTTP/1.1 99999 WHAT\r\n\r\n", b"\x00\xff" * 512],
                         ids=["not-http", "short-body", "bad-status", "binary"])
def test_backend_that_answers_garbage(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
    servers: LoopThread, garbage: bytes,
) -> None:
    async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = await read_head(reader)
        await reader.readexactly(length)
        writer.write(garbage)
        await writer.drain()

    bad = MisbehavingServer(servers, babble).start()
    _pair(registry, make_backend, bad.url)
    key = registry.add_key("k")
    router = make_router()
    tally = Tally(f"backend answers garbage ({garbage[:12]!r})")
    burst(16, lambda: one_request(router.url, key, tally))
    tally.report()
    bad.stop()
    assert tally.lost == 0 and tally.failed == 0  # nothing reached the client yet: retried on the good one


def test_backend_that_closes_after_the_headers(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
) -> None:
    bad = make_backend(models=["fake-chat"], secret=SECRET, failure="close_after_headers")
    _pair(registry, make_backend, bad.url)
    key = registry.add_key("k")
    router = make_router()
    tally = Tally("backend closes after the headers")
    burst(8, lambda: one_request(router.url, key, tally))
    burst(8, lambda: one_request(router.url, key, tally, stream=True))
    tally.report()
    assert tally.lost == 0 and tally.failed == 0


def test_backend_slow_to_read_the_request_body(
    registry: Registry, make_router: Callable[..., RouterHandle], servers: LoopThread,
) -> None:
    """64 KiB every 50 ms: slow but moving, so the request succeeds (no total timeout cuts it)."""
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = await read_head(reader)
        while length > 0:
            length -= len(await reader.read(min(length, 65536)))
            await asyncio.sleep(0.05)
        writer.write(chat_answer())
        await writer.drain()

    bad = MisbehavingServer(servers, slow).start()
    registry.add_backend("fake-chat", bad.url)
    key = registry.add_key("k")
    router = make_router(stall_timeout_s=5.0)
    big = {**CHAT, "pad": "x" * (3 * 1024 * 1024)}
    tally = Tally("backend slow to read a 3 MiB body")
    burst(2, lambda: one_request(router.url, key, tally, body=big), workers=2)
    tally.report()
    bad.stop()
    assert tally.ok == 2


def test_backend_that_never_reads_the_request_body(
    registry: Registry, make_router: Callable[..., RouterHandle], servers: LoopThread,
) -> None:
    """It stops reading: the router gives up on the stall timeout with a 504 instead of hanging."""
    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await asyncio.sleep(3600)

    bad = MisbehavingServer(servers, deaf).start()
    registry.add_backend("fake-chat", bad.url)
    key = registry.add_key("k")
    router = make_router(stall_timeout_s=1.0)
    big = {**CHAT, "pad": "x" * (7 * 1024 * 1024)}
    tally = Tally("backend never reads a 7 MiB body")
    burst(2, lambda: one_request(router.url, key, tally, body=big, timeout=60), workers=2)
    tally.report()
    bad.stop()
    assert tally.lost == 0 and tally.failed == 2


def test_a_large_body_sent_in_pieces_arrives_byte_for_byte(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
) -> None:
    """Bodies over 256 KiB go upstream in pieces under the stall deadline: same bytes, same length header."""
    backend = make_backend(models=["fake-whisper"], secret=SECRET)
    registry.add_backend("fake-whisper", backend.url, kind="transcription")
    key = registry.add_key("k")
    router = make_router()
    audio = bytes(range(256)) * 4096  # 1 MiB
    body = (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake-whisper\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + audio + b"\r\n--b--\r\n")
    reply = requests.post(router.url + "/v1/audio/transcriptions", data=body, timeout=30,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "multipart/form-data; boundary=b"})
    assert reply.status_code == 200
    received = backend.received[-1]
    assert received.body == body and received.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in received.headers


# --- the router SIGKILLed under load ----------------------------------------------------------

FLUSH_S = 0.5


def test_router_sigkilled_under_load_restarts_clean_and_loses_at_most_one_flush(
    registry: Registry, make_backend: Callable[..., FakeBackend],
    router_process: Callable[..., RouterProcess],  # noqa: F811
) -> None:
    backend = make_backend(models=["fake-chat"], secret=SECRET, latency_ms=5)
    registry.add_backend("fake-chat", backend.url)
    limits = KeyLimits(rpm=100_000, daily_tokens=10_000_000, max_parallel=64)
    key = registry.add_key("survivor", limits=limits)
    db = registry.url.removeprefix("sqlite:///")
    router = router_process("--set", f"ledger_flush_s={FLUSH_S}")
    base = router.url.removesuffix("/v1")
    tally, done_at, stop = Tally("router SIGKILL under load"), [], threading.Event()

    def load() -> None:
        while not stop.is_set():
            before = tally.ok
            one_request(base, key, tally, timeout=10)
            if tally.ok > before:
                done_at.append(time.monotonic())

    workers = [threading.Thread(target=load) for _ in range(6)]
    for worker in workers:
        worker.start()
    time.sleep(3.0)
    killed_at = time.monotonic()
    router.proc.kill()
    router.proc.wait(10)
    stop.set()
    for worker in workers:
        worker.join(30)
    recorded = ledger_requests(db)
    window = sum(1 for t in done_at if t >= killed_at - 2 * FLUSH_S - 0.5)
    lost = tally.ok - recorded
    tally.report()
    print(f"FAULT router SIGKILL ledger: answered={tally.ok} recorded={recorded} lost={lost} "
          f"answered-in-last-flush-window={window} (flush {FLUSH_S} s)")
    assert integrity(db) == "ok"
    assert 0 <= lost <= window
    again = router_process("--set", f"ledger_flush_s={FLUSH_S}")  # the limits lock died with the process
    base = again.url.removesuffix("/v1")
    assert requests.post(base + "/v1/chat/completions", json=CHAT, timeout=10,
                         headers={"Authorization": f"Bearer {key}"}).status_code == 200
    me = requests.get(base + "/v1/me", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()
    assert me["limits"]["daily_tokens"] == 10_000_000 and me["limits"]["rpm"] == 100_000
    assert me["usage"]["today"]["requests"] == recorded + 1  # budgets reloaded from the ledger


# --- several writers on the registry at once ----------------------------------------------------

def test_launcher_supervisor_and_router_write_the_registry_at_once(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
) -> None:
    """No lost update and no `database is locked` reaching anyone: busy waits and retries absorb it."""
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    key = registry.add_key("writer")
    jobs = [submitted_job(registry, job_id=str(5000 + i)) for i in range(12)]
    with session_factory(registry.engine)() as session:
        session.add(ModelTarget(model="busy-model", desired_replicas=0, quick_failures=0, updated_at=utcnow()))
        session.commit()
    router = make_router(ledger_flush_s=0.02)
    db = registry.url.removeprefix("sqlite:///")
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISOR_WRITER, registry.url, "60"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tally = Tally("registry writers at once")

    def launcher() -> list[subprocess.CompletedProcess[str]]:
        return [subprocess.run([*_command(), "--db", registry.url, "keys", "create", f"cli-{i}"],
                               capture_output=True, text=True, timeout=120) for i in range(4)]

    def registrations() -> list[int]:
        return [requests.post(router.url + "/internal/register", timeout=30, json={
            "token": TOKEN, "url": f"http://127.0.0.1:{20000 + i}", "deployment_id": job}).status_code
            for i, job in enumerate(jobs)]

    with ThreadPoolExecutor(3) as pool:
        cli = pool.submit(launcher)
        regs = pool.submit(registrations)
        load = pool.submit(burst, 150, lambda: one_request(router.url, key, tally), 4)
        created, registered = cli.result(), regs.result()
        load.result()
    out, err = supervisor.communicate(timeout=120)
    tally.report()
    time.sleep(0.3)  # the ledger's next flush
    assert supervisor.returncode == 0 and "locked" not in err, err[-2000:]
    assert all(done.returncode == 0 for done in created), [d.stderr[-500:] for d in created]
    assert registered == [200] * len(jobs)
    with session_factory(registry.engine)() as session:
        assert session.get(ModelTarget, "busy-model").quick_failures == 60  # type: ignore[union-attr]
        names = set(session.scalars(select(ApiKey.name)))
        states = [session.get(Deployment, job).state for job in jobs]  # type: ignore[union-attr]
    assert {f"cli-{i}" for i in range(4)} <= names and states == ["ready"] * len(jobs)
    assert tally.ok == 150 and ledger_requests(db) == 150
    print(f"FAULT registry writers: 4 CLI key creations, 60 supervisor read-modify-writes, "
          f"{len(jobs)} registrations, 150 ledgered requests: none lost")


# --- the database file read-only, or its disk full ------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs (root only): remountable read-only, and fillable."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_keeps_requests_flowing_and_loses_no_usage(
    small_disk: Path, make_backend: Callable[..., FakeBackend], servers: LoopThread,
) -> None:
    """The registry's disk fills while the router serves: answers go on, the ledger keeps its batch until
    there is room again, registration and the CLI say what is wrong, and the file stays whole."""
    db = small_disk / "registry.db"
    registry = Registry(f"sqlite:///{db}", open_engine(f"sqlite:///{db}"))
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    job = submitted_job(registry, job_id="777")
    key = registry.add_key("disk")
    overrides: dict[str, Any] = {**TEST_ROUTER, "ledger_flush_s": 0.1}
    settings = Settings(database=registry.url, router=replace(RouterSettings(), **overrides))
    runner, port = servers.run(start(create_app(settings, registry.engine), "127.0.0.1", 0, 1.0))
    url = f"http://127.0.0.1:{port}"
    tally = Tally("registry disk full")
    filler = small_disk / "filler"
    try:
        burst(10, lambda: one_request(url, key, tally))
        wait_for(lambda: ledger_requests(str(db)) == 10, 10, "the first ledger flush")
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        burst(200, lambda: one_request(url, key, tally))  # enough usage rows to need new pages
        refused = requests.post(url + "/internal/register", timeout=30,
                                json={"token": TOKEN, "url": "http://127.0.0.1:9", "deployment_id": job})
        cli = subprocess.run([*_command(), "--db", str(db), "keys", "create", "while-full"],
                             capture_output=True, text=True, timeout=120)
        time.sleep(0.5)  # a few more flushes fail
        filler.unlink()
        wait_for(lambda: ledger_requests(str(db)) == 210, 10, "the ledger to catch up")
    finally:
        filler.unlink(missing_ok=True)
        servers.run(runner.cleanup())
        registry.engine.dispose()
    tally.report()
    print(f"FAULT registry disk full: registration {refused.status_code} {refused.content[:160]!r}; "
          f"CLI exit {cli.returncode}: {cli.stderr.strip()[-160:]!r}; ledger caught up: 210 of 210")
    assert tally.ok == 210 and tally.lost == 0
    assert refused.status_code in (200, 503)  # one small row may still fit in a free page
    if refused.status_code == 503:
        assert "full" in refused.json()["error"]["message"]
    assert "Traceback" not in cli.stderr and (cli.returncode == 0 or "full" in cli.stderr)
    assert integrity(str(db)) == "ok"


def test_read_only_registry_is_a_one_line_error(tmp_path: Path, small_disk: Path) -> None:
    """A registry on a read-only file system: the router and the CLI refuse at start, saying why."""
    db = small_disk / "registry.db"
    open_engine(f"sqlite:///{db}").dispose()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    env = {**os.environ, "LLM_LAUNCH_CONFIG": str(tmp_path / "none.toml")}
    (tmp_path / "none.toml").write_text("")
    for args in (["router", "--port", "0"], ["keys", "create", "x"], ["keys", "list"]):
        done = subprocess.run([*_command(), "--db", str(db), *args], capture_output=True, text=True, timeout=120,
                              env=env)
        print(f"FAULT registry read-only: llm-launch {' '.join(args)} -> exit {done.returncode}: "
              f"{done.stderr.strip()[-160:]!r}")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "Read-only file system" in done.stderr or "readonly" in done.stderr
