"""Usage extraction: JSON answers, SSE streams (kept byte-exact, usage event removed on request)."""

from __future__ import annotations

import json

import pytest

from router.accounting.seam import Usage
from router.upstream.usage import SseTap, usage_from_json


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


CHAT_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
              "completion_tokens_details": {"reasoning_tokens": 4}}


@pytest.mark.parametrize(("body", "expected"), [
    (dumps({"choices": [{"message": {"content": 'say "usage": {1}'}}], "usage": CHAT_USAGE}),
     Usage(prompt_tokens=11, completion_tokens=7, reasoning_tokens=4)),
    (json.dumps({"usage": {"prompt_tokens": 3, "total_tokens": 3}}, indent=2).encode(), Usage(prompt_tokens=3)),
    (dumps({"text": "hi", "usage": {"type": "duration", "seconds": 12}}), Usage(audio_seconds=12.0)),
    (dumps({"text": "hi", "language": "english", "duration": 8.25, "segments": []}), Usage(audio_seconds=8.25)),
    (dumps({"choices": [], "usage": None}), None),
    (b"plain text answer", None),
    (b"", None),
])
def test_usage_from_json(body: bytes, expected: Usage | None) -> None:
    assert usage_from_json(body) == expected


def test_usage_at_the_end_of_a_4096_dim_embedding() -> None:
    body = dumps({"object": "list", "data": [{"embedding": [0.123456] * 4096}] * 4,
                  "usage": {"prompt_tokens": 42, "total_tokens": 42}})
    assert usage_from_json(body) == Usage(prompt_tokens=42)


def test_usage_at_the_start_of_a_large_body() -> None:
    body = dumps({"usage": {"prompt_tokens": 5, "completion_tokens": 6}, "data": ["x" * 10000]})
    assert usage_from_json(body) == Usage(prompt_tokens=5, completion_tokens=6)


def event(value: object) -> bytes:
    return b"data: " + dumps(value) + b"\n\n"


CONTENT = [event({"choices": [{"delta": {"content": f"t{i}"}}]}) for i in range(3)]
USAGE_EVENT = event({"choices": [], "usage": CHAT_USAGE})
STREAM = b"".join(CONTENT) + USAGE_EVENT + b"data: [DONE]\n\n"


def run(tap: SseTap, chunks: list[bytes]) -> bytes:
    return b"".join(tap.feed(c) for c in chunks) + tap.finish()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 50, len(STREAM)])
def test_tap_keeps_the_stream_when_the_client_asked_for_usage(size: int) -> None:
    tap = SseTap(strip_usage=False)
    assert run(tap, pieces(STREAM, size)) == STREAM
    assert tap.result() == Usage(prompt_tokens=11, completion_tokens=7, reasoning_tokens=4)


@pytest.mark.parametrize("size", [1, 13, len(STREAM)])
def test_tap_strips_only_the_usage_event(size: int) -> None:
    tap = SseTap(strip_usage=True)
    assert run(tap, pieces(STREAM, size)) == STREAM.replace(USAGE_EVENT, b"")
    assert not tap.result().estimated


def test_tap_handles_crlf_events() -> None:
    crlf = STREAM.replace(b"\n\n", b"\r\n\r\n")
    tap = SseTap(strip_usage=True)
    assert run(tap, pieces(crlf, 9)) == crlf.replace(USAGE_EVENT.replace(b"\n\n", b"\r\n\r\n"), b"")
    assert tap.result().prompt_tokens == 11


def test_null_usage_in_every_chunk_is_left_alone() -> None:
    chunk = event({"choices": [{"delta": {"content": "x"}}], "usage": None})
    tap = SseTap(strip_usage=True)
    assert tap.feed(chunk * 3) == chunk * 3


def test_stream_cut_short_is_estimated_from_the_events_seen() -> None:
    tap = SseTap(strip_usage=True, prompt_estimate=20)
    run(tap, [b"".join(CONTENT)])
    assert tap.result() == Usage(prompt_tokens=20, completion_tokens=3, estimated=True)
    assert SseTap(False).result() == Usage(estimated=True)


def test_done_marker_is_not_counted_as_a_token() -> None:
    tap = SseTap(strip_usage=False)
    run(tap, [b"".join(CONTENT) + b"data: [DONE]\n\n"])
    assert tap.result().completion_tokens == 3
