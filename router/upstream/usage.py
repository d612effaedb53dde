"""Usage extraction from backend answers, cheap enough for the request path.

JSON answers put `usage` near their end, so only the tail is searched first. Streams go through
`SseTap`, which finds the usage event, removes it when the client did not ask for it, and keeps
every other byte as the backend sent it. Every value is checked on the way in
(router.upstream.usage_check): a malformed one gives a rejected usage, never an exception.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import orjson

from router.accounting.seam import Usage
from router.upstream.usage_check import audio_usage, rejected, token_usage

TAIL = 4096
SMALL = 8192  # bytes: below this a full parse is the cheapest way to the usage
USAGE_KEY = b'"usage"'
DURATION_KEY = b'"duration"'
NULL_USAGE = b'"usage":null'
NULL = b"null"
MESSAGE_DELTA = b'"message_delta"'
INPUT_TOKENS = b'"input_tokens"'
AUDIO_SECONDS = "x-audio-seconds"  # set by launcher/engines/whisper/server.py on every answer


def usage_from_json(body: bytes) -> Usage | None:
    """The usage object of a chat, completion, embedding or audio answer; None when absent."""
    if len(body) <= SMALL:
        return _usage_of_small(body)
    found = _usage_after(body)
    if found is not None:
        return found
    duration = _number_after(body, DURATION_KEY)
    return audio_usage(duration, "duration") if duration is not None else None


def usage_from_audio_header(value: str | None) -> Usage | None:
    """Usage from a whisper server's `x-audio-seconds` header (plain text, srt, vtt answers).

    Billed in whole seconds rounded up, like the `usage` object of its JSON answers.
    """
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return rejected(f"{AUDIO_SECONDS}: {value[:60]!r}")
    return audio_usage(float(math.ceil(seconds)) if math.isfinite(seconds) else seconds, AUDIO_SECONDS)


def _usage_of_small(body: bytes) -> Usage | None:
    # orjson reads a small answer whole faster than the tail search finds its usage.
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if "usage" in doc:
        return usage_from_object(doc["usage"])
    return audio_usage(doc["duration"], "duration") if doc.get("duration") is not None else None


def usage_from_object(usage: Any) -> Usage | None:
    """Usage from a parsed `usage` value: tokens, or whisper's {"type": "duration", "seconds"}.

    None when it is null; a rejected usage when it is anything but a valid usage object.
    """
    if usage is None:
        return None
    if not isinstance(usage, dict):
        return rejected(f"usage={usage!r:.60}")
    if usage.get("type") == "duration":
        return audio_usage(usage.get("seconds"))
    return token_usage(usage)


def _find_key(body: bytes, key: bytes) -> int:
    """Where the value of the last top-level-looking KEY starts, searching the tail first."""
    at = body.rfind(key, max(0, len(body) - TAIL))
    if at < 0 and len(body) > TAIL:
        at = body.rfind(key)
    if at < 0:
        return -1
    colon = body.find(b":", at + len(key))
    return -1 if colon < 0 or body[at + len(key):colon].strip() else colon + 1


def _usage_after(body: bytes) -> Usage | None:
    """The usage of a large answer: None when absent or null, rejected when not a readable object."""
    start = _find_key(body, USAGE_KEY)
    if start < 0:
        return None
    value = body[start:start + TAIL].lstrip()
    if value.startswith(NULL):
        return None
    end = _matching_brace(value, 0) if value.startswith(b"{") else -1
    if end < 0:
        return rejected(f"usage={value[:60]!r}")
    try:
        return usage_from_object(orjson.loads(value[:end + 1]))
    except orjson.JSONDecodeError:
        return rejected(f"usage={value[:60]!r}")


def _matching_brace(body: bytes, start: int) -> int:
    """The index of the brace closing the one at START (C-speed finds, no per-byte Python loop)."""
    # Usage objects hold numbers and nested objects only, so strings need no special care.
    depth, at, limit = 0, start, min(len(body), start + TAIL)
    while True:
        opening = body.find(b"{", at, limit)
        closing = body.find(b"}", at, limit)
        if closing < 0:
            return -1
        if 0 <= opening < closing:
            depth, at = depth + 1, opening + 1
            continue
        depth, at = depth - 1, closing + 1
        if depth == 0:
            return closing


def _number_after(body: bytes, key: bytes) -> float | None:
    start = _find_key(body, key)
    if start < 0:
        return None
    end = start
    while end < len(body) and body[end] not in b",}\n":
        end += 1
    try:
        return float(body[start:end])
    except ValueError:
        return None


class SseTap:
    """Passes an SSE stream through event by event, taking its usage event out when asked."""

    __slots__ = ("_strip", "_prompt_estimate", "_pending", "_done", "events", "usage")

    def __init__(self, strip_usage: bool, prompt_estimate: int = 0) -> None:
        self._strip = strip_usage
        self._prompt_estimate = prompt_estimate
        self._pending = b""
        self._done = False  # whether the [DONE] marker went by (it is not a token)
        self.events = 0  # data events seen, the estimate of tokens when no usage arrives
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send on for CHUNK: whole events only, the usage event removed if asked."""
        data = self._pending + chunk if self._pending else chunk
        end = _last_boundary(data)
        if end < 0:
            self._pending = data
            return b""
        complete, self._pending = data[:end], data[end:]
        self.events += complete.count(b"\n\n") or complete.count(b"\r\n\r\n")
        if complete.endswith((b"[DONE]\n\n", b"[DONE]\r\n\r\n")):
            self._done = True
        usages = complete.count(USAGE_KEY)
        if not usages or usages == complete.count(NULL_USAGE):
            return complete
        return self._take_usage(complete)

    def finish(self) -> bytes:
        """What is left when the stream ended (an unterminated last event, sent as it is)."""
        rest, self._pending = self._pending, b""
        return rest

    def result(self) -> Usage:
        """The backend's usage, or an estimate from the events seen when the stream ended early."""
        if self.usage is not None:
            return self.usage
        return Usage(
            prompt_tokens=self._prompt_estimate, completion_tokens=max(0, self.events - self._done),
            estimated=True,
        )

    def _take_usage(self, complete: bytes) -> bytes:
        kept: list[bytes] = []
        for event in _split_events(complete):
            usage = _event_usage(event)
            if usage is not None:
                if self.usage is not None and MESSAGE_DELTA in event and INPUT_TOKENS not in event:
                    # Anthropic's message_delta counts output only: the input came in message_start
                    usage = replace(usage, prompt_tokens=self.usage.prompt_tokens)
                self.usage = usage
                self.events -= 1
                if self._strip:
                    continue
            kept.append(event)
        return b"".join(kept)


def _last_boundary(data: bytes) -> int:
    """The index just past the last blank line that ends an event, or -1."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    if lf < 0 and crlf < 0:
        return -1
    return max(lf + 2 if lf >= 0 else -1, crlf + 4 if crlf >= 0 else -1)


def _split_events(data: bytes) -> list[bytes]:
    """Events with their terminating blank line, in order."""
    events = []
    start = 0
    while start < len(data):
        end = _next_boundary(data, start)
        events.append(data[start:end])
        start = end
    return events


def _next_boundary(data: bytes, start: int) -> int:
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    ends = [i + n for i, n in ((lf, 2), (crlf, 4)) if i >= 0]
    return min(ends) if ends else len(data)


def _event_usage(event: bytes) -> Usage | None:
    """The usage of an event that carries a non-null `usage`, else None."""
    if USAGE_KEY not in event:
        return None
    payload = b"".join(
        line[5:] for line in event.splitlines() if line.startswith(b"data:")
    ).strip()
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    # chat chunks and Anthropic's message_delta carry `usage` on top; the Responses API's
    # response.completed inside `response`, Anthropic's message_start inside `message`
    for holder in (parsed, parsed.get("response"), parsed.get("message")):
        if isinstance(holder, dict) and holder.get("usage") is not None:
            return usage_from_object(holder["usage"])
    return None
