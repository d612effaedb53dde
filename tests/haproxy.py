"""HAProxy for tests: the admin guide's haproxy.cfg with private addresses, run as a real process.

The configuration is read from docs/admin-guide.md (the ```haproxy block after its marker), so the
tests run what the docs tell an admin to install; only the addresses and the socket path change.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

ADMIN_GUIDE = Path(__file__).resolve().parents[1] / "docs" / "admin-guide.md"
MARKER = "<!-- haproxy.cfg:"
SECTION = "### Behind a load balancer (HAProxy)"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def documented_config() -> str:
    """The haproxy.cfg block that follows the marker in the admin guide."""
    text = ADMIN_GUIDE.read_text()
    found = BLOCK.search(text, text.index(MARKER))
    assert found is not None and found.group(1) == "haproxy", "the marker must precede a ```haproxy block"
    return found.group(2)


def documented_router_settings() -> dict[str, object]:
    """The [router] settings the HAProxy section of the admin guide tells every router to use."""
    text = ADMIN_GUIDE.read_text()
    start = text.index(SECTION)
    found = BLOCK.search(text, start, text.index(MARKER))
    assert found is not None and found.group(1) == "toml", "the section starts with the routers' settings"
    router: dict[str, object] = tomllib.loads(found.group(2))["router"]
    return router


def _replace_once(pattern: str, replacement: str, text: str) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.M)
    assert count == 1, f"the documented haproxy.cfg should have exactly one line matching {pattern!r}"
    return new


def private_config(listen: str, routers: list[str], admin_socket: Path) -> str:
    """The documented configuration with the documented placeholders set: bind, servers, socket."""
    config = _replace_once(r"^(\s*bind\s+):8000$", rf"\g<1>{listen}", documented_config())
    config = _replace_once(r"^(\s*stats socket\s+)/run/haproxy/admin\.sock", rf"\g<1>{admin_socket}", config)
    servers = re.findall(r"^\s*server\s+(\S+)\s+(\S+)", config, re.M)
    assert len(servers) == len(routers), f"the documented haproxy.cfg has {len(servers)} servers"
    for (_, address), router in zip(servers, routers):
        config = _replace_once(rf"^(\s*server\s+\S+\s+){re.escape(address)}$", rf"\g<1>{router}", config)
    return config


def server_names() -> list[str]:
    return re.findall(r"^\s*server\s+(\S+)", documented_config(), re.M)


def _seconds(value: str) -> float:
    """An HAProxy time ("1s", "500ms", "3600s"; a bare number is milliseconds) in seconds."""
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit or "ms"]


def documented_timeouts() -> dict[str, float]:
    """The documented `timeout NAME VALUE` lines, and the checks' inter and fall: name -> seconds (fall: count)."""
    config = documented_config()
    found = {name: _seconds(value) for name, value in re.findall(r"^\s*timeout\s+(\S+)\s+(\S+)", config, re.M)}
    check = re.search(r"^\s*default-server\s.*\binter\s+(\S+).*\bfall\s+(\d+)", config, re.M)
    assert check is not None, "the documented servers are health-checked with inter and fall"
    found.update(inter=_seconds(check.group(1)), fall=float(check.group(2)))
    return found


class HAProxy:
    """haproxy in the foreground on a private config, pid file and runtime API socket."""

    def __init__(self, folder: Path, listen_port: int, routers: list[str]) -> None:
        if shutil.which("haproxy") is None:
            pytest.skip("haproxy is not installed: scripts/setup installs it")
        self.socket = folder / "admin.sock"
        self.config = folder / "haproxy.cfg"
        self.config.write_text(private_config(f"127.0.0.1:{listen_port}", routers, self.socket))
        self.url = f"http://127.0.0.1:{listen_port}"
        checked = subprocess.run(["haproxy", "-c", "-q", "-f", str(self.config)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.log = folder / "haproxy.log"  # in the foreground it prints its alerts (servers up and down) here
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.config), "-p", str(folder / "haproxy.pid")],
                                         stdout=subprocess.DEVNULL, stderr=log)

    def stat(self) -> dict[str, dict[str, str]]:
        """`show stat` of the runtime API: server name -> its columns, for the `routers` backend."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        # the admin guide's `up` reads the status as field 18 (awk counts from 1)
        assert header[17] == "status", header
        rows = (dict(zip(header, line.split(","))) for line in lines[1:] if line)
        return {row["svname"]: row for row in rows if row["pxname"] == "routers"}

    def status(self, server: str) -> str:
        """UP, DOWN, or a transition such as "UP 1/2" (a failed check, not yet down)."""
        try:
            return self.stat()[server]["status"]
        except (OSError, KeyError):
            return "unknown"

    def wait_status(self, server: str, wanted: str, timeout_s: float) -> float:
        """Seconds until SERVER's status is WANTED; fails after TIMEOUT_S."""
        start = time.monotonic()
        while (status := self.status(server)) != wanted:
            assert self.proc.poll() is None, f"haproxy exited: {self.log.read_text()}"
            assert time.monotonic() - start < timeout_s, f"{server} is {status} in HAProxy, not {wanted}"
            time.sleep(0.05)
        return time.monotonic() - start

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
