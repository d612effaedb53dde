"""Just enough HTTP/1.1 request parsing for the fake backend: Content-Length and chunked bodies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    method: bytes
    path: bytes
    headers: dict[bytes, bytes]
    body: bytes


def parse_request(buffer: bytearray) -> tuple[Request, int] | None:
    """The first complete request in BUFFER and its length, or None while it is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        return _chunked(buffer, start, method, path, headers)
    stop = start + int(headers.get(b"content-length", b"0"))
    if len(buffer) < stop:
        return None
    return Request(method, path, headers, bytes(buffer[start:stop])), stop


def _chunked(buffer: bytearray, pos: int, method: bytes, path: bytes,
             headers: dict[bytes, bytes]) -> tuple[Request, int] | None:
    """Decode a chunked request body (aiohttp clients send one when the body is a stream)."""
    parts: list[bytes] = []
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        data_end = line_end + 2 + size
        if len(buffer) < data_end + 2:
            return None
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None
            return Request(method, path, headers, b"".join(parts)), trailer_end + 4
        parts.append(bytes(buffer[line_end + 2:data_end]))
        pos = data_end + 2
