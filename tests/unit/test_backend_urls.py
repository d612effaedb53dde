"""The one check of a backend URL (registration and `backends add`), and the router's own addresses."""

from __future__ import annotations

import socket

import pytest

from launcher.core.backend_urls import BackendUrlError, Listener, check_backend_url, parse_backend_url


@pytest.mark.parametrize(("url", "host", "port", "text"), [
    ("http://node12:8001/", "node12", 8001, "http://node12:8001"),
    ("https://Models.Example.org", "models.example.org", 443, "https://Models.Example.org"),
    ("http://10.0.0.7", "10.0.0.7", 80, "http://10.0.0.7"),
    ("http://[fe80::1]:9000/v1/", "fe80::1", 9000, "http://[fe80::1]:9000/v1"),
])
def test_a_good_url_is_kept_without_its_trailing_slash(url: str, host: str, port: int, text: str) -> None:
    parsed = parse_backend_url(url)
    assert (parsed.host, parsed.port, parsed.text) == (host, port, text)


@pytest.mark.parametrize(("url", "says"), [
    ("node12:8000", "must start with http:// or https://"),
    ("ftp://node12:21", "must start with http:// or https://"),
    ("http://node12:8001/\r\nX-Injected: yes", "whitespace or control characters"),
    ("http://node12:8001\nFORGED", "whitespace or control characters"),
    ("http://node 12:8001", "whitespace or control characters"),
    ("http://node12:8001\x00", "whitespace or control characters"),
    ("http://node12:8001\u2028", "whitespace or control characters"),
    ("http://:8001", "has no host"),
    ("http://node12:99999", "port"),
    ("http://node12:http", "port"),
    ("http://user:pw@node12:8001", "user name or password"),
    ("http://node12:8001/?x=1", "query or fragment"),
    ("", "must start with http:// or https://"),
])
def test_a_bad_url_is_refused_with_a_reason(url: str, says: str) -> None:
    with pytest.raises(BackendUrlError, match=says.replace("?", r"\?")) as caught:
        parse_backend_url(url)
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)  # one line, whatever came in


LOOPBACK = Listener("127.0.0.1", 8000)
EVERYWHERE = Listener("0.0.0.0", 8000)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000/", "http://[::1]:8000",
                                 "http://0.0.0.0:8000", "http://127.0.0.2:8000", "http://LOCALHOST:8000"])
def test_the_routers_loopback_address_is_refused(url: str) -> None:
    with pytest.raises(BackendUrlError, match="the router's own address"):
        check_backend_url(url, [LOOPBACK])


@pytest.mark.parametrize("url", ["http://127.0.0.1:8001", "http://node12:8000", "https://localhost"])
def test_other_ports_and_hosts_are_not_the_router(url: str) -> None:
    assert check_backend_url(url, [LOOPBACK]).text == url


def test_a_router_on_all_addresses_is_also_reached_by_its_host_name() -> None:
    for host in (socket.gethostname(), "127.0.0.1", "localhost"):
        with pytest.raises(BackendUrlError, match="the router's own address"):
            check_backend_url(f"http://{host}:8000", [EVERYWHERE])
    assert check_backend_url("http://gpu-node-7:8000", [EVERYWHERE]).port == 8000


def test_a_router_on_one_address_is_that_address_and_its_name() -> None:
    listeners = [Listener("10.1.2.3", 8000), Listener("router.internal", 8000)]
    for url in ("http://10.1.2.3:8000", "http://router.internal:8000", "http://ROUTER.internal:8000/"):
        with pytest.raises(BackendUrlError, match="the router's own address"):
            check_backend_url(url, listeners)
    assert check_backend_url("http://10.1.2.4:8000", listeners).host == "10.1.2.4"
