"""Several router processes on one port: a parent that starts, restarts and stops them.

Each worker is a fresh interpreter (multiprocessing's "spawn"): it builds its own event loop,
app and database connections, never the parent's. It binds the same host:port with
SO_REUSEPORT and the kernel spreads new connections over the workers. A worker reports that it
serves by sending its bound port on a pipe; the parent waits for every one before announcing.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

LOG = logging.getLogger("router")
SPAWN = multiprocessing.get_context("spawn")
START_FAILURES = 5  # deaths in a row of one worker before it served: a crash loop, not bad luck
BACKOFF_S = 0.5  # first restart delay, doubled per death in a row, at most MAX_BACKOFF_S
MAX_BACKOFF_S = 8.0
POLL_S = 0.1  # how often the parent looks at its signals flag between worker events
PR_SET_PDEATHSIG = 1  # prctl(2)

# The worker's entry point: (index, ready pipe, *args); picklable (a module-level function).
Target = Callable[..., None]


class WorkerError(RuntimeError):
    """A worker could not start (its own error is on stderr) or kept crashing."""


@dataclass
class Worker:
    index: int
    process: BaseProcess
    ready_pipe: Connection
    serving: bool = False
    failures: int = 0  # deaths in a row before serving


class WorkerPool:
    """COUNT processes running TARGET(index, ready_pipe, *ARGS) until SIGTERM or SIGINT."""

    def __init__(self, target: Target, args: tuple[Any, ...], count: int, stop_timeout_s: float) -> None:
        self.target, self.args, self.count = target, args, count
        self.stop_timeout_s = stop_timeout_s
        self.workers: dict[int, Worker] = {}
        self._restart_at: dict[int, tuple[float, int]] = {}  # index: (when, deaths in a row)
        self._stopping = False

    def run(self, announce: Callable[[int], None]) -> int:
        """Start the workers, call ANNOUNCE(port) once all serve, keep them up; the exit status."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            # Worker 0 alone first: a bad setting or a taken port fails once, with one message,
            # and a new registry is migrated by one process, before the others open it.
            port = self._start_all()
            if self._stopping:
                return self._stop()
            announce(port)
            self._keep_up()
        except BaseException:
            self._stop()
            raise
        return self._stop()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start_all(self) -> int:
        port = self._await_serving([self._spawn(0, failures=0)])
        if not self._stopping:
            self._await_serving([self._spawn(i, failures=0) for i in range(1, self.count)])
        return port

    def _spawn(self, index: int, failures: int) -> Worker:
        reader, writer = SPAWN.Pipe(duplex=False)
        process = SPAWN.Process(target=worker_main, args=(self.target, os.getpid(), index, writer, *self.args),
                                name=f"router-worker-{index}", daemon=False)
        process.start()
        writer.close()  # the worker holds the only writer: its death is an EOF here
        worker = Worker(index, process, reader, failures=failures)
        self.workers[index] = worker
        return worker

    def _await_serving(self, starting: list[Worker]) -> int:
        """Wait until every one of STARTING serves; one that dies first fails the start."""
        port = 0
        pending = list(starting)
        while pending and not self._stopping:
            ready = wait([w.ready_pipe for w in pending], timeout=POLL_S)
            for worker in [w for w in pending if w.ready_pipe in ready]:
                pending.remove(worker)
                port = self._serving(worker)
                if not port:
                    worker.process.join()
                    raise WorkerError(f"router worker {worker.index} exited while starting "
                                      f"({_exit(worker.process.exitcode)})")
        return port

    def _serving(self, worker: Worker) -> int:
        """The port WORKER reports serving on, or 0 when it died first."""
        try:
            port: int = worker.ready_pipe.recv()
        except EOFError:
            return 0
        worker.serving, worker.failures = True, 0
        LOG.info("router worker %d serving (pid %s)", worker.index, worker.process.pid)
        return port

    def _keep_up(self) -> None:
        """Restart workers that die, with a growing delay, until a signal or a crash loop."""
        while not self._stopping:
            waited: list[Any] = [w.process.sentinel for w in self.workers.values()]
            waited += [w.ready_pipe for w in self.workers.values() if not w.serving]
            ready = wait(waited, timeout=min([POLL_S, *self._due_in()]))
            for worker in list(self.workers.values()):
                if worker.ready_pipe in ready and not worker.serving:
                    self._serving(worker)
                if worker.process.sentinel in ready and not self._stopping:
                    self._died(worker)
            now = time.monotonic()
            for index, (at, failures) in list(self._restart_at.items()):
                if at <= now and not self._stopping:
                    del self._restart_at[index]
                    self._spawn(index, failures)

    def _due_in(self) -> list[float]:
        now = time.monotonic()
        return [max(0.0, at - now) for at, _ in self._restart_at.values()]

    def _died(self, worker: Worker) -> None:
        """Schedule WORKER's restart, or give up when it keeps dying before it serves."""
        worker.process.join()
        worker.ready_pipe.close()
        del self.workers[worker.index]
        code = worker.process.exitcode
        failures = 0 if worker.serving else worker.failures + 1
        if failures >= START_FAILURES:
            raise WorkerError(f"router worker {worker.index} died {failures} times in a row before serving "
                              f"(last: {_exit(code)}); stopping all workers")
        delay = min(BACKOFF_S * 2 ** failures, MAX_BACKOFF_S)
        LOG.warning("router worker %d (pid %s) exited unexpectedly (%s); restarting it in %g s",
                    worker.index, worker.process.pid, _exit(code), delay)
        self._restart_at[worker.index] = (time.monotonic() + delay, failures)

    def _stop(self) -> int:
        """SIGTERM to every live worker (each stops gracefully), wait, SIGKILL past the timeout."""
        self._stopping = True
        self._restart_at.clear()
        live = [w.process for w in self.workers.values() if w.process.is_alive()]
        for process in live:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                LOG.error("router worker pid %s still running %g s after SIGTERM: killed", process.pid,
                          self.stop_timeout_s)
                process.kill()
                process.join()
        return 0 if all(p.exitcode == 0 for p in live) else 1


def worker_main(target: Target, parent: int, *args: Any) -> None:
    """In the worker: stop with the parent, then run TARGET(*ARGS)."""
    stop_with_parent(parent)
    target(*args)


def stop_with_parent(parent: int) -> None:
    """Linux: SIGTERM this process when PARENT dies, even by SIGKILL, so no orphan keeps the port."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"


def reserve_port(host: str) -> socket.socket:
    """A socket bound (not listening) to a free port of HOST with SO_REUSEPORT, for port 0.

    The parent keeps it open so the port stays the service's while workers restart; only
    listening sockets receive connections, so it never takes one.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock
