"""Bytes on a bare connection, for what an HTTP client library would refuse to send."""

from __future__ import annotations

import socket


def exchange(port: int, payload: bytes) -> bytes:
    """Send PAYLOAD on a new connection; everything the server answers until it closes (or 5 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionError):
            pass
    return data
