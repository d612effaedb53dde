"""Processes under test: start pinned to a core, wait for health, read CPU time and peak RSS."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cores:
    """Where things run: the proxy alone on one core, load and backend on the other."""

    proxy: tuple[int, ...]
    load: tuple[int, ...]

    @staticmethod
    def detect() -> "Cores":
        """Split the cores this process may use; one core means no pinning at all."""
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return Cores(proxy=tuple(cores), load=tuple(cores))
        return Cores(proxy=(cores[-1],), load=tuple(cores[:-1]))


def pinned(argv: list[str], cores: tuple[int, ...]) -> list[str]:
    """ARGV run under taskset on CORES."""
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_open_files() -> int:
    """Lift the soft limit on open files to the hard one (children inherit it)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


@dataclass
class Proc:
    """A started process, its log file, and when it was started."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid


def start(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    """Start ARGV with output in LOG_DIR/NAME.log; its own process group, so stop() gets all."""
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        started = time.perf_counter()
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
    return Proc(name=name, popen=popen, log=log, started=started)


def wait_healthy(proc: Proc, url: str, timeout_s: float = 30.0) -> float:
    """Poll URL every 2 ms until it answers 200; seconds since the process was started."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}:\n"
                               + tail(proc.log))
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return time.perf_counter() - proc.started
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.002)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout_s} s; see {proc.log}")


def stop(proc: Proc) -> None:
    """SIGTERM the process group, then SIGKILL after 10 s."""
    if proc.popen.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.popen.wait()


def tail(path: Path, lines: int = 20) -> str:
    """The last LINES lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def tree(pid: int) -> list[int]:
    """PID and its descendants (nginx's workers, a CLI's server child)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of PID's process tree (utime + stime from /proc/<pid>/stat)."""
    total = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) summed over PID's process tree, in MB."""
    total_kb = 0
    for member in tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    return total_kb / 1024
