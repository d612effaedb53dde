"""Several routers, one service: a rolling restart behind HAProxy fails no request.

HAProxy runs the admin guide's haproxy.cfg (only addresses changed) in front of two router
processes in shared mode (PostgreSQL registry, Redis limits) with the guide's router settings.
While clients send chat, embeddings and streams of several seconds through HAProxy, each router
in turn gets SIGTERM, exits, starts again on its port and is marked up by HAProxy; no request
fails (requests too large for HAProxy to retry included), no stream is cut, and both restarted
routers serve. A router killed mid-request has it replayed on the other; the documented numbers
agree with each other (stop_delay_s against the checks, timeouts against the router's).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from launcher.core.settings import RouterSettings
from tests.conftest import SECRET, Registry
from tests.fake_backend import FakeBackend
from tests.haproxy import HAProxy, documented_router_settings, documented_timeouts, server_names
from tests.load_mix import Load, Mix
from tests.integration.test_shared_limits import registry  # noqa: F401 (a PostgreSQL registry)

pytestmark = pytest.mark.timeout(300)

TOKENS, CHUNK_MS = 40, 200  # a stream takes 8 s: longer than stop_delay_s
STREAM_S = TOKENS * CHUNK_MS / 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RouterProcess:
    """`llm-launch router` on a fixed port, its JSON request log read as it comes."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, registry: Registry, port: int, sets: dict[str, object], folder: Path) -> RouterProcess:
        (folder / "none.toml").write_text("")
        env = {**os.environ, "LLM_LAUNCH_CONFIG": str(folder / "none.toml")}
        options = [arg for name, value in sets.items() for arg in ("--set", f"{name}={value}")]
        proc = subprocess.Popen(
            [sys.executable, "-c", "from launcher.cli import main; main()", "--db", registry.url, "router",
             "--host", "127.0.0.1", "--port", str(port), *options],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        handle = cls(proc)
        assert proc.stderr is not None
        threading.Thread(target=lambda: handle.lines.extend(iter(proc.stderr.readline, "")),  # type: ignore[union-attr]
                         daemon=True).start()
        deadline = time.monotonic() + 60
        while not any("listening on" in line for line in list(handle.lines)):
            assert proc.poll() is None and time.monotonic() < deadline, "router did not start:\n" + handle.log()
            time.sleep(0.05)
        return handle

    def log(self) -> str:
        return "".join(self.lines[-40:])

    def requests(self) -> list[tuple[float, float, str]]:
        """Each /v1 request it logged: (started, finished) as epoch seconds, and its path."""
        found = []
        for line in list(self.lines):
            if line.startswith("{"):
                entry = json.loads(line)
                if entry["path"].startswith("/v1/"):
                    end = datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
                    found.append((end - entry["latency_ms"] / 1000, end, entry["path"]))
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g} s waiting until {what}"
        time.sleep(0.1)


@dataclass
class Service:
    """Two router processes on fixed ports (the documented settings) behind the documented HAProxy."""

    registry: Registry
    sets: dict[str, object]
    folder: Path
    ports: dict[str, int]
    routers: dict[str, RouterProcess] = field(default_factory=dict)
    retired: list[RouterProcess] = field(default_factory=list)
    haproxy: HAProxy | None = None

    def start_router(self, name: str) -> RouterProcess:
        if name in self.routers:
            self.retired.append(self.routers[name])
        self.routers[name] = RouterProcess.start(self.registry, self.ports[name], self.sets, self.folder)
        return self.routers[name]

    def start(self) -> None:
        """Both routers, then HAProxy; returns once HAProxy has marked both up."""
        names = server_names()
        for name in names:
            self.start_router(name)
        self.haproxy = HAProxy(self.folder, free_port(), [f"127.0.0.1:{self.ports[name]}" for name in names])
        for name in names:
            self.haproxy.wait_status(name, "UP", 30)

    @property
    def lb(self) -> HAProxy:
        assert self.haproxy is not None
        return self.haproxy


@pytest.fixture
def service(registry: Registry, redis_url: str, tmp_path: Path) -> Iterator[Service]:
    sets = {name: value for name, value in documented_router_settings().items() if name != "host"}  # loopback only
    sets.update(redis_url=redis_url, log_format="json")
    running = Service(registry, sets, tmp_path, {name: free_port() for name in server_names()})
    try:
        yield running  # the test adds its keys and backends, then starts it
    finally:  # stopped even when the test fails
        if running.haproxy is not None:
            running.haproxy.stop()
        for router in [*running.routers.values(), *running.retired]:
            router.kill()


def check_bound() -> float:
    """The longest HAProxy takes to see `fall` failed checks of a stopping router: inter × fall + timeout check."""
    documented = documented_timeouts()
    return documented["inter"] * documented["fall"] + documented["check"]


def test_the_documented_numbers_fit_together() -> None:
    documented = documented_timeouts()
    defaults = RouterSettings()
    stop_delay = float(documented_router_settings()["stop_delay_s"])  # type: ignore[arg-type]
    assert stop_delay >= check_bound() + 1.0, "stop_delay_s must exceed inter × fall + timeout check, with a margin"
    assert documented["http-keep-alive"] < defaults.keepalive_timeout_s  # HAProxy closes an idle client first
    assert min(documented["server"], documented["client"]) > defaults.stall_timeout_s


def test_a_rolling_restart_behind_haproxy_fails_no_request(
    service: Service, make_backend: Callable[..., FakeBackend],
) -> None:
    stop_delay = float(documented_router_settings()["stop_delay_s"])  # type: ignore[arg-type]
    grace = RouterSettings().grace_period_s
    chat = make_backend(models=["fake-chat"], secret=SECRET, chunks=TOKENS, chunk_delay_ms=CHUNK_MS)
    embed = make_backend(models=["fake-embed"], secret=SECRET)
    service.registry.add_backend("fake-chat", chat.url)
    service.registry.add_backend("fake-embed", embed.url, kind="embeddings")
    key = service.registry.add_key("through-haproxy")
    service.start()
    load = Load(service.lb.url, key, Mix("fake-chat", "fake-embed", TOKENS, stream_s=STREAM_S))
    figures: dict[str, dict[str, float]] = {}
    try:
        load.start()
        time.sleep(STREAM_S)  # streams in flight on both routers
        for name in server_names():
            old = service.routers[name]
            sigterm = time.time()
            old.proc.send_signal(signal.SIGTERM)
            down_s = service.lb.wait_status(name, "DOWN", stop_delay + 10)
            assert down_s < check_bound(), f"HAProxy marked {name} down {down_s:.1f} s after SIGTERM"
            assert old.proc.wait(stop_delay + grace + 10) == 0, old.log()
            exit_s = time.time() - sigterm
            assert exit_s >= stop_delay, "the router stopped before its stop delay was over"
            new = service.start_router(name)
            up_s = service.lb.wait_status(name, "UP", 30)
            wait_until(lambda: len(new.requests()) >= 10, 30, f"the restarted {name} served requests")
            finished = [r for r in old.requests() if r[1] > sigterm]
            figures[name] = {"down_s": down_s, "exit_s": exit_s, "up_s": up_s,
                             "in_flight": sum(1 for r in finished if r[0] < sigterm),
                             "after_close": sum(1 for r in finished if r[1] > sigterm + stop_delay),
                             "while_stopping": sum(1 for r in finished if r[0] >= sigterm)}
        time.sleep(STREAM_S)  # streams on both restarted routers
    finally:
        tally = load.stop()
    served = {name: len(router.requests()) for name, router in service.routers.items()}
    print(f"\nrolling restart behind HAProxy: {dict(tally.done)} answered in full, {len(tally.failures)} failed, "
          f"in {tally.seconds:.1f} s; stop_delay_s {stop_delay:g}")
    for name, row in figures.items():
        print(f"  {name}: down in HAProxy {row['down_s']:.2f} s after SIGTERM, exited after {row['exit_s']:.2f} s, "
              f"up {row['up_s']:.2f} s after its restart; {row['in_flight']:.0f} requests in flight at SIGTERM "
              f"finished, {row['while_stopping']:.0f} more served while stopping, {row['after_close']:.0f} of "
              f"these finished after the listener closed; {served[name]} served after the restart")
    assert tally.failures == [], "\n".join(tally.failures[:20])
    assert all(tally.done[kind] > 0 for kind in ("chat", "embeddings", "large", "stream")), tally.done
    assert all(row["in_flight"] > 0 for row in figures.values()), "no request spanned a SIGTERM"
    assert sum(row["after_close"] for row in figures.values()) > 0, "no stream outlived a stop delay"
    assert all(count > 0 for count in served.values())


def test_a_request_on_a_killed_router_runs_again_on_the_other(
    service: Service, make_backend: Callable[..., FakeBackend],
) -> None:
    chat = make_backend(models=["fake-chat"], secret=SECRET, latency_ms=3000)
    service.registry.add_backend("fake-chat", chat.url)
    key = service.registry.add_key("killed-router")
    service.start()
    body: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
    answers: list[int] = []

    def send() -> None:
        reply = requests.post(service.lb.url + "/v1/chat/completions", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {key}"})
        answers.append(reply.status_code)

    clients = [threading.Thread(target=send) for _ in range(4)]
    for client in clients:
        client.start()
    wait_until(lambda: len(chat.received) == 4, 10, "the backend received the four requests")
    victim = server_names()[0]
    service.routers[victim].proc.send_signal(signal.SIGKILL)
    for client in clients:
        client.join(30)
    replayed = len(chat.received) - 4
    print(f"\nSIGKILL of {victim} with requests in flight: answers {answers}, {replayed} run again on the other router")
    assert answers == [200] * 4
    assert replayed > 0, "leastconn sent no request to the killed router"
