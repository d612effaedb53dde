"""`llm-launch router --workers 2` as real processes on a PostgreSQL registry and Redis.

A worker is told apart by its answers' `x-request-id`: each router process prefixes the ids it
makes with 12 random hex characters of its own, which a user sees too.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from launcher.core.settings import KeyLimits
from tests.conftest import Registry
from tests.fake_backend import FakeBackend
from tests.integration.test_router_cli import RouterProcess, _command
from tests.integration.test_shared_limits import registry  # noqa: F401 (a PostgreSQL registry)

pytestmark = pytest.mark.timeout(180)

CHAT: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
SERVING = r"router worker (\d) serving \(pid (\d+)\)"


@pytest.fixture
def workers(registry: Registry, tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Start `llm-launch router --workers 2 ARGS` on a free port; killed with its workers at the end."""
    started: list[RouterProcess] = []

    def start(*args: str) -> RouterProcess:
        (tmp_path / "absent.toml").write_text("")
        env = {**os.environ, "LLM_LAUNCH_CONFIG": str(tmp_path / "absent.toml")}
        proc = subprocess.Popen(
            [*_command(), "--db", registry.url, "router", "--host", "127.0.0.1", "--port", "0", "--workers", "2",
             "--set", "request_log=false", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        handle = RouterProcess(proc)
        threading.Thread(target=lambda: handle.lines.extend(iter(proc.stderr.readline, "")),  # type: ignore[union-attr]
                         daemon=True).start()
        handle.url = handle.wait_for(r"listening on (http://\S+)/v1 \(2 workers\)", timeout=60).group(1)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        pids = worker_pids(handle)
        if handle.proc.poll() is None:
            handle.proc.kill()
        handle.proc.wait(10)
        for pid in pids.values():  # a parent killed outright leaves its workers: end them too
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def worker_pids(router: RouterProcess) -> dict[int, int]:
    """Each worker's latest pid, from the parent's 'serving' lines."""
    found = (re.search(SERVING, line) for line in list(router.lines))
    return {int(m.group(1)): int(m.group(2)) for m in found if m}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def served_by(url: str, key: str, count: int) -> Counter[str]:
    """COUNT chat requests, each on a fresh connection: how many each worker (id prefix) served."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        reply = requests.post(url + "/v1/chat/completions", json=CHAT, timeout=30,
                              headers={"Authorization": f"Bearer {key}", "Connection": "close"})
        assert reply.status_code == 200, reply.text
        seen[reply.headers["x-request-id"][:12]] += 1
    return seen


def test_fresh_connections_are_served_by_both_workers(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    workers: Callable[..., RouterProcess],
) -> None:
    backend = make_backend(models=["fake-chat"])
    registry.add_backend("fake-chat", backend.url, secret=None)
    key = registry.add_key("spread")
    router = workers("--set", f"redis_url={redis_url}")
    pids = worker_pids(router)
    assert sorted(pids) == [0, 1] and router.proc.pid not in pids.values()
    seen = served_by(router.url, key, 40)
    print(f"\n40 fresh connections, per worker: {sorted(seen.values())}")
    assert len(seen) == 2, seen


async def _burst(url: str, key: str, count: int) -> list[tuple[int, str]]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                     headers={"Authorization": f"Bearer {key}"}) as session:
        async def one() -> tuple[int, str]:
            async with session.post(url + "/v1/chat/completions", json=CHAT) as reply:
                await reply.read()
                return reply.status, reply.headers["x-request-id"][:12]
        return list(await asyncio.gather(*(one() for _ in range(count))))


def test_an_rpm_limit_holds_exactly_across_the_workers(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    workers: Callable[..., RouterProcess],
) -> None:
    backend = make_backend(models=["fake-chat"])
    registry.add_backend("fake-chat", backend.url, secret=None)
    key = registry.add_key("limited", limits=KeyLimits(rpm=20))
    router = workers("--set", f"redis_url={redis_url}")
    answers = asyncio.run(_burst(router.url, key, 60))
    assert Counter(status for status, _ in answers) == {200: 20, 429: 40}
    assert len({worker for _, worker in answers}) == 2  # both workers decided part of the burst


def test_a_killed_worker_is_restarted_and_requests_keep_being_served(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend],
    workers: Callable[..., RouterProcess],
) -> None:
    backend = make_backend(models=["fake-chat"])
    registry.add_backend("fake-chat", backend.url, secret=None)
    key = registry.add_key("steady")
    router = workers("--set", f"redis_url={redis_url}")
    before = served_by(router.url, key, 20)
    victim = worker_pids(router)[1]
    os.kill(victim, signal.SIGKILL)
    router.wait_for(rf"router worker 1 \(pid {victim}\) exited unexpectedly \(signal SIGKILL\); restarting")
    assert len(served_by(router.url, key, 10)) == 1  # the survivor alone, meanwhile
    router.wait_for(r"router worker 1 serving \(pid (?!%d\))\d+\)" % victim)
    assert worker_pids(router)[1] != victim and router.proc.poll() is None
    after = served_by(router.url, key, 40)
    assert len(after) == 2 and len(set(after) - set(before)) == 1  # the new worker has a new prefix


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_parent_stops_every_worker_and_the_stream_in_flight_ends_whole(
    registry: Registry, make_backend: Callable[..., FakeBackend], workers: Callable[..., RouterProcess],
    sig: signal.Signals,
) -> None:
    backend = make_backend(models=["fake-chat"], chunks=20, chunk_delay_ms=50)
    registry.add_backend("fake-chat", backend.url, secret=None)
    key = registry.add_key("dave")
    router = workers("--no-accounting", "--set", "grace_period_s=20")
    pids = list(worker_pids(router).values())
    body = {**CHAT, "stream": True}
    with requests.post(router.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json=body, stream=True, timeout=30) as reply:
        chunks = reply.iter_content(None)
        first = next(chunks)
        router.proc.send_signal(sig)  # to the parent alone: it passes SIGTERM on to each worker
        rest = b"".join(chunks)
    assert b"tok0" in first
    assert (first + rest).endswith(b"data: [DONE]\n\n")
    assert router.proc.wait(30) == 0
    assert not [pid for pid in pids if alive(pid)]


def test_workers_are_refused_where_limits_would_not_hold(registry: Registry, redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "absent.toml").write_text("")
    env = {**os.environ, "LLM_LAUNCH_CONFIG": str(tmp_path / "absent.toml")}
    sqlite = f"sqlite:///{tmp_path / 'registry.db'}"
    for db, extra, needs in [(registry.url, [], "shared mode"), (sqlite, ["--set", f"redis_url={redis_url}"], "PostgreSQL")]:
        result = subprocess.run([*_command(), "--db", db, "router", "--port", "0", "--workers", "2", *extra],
                                capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert needs in result.stderr and "--no-accounting" in result.stderr


def test_a_taken_port_fails_the_start_once(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "absent.toml").write_text("")
    env = {**os.environ, "LLM_LAUNCH_CONFIG": str(tmp_path / "absent.toml")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*_command(), "--db", registry.url, "router", "--port", str(port), "--workers", "2",
                                 "--no-accounting"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert result.stderr.count("cannot listen on") == 1, result.stderr
    assert "router worker 0 exited while starting" in result.stderr
    assert "worker 1" not in result.stderr


def test_a_worker_that_keeps_dying_at_start_up_stops_the_service(
    registry: Registry, workers: Callable[..., RouterProcess], tmp_path: Path,
) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[models.m]\nengine = "vllm"\nweights = "/models/m"\nserved_name = "m"\n')
    router = workers("--no-accounting", "--catalog", str(catalog))
    pids = list(worker_pids(router).values())
    catalog.unlink()  # a restarted worker now fails at start-up, every time
    os.kill(pids[1], signal.SIGKILL)
    assert router.proc.wait(60) != 0
    router.wait_for(r"router worker 1 died 5 times in a row before serving")
    assert "".join(router.lines).count("catalog file not found") == 5
    assert not [pid for pid in pids if alive(pid)]


def test_only_worker_0_runs_the_supervisor(registry: Registry, workers: Callable[..., RouterProcess]) -> None:
    router = workers("--no-accounting", "--set", "supervise=true")
    leader = router.wait_for(r"llm_launch.supervisor\[(\d+)\] INFO leading")
    assert int(leader.group(1)) == worker_pids(router)[0]
    time.sleep(3)  # a supervisor in worker 1 would have said within a second that it stands by
    log = "".join(router.lines)
    assert "standing by" not in log and log.count("INFO leading") == 1


def test_workers_stop_when_the_parent_is_killed(registry: Registry, workers: Callable[..., RouterProcess]) -> None:
    router = workers("--no-accounting")
    pids = list(worker_pids(router).values())
    router.proc.kill()
    router.proc.wait(10)
    deadline = time.monotonic() + 20
    while [pid for pid in pids if alive(pid)]:  # each got SIGTERM from the kernel and stopped gracefully
        assert time.monotonic() < deadline, "a worker outlived its killed parent"
        time.sleep(0.1)
