"""The things measured side by side: the backend itself, the floor proxy, nginx, the router."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import procs
from bench.nginx import nginx_argv, write_nginx_config
from bench.procs import Cores, Proc


@dataclass(frozen=True)
class Bench:
    """What every target needs: where the backend is, its secret, a work dir, the core split."""

    work: Path
    cores: Cores
    backend_url: str
    secret: str
    key: str  # the client's key for the floor, nginx and the router


@dataclass
class Running:
    """A started target: the URL clients use, the key they send, the process whose CPU counts."""

    name: str
    url: str
    key: str
    proc: Proc
    startup_s: float


def start_backend(work: Path, cores: Cores, secret: str, port: int) -> tuple[Proc, str, float]:
    """The fast fake backend on the load cores; (process, base URL, start-up seconds)."""
    argv = procs.pinned([sys.executable, "-m", "bench.fast_backend", "--port", str(port),
                         "--secret", secret], cores.load)
    proc = procs.start("backend", argv, work)
    url = f"http://127.0.0.1:{port}"
    return proc, url, procs.wait_healthy(proc, url + "/health")


def start_floor(bench: Bench) -> Running:
    """The bare aiohttp pass-through proxy on the proxy core."""
    keys_file = bench.work / "floor-keys.txt"
    keys_file.write_text(bench.key + "\n")
    port = procs.free_port()
    argv = procs.pinned([sys.executable, "-m", "bench.floor_proxy", "--port", str(port),
                         "--upstream", bench.backend_url, "--secret", bench.secret,
                         "--keys-file", str(keys_file)], bench.cores.proxy)
    return _running("floor", argv, port, bench)


def nginx_available() -> bool:
    """Whether nginx is installed (Debian package `nginx`)."""
    return shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


def start_nginx(bench: Bench) -> Running:
    """nginx as a plain reverse proxy (one worker, keep-alive upstream, no SSE buffering)."""
    port = procs.free_port()
    prefix = bench.work / "nginx"
    conf = write_nginx_config(prefix, port, bench.backend_url, bench.secret, bench.key)
    return _running("nginx", procs.pinned(nginx_argv(prefix, conf), bench.cores.proxy), port, bench)


def start_router(bench: Bench, name: str, db: Path, config: Path, accounting: bool) -> Running:
    """The project's router, started with its CLI as an admin would."""
    port = procs.free_port()
    argv = [*llm_launch(), "--db", str(db), "--config", str(config), "router",
            "--host", "127.0.0.1", "--port", str(port)]
    if not accounting:
        argv.append("--no-accounting")
    return _running(name, procs.pinned(argv, bench.cores.proxy), port, bench)


def llm_launch() -> list[str]:
    """The `llm-launch` command of the running interpreter's environment."""
    script = Path(sys.executable).parent / "llm-launch"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from launcher.cli import main; main()"]


def _running(name: str, argv: list[str], port: int, bench: Bench) -> Running:
    proc = procs.start(name, argv, bench.work)
    url = f"http://127.0.0.1:{port}"
    try:
        startup = procs.wait_healthy(proc, url + "/health")
    except RuntimeError:
        procs.stop(proc)
        raise
    return Running(name=name, url=url, key=bench.key, proc=proc, startup_s=startup)
