"""`llm-launch router` as a real process: serves, logs one line per request, stops gracefully."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Registry
from tests.fake_backend import FakeBackend

PROMPT = "a very secret prompt"


@dataclass
class RouterProcess:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    url: str = ""

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            assert self.proc.poll() is None, "router exited:\n" + "".join(self.lines)
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "".join(self.lines))


def _command() -> list[str]:
    script = Path(sys.executable).with_name("llm-launch")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from launcher.cli import main; main()"]


@pytest.fixture
def router_process(registry: Registry, tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    started: list[RouterProcess] = []

    def start(*args: str) -> RouterProcess:
        env = {**os.environ, "LLM_LAUNCH_CONFIG": str(tmp_path / "absent.toml")}
        (tmp_path / "absent.toml").write_text("")
        proc = subprocess.Popen(
            [*_command(), "--db", registry.url, "router", "--host", "127.0.0.1", "--port", "0", *args],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
        )
        handle = RouterProcess(proc)
        threading.Thread(target=lambda: handle.lines.extend(iter(proc.stderr.readline, "")),  # type: ignore[union-attr]
                         daemon=True).start()
        handle.url = handle.wait_for(r"listening on (http://\S+)").group(1)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        if handle.proc.poll() is None:
            handle.proc.kill()
        handle.proc.wait(10)


def test_router_serves_and_logs_one_line_without_key_or_prompt(
    registry: Registry, make_backend: Callable[..., FakeBackend], router_process: Callable[..., RouterProcess],
) -> None:
    backend = make_backend(models=["fake-chat"])
    registry.add_backend("fake-chat", backend.url, secret=None)
    key = registry.add_key("carol")
    router = router_process("--no-accounting")
    reply = requests.post(router.url + "/chat/completions", headers={"Authorization": f"Bearer {key}",
                                                                      "x-request-id": "req-cli-1"},
                          json={"model": "fake-chat", "messages": [{"role": "user", "content": PROMPT}]})
    assert reply.status_code == 200
    line = router.wait_for(r"req-cli-1 .*").group(0)
    assert re.search(r"req-cli-1 POST /v1/chat/completions 200 model=fake-chat [\d.]+ms key=\d+", line)
    log = "".join(router.lines)
    assert key not in log and PROMPT not in log


def test_sigterm_lets_the_stream_in_flight_finish(
    registry: Registry, make_backend: Callable[..., FakeBackend], router_process: Callable[..., RouterProcess],
) -> None:
    backend = make_backend(models=["fake-chat"], chunks=20, chunk_delay_ms=50)
    registry.add_backend("fake-chat", backend.url, secret=None)
    key = registry.add_key("dave")
    router = router_process("--no-accounting", "--set", "grace_period_s=20")
    body: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with requests.post(router.url + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json=body, stream=True, timeout=30) as reply:
        chunks = reply.iter_content(None)
        first = next(chunks)
        router.proc.send_signal(signal.SIGTERM)
        rest = b"".join(chunks)
    assert b"tok0" in first
    assert (first + rest).endswith(b"data: [DONE]\n\n")
    assert router.proc.wait(20) == 0


def test_bad_override_is_a_clear_cli_error(registry: Registry) -> None:
    result = subprocess.run([*_command(), "--db", registry.url, "router", "--set", "stall_timeout_s=-1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "stall_timeout_s" in result.stderr and "negative" in result.stderr


def test_a_stopping_router_reports_unhealthy_first_then_finishes_its_stream(
    registry: Registry, make_backend: Callable[..., FakeBackend], router_process: Callable[..., RouterProcess],
) -> None:
    backend = make_backend(models=["fake-chat"], chunks=40, chunk_delay_ms=100)
    registry.add_backend("fake-chat", backend.url, secret=None)
    key = registry.add_key("erin")
    router = router_process("--no-accounting", "--set", "stop_delay_s=2", "--set", "grace_period_s=20")
    origin = router.url.removesuffix("/v1")
    assert requests.get(origin + "/health", timeout=5).status_code == 200
    body: dict[str, Any] = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    auth = {"Authorization": f"Bearer {key}"}
    with requests.post(router.url + "/chat/completions", headers=auth, json=body, stream=True, timeout=30) as reply:
        chunks = reply.iter_content(None)
        first = next(chunks)
        router.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        health = requests.get(origin + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "stopping"
        # Still served meanwhile, but the connection is not kept alive for the next request.
        served = requests.post(router.url + "/chat/completions", headers=auth, json={**body, "stream": False}, timeout=10)
        assert served.status_code == 200 and served.headers.get("Connection", "").lower() == "close"
        rest = b"".join(chunks)
    assert (first + rest).endswith(b"data: [DONE]\n\n")  # the stream in flight finished whole
    with pytest.raises(requests.ConnectionError):  # past the delay the router accepts nothing new
        requests.get(origin + "/health", timeout=5)
    assert router.proc.wait(20) == 0
