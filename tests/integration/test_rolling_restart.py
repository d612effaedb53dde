"""Several routers, one service: a rolling restart behind HAProxy fails no request.

HAProxy runs the admin guide's haproxy.cfg (only addresses changed) in front of two router
processes in shared mode (PostgreSQL registry, Redis limits) with the guide's router settings.
While clients send chat, embeddings and streams of several seconds through HAProxy, each router
in turn gets SIGTERM, exits, starts again on its port and is marked up by HAProxy; no request
fails (requests too large for HAProxy to retry included), no stream is cut, and both restarted
routers serve.
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

import pytest

from launcher.core.db import open_engine
from launcher.core.settings import RouterSettings
from tests.conftest import SECRET, Registry
from tests.fake_backend import FakeBackend
from tests.haproxy import HAProxy, documented_router_settings, server_names
from tests.load_mix import Load, Mix, Tally

pytestmark = pytest.mark.timeout(300)

TOKENS, CHUNK_MS = 40, 200  # a stream takes 8 s: longer than stop_delay_s
STREAM_S = TOKENS * CHUNK_MS / 1000


@pytest.fixture
def registry(pg_url: str) -> Iterator[Registry]:
    engine = open_engine(pg_url)
    yield Registry(pg_url, engine)
    engine.dispose()


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


def test_a_rolling_restart_behind_haproxy_fails_no_request(
    registry: Registry, redis_url: str, make_backend: Callable[..., FakeBackend], tmp_path: Path,
) -> None:
    documented = documented_router_settings()
    stop_delay = float(documented["stop_delay_s"])  # type: ignore[arg-type]
    grace = RouterSettings().grace_period_s
    sets = {name: value for name, value in documented.items() if name != "host"}  # loopback only
    sets.update(redis_url=redis_url, log_format="json")
    chat = make_backend(models=["fake-chat"], secret=SECRET, chunks=TOKENS, chunk_delay_ms=CHUNK_MS)
    embed = make_backend(models=["fake-embed"], secret=SECRET)
    registry.add_backend("fake-chat", chat.url)
    registry.add_backend("fake-embed", embed.url, kind="embeddings")
    key = registry.add_key("through-haproxy")

    names = server_names()
    ports = {name: free_port() for name in names}
    routers = {name: RouterProcess.start(registry, ports[name], sets, tmp_path) for name in names}
    retired: list[RouterProcess] = []
    haproxy = HAProxy(tmp_path, free_port(), [f"127.0.0.1:{ports[name]}" for name in names])
    load = Load(haproxy.url, key, Mix("fake-chat", "fake-embed", TOKENS, stream_s=STREAM_S))
    figures: dict[str, dict[str, float]] = {}
    tally = Tally()
    try:
        for name in names:
            haproxy.wait_status(name, "UP", 30)
        load.start()
        time.sleep(STREAM_S)  # streams in flight on both routers
        for name in names:
            old = routers[name]
            retired.append(old)
            sigterm = time.time()
            old.proc.send_signal(signal.SIGTERM)
            down_s = haproxy.wait_status(name, "DOWN", stop_delay + 10)
            assert down_s < stop_delay, f"HAProxy marked {name} down {down_s:.1f} s after SIGTERM, past stop_delay_s"
            assert old.proc.wait(stop_delay + grace + 10) == 0, old.log()
            stopped_s = time.time() - sigterm
            routers[name] = new = RouterProcess.start(registry, ports[name], sets, tmp_path)
            up_s = haproxy.wait_status(name, "UP", 30)
            wait_until(lambda: len(new.requests()) >= 10, 30, f"the restarted {name} served requests")
            finished = [r for r in old.requests() if r[1] > sigterm]
            figures[name] = {"down_s": down_s, "exit_s": stopped_s, "up_s": up_s,
                             "in_flight_finished": sum(1 for r in finished if r[0] < sigterm),
                             "after_listener_closed": sum(1 for r in finished if r[1] > sigterm + stop_delay),
                             "served_while_stopping": sum(1 for r in finished if r[0] >= sigterm)}
        time.sleep(STREAM_S)  # streams on both restarted routers
        tally = load.stop()
    finally:
        load.stop()
        haproxy.stop()
        for router in [*routers.values(), *retired]:
            router.kill()
    served = {name: len(router.requests()) for name, router in routers.items()}
    print(f"\nrolling restart behind HAProxy: {dict(tally.done)} answered in full, {len(tally.failures)} failed, "
          f"in {tally.seconds:.1f} s; stop_delay_s {stop_delay:g}")
    for name, row in figures.items():
        print(f"  {name}: down in HAProxy {row['down_s']:.2f} s after SIGTERM, exited after {row['exit_s']:.2f} s, "
              f"up {row['up_s']:.2f} s after its restart; {row['in_flight_finished']:.0f} requests in flight at "
              f"SIGTERM finished ({row['after_listener_closed']:.0f} after the listener closed), {row['served_while_stopping']:.0f} more served while stopping; "
              f"{served[name]} served after the restart")
    assert tally.failures == [], "\n".join(tally.failures[:20])
    assert all(tally.done[kind] > 0 for kind in ("chat", "embeddings", "large", "stream")), tally.done
    assert all(row["in_flight_finished"] > 0 for row in figures.values()), "no request spanned a SIGTERM"
    assert sum(row["after_listener_closed"] for row in figures.values()) > 0, "no stream outlived a stop delay"
    assert all(count > 0 for count in served.values())
