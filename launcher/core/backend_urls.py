"""The one check of a backend URL, for registration and `backends add`; and the router's addresses.

A URL is stored once and then printed in `backends list`, the router's log and its metrics, and
used as the base of every request forwarded to it: it must be a plain http(s) base URL, and it
must not be the router itself (a request would loop through the router until it gives up).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
# Hosts (besides loopback addresses) that reach the machine itself.
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "0.0.0.0", "::"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class BackendUrlError(ValueError):
    """A backend URL that cannot be registered; the message is one line, for the admin or user."""


class RouterAddressError(BackendUrlError):
    """A backend URL that is the router's own address."""


@dataclass(frozen=True)
class BackendUrl:
    """A checked backend URL: as stored (no trailing slash), its host (lower case) and port."""

    text: str
    host: str
    port: int


@dataclass(frozen=True)
class Listener:
    """An address the router listens on (or is reached at), HOST as configured."""

    host: str
    port: int


def parse_backend_url(url: str) -> BackendUrl:
    """URL checked: http(s), a host, a valid or default port, no whitespace or control characters."""
    shown = url.encode("unicode_escape").decode("ascii")[:200]  # never echo a raw CR/LF
    if not url.startswith(("http://", "https://")):
        raise BackendUrlError(f"backend URL must start with http:// or https://, got {shown!r}")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise BackendUrlError(f"backend URL must not contain whitespace or control characters, got {shown!r}")
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise BackendUrlError(f"backend URL must not carry a user name or password, got {shown!r}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise BackendUrlError(f"backend URL must be a base URL without query or fragment, got {shown!r}")
    if not parts.hostname:
        raise BackendUrlError(f"backend URL has no host, got {shown!r} (e.g. http://node12:8001)")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise BackendUrlError(f"backend URL has no valid port (1-65535), got {shown!r}") from None
    if port < 1:
        raise BackendUrlError(f"backend URL has no valid port (1-65535), got {shown!r}")
    return BackendUrl(url.rstrip("/"), parts.hostname.lower(), port)


def check_backend_url(url: str, router: Iterable[Listener] = ()) -> BackendUrl:
    """URL checked as parse_backend_url does, and refused when it reaches one of ROUTER's addresses."""
    parsed = parse_backend_url(url)
    for listener in router:
        if parsed.port == listener.port and reaches(parsed.host, listener.host):
            raise RouterAddressError(
                f"{parsed.text} is the router's own address ({listener.host}:{listener.port}); "
                "register the address where the model server listens")
    return parsed


def reaches(host: str, listener_host: str) -> bool:
    """Whether a URL naming HOST reaches a router listening on LISTENER_HOST (same port)."""
    host, listener_host = host.strip("[]").lower(), listener_host.strip("[]").lower()
    if host == listener_host:
        return True
    everywhere = listener_host in _WILDCARDS
    if _is_local(host) and (everywhere or _is_local(listener_host)):
        return True
    # Listening on all addresses, the machine's own name reaches it too.
    return everywhere and host in _own_names()


def _own_names() -> frozenset[str]:
    name = socket.gethostname().lower()
    return frozenset({name, name.split(".")[0]})


def _is_local(host: str) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def router_listeners(host: str, port: int, router_url: str = "") -> list[Listener]:
    """The router's addresses from its settings: where it listens, and the URL jobs reach it at."""
    listeners = [Listener(host, port)]
    try:
        reached = parse_backend_url(router_url) if router_url else None
    except BackendUrlError:
        reached = None
    if reached is not None:
        listeners.append(Listener(reached.host, reached.port))
    return listeners
