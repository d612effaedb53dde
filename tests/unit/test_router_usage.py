"""Usage extraction: JSON answers, SSE streams (kept byte-exact, usage event removed on request)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.accounting.seam import Usage
from router.upstream.usage import SMALL, SseTap, usage_from_json, usage_from_object
from router.upstream.usage_check import MAX_AUDIO_SECONDS, MAX_REQUEST_TOKENS


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


# --- values checked where they enter: bounds, types, never an exception ------------------------

TOKEN_BOUND = 10**9
AUDIO_BOUND_S = 3 * 86400.0


def test_the_bounds_are_the_documented_ones() -> None:
    assert (MAX_REQUEST_TOKENS, MAX_AUDIO_SECONDS) == (TOKEN_BOUND, AUDIO_BOUND_S)


@pytest.mark.parametrize("usage", [
    {"prompt_tokens": -1000005, "completion_tokens": 5}, {"prompt_tokens": 10**30}, {"completion_tokens": 1e308},
    {"prompt_tokens": TOKEN_BOUND + 1}, {"prompt_tokens": "12"}, {"prompt_tokens": [1]}, {"prompt_tokens": 1.5},
    {"prompt_tokens": True}, {"completion_tokens_details": {"reasoning_tokens": -1}},
    {"completion_tokens_details": "many"}, {"type": "duration", "seconds": "nan"},
    {"type": "duration", "seconds": -3}, {"type": "duration", "seconds": AUDIO_BOUND_S + 1},
    {"type": "duration", "seconds": [3]}, "12", 7, ["1"], True,
])
def test_a_bad_usage_is_rejected_with_no_counts(usage: object) -> None:
    for body in (dumps({"choices": [], "usage": usage}),
                 dumps({"choices": [], "usage": usage, "pad": "x" * (SMALL + 10)}),
                 dumps({"pad": "x" * (SMALL + 10), "choices": [], "usage": usage})):
        found = usage_from_json(body)
        assert found is not None and found.rejected, body[-80:]
        assert (found.total_tokens, found.reasoning_tokens, found.audio_seconds) == (0, 0, 0.0)
        assert found.estimated


@pytest.mark.parametrize(("usage", "expected"), [
    ({"prompt_tokens": TOKEN_BOUND, "completion_tokens": 0}, Usage(prompt_tokens=TOKEN_BOUND)),
    ({"prompt_tokens": 3.0, "completion_tokens": None}, Usage(prompt_tokens=3)),
    ({}, Usage()),
    ({"type": "duration", "seconds": AUDIO_BOUND_S}, Usage(audio_seconds=AUDIO_BOUND_S)),
    ({"type": "duration", "seconds": None}, Usage()),
])
def test_usage_at_the_bounds_is_taken_as_it_is(usage: object, expected: Usage) -> None:
    assert usage_from_object(usage) == expected


def test_a_bad_duration_of_a_verbose_answer_is_rejected() -> None:
    small = usage_from_json(dumps({"text": "hi", "duration": -2.0}))
    large = usage_from_json(b'{"text":"' + b"x" * SMALL + b'","duration":NaN}')
    assert small is not None and small.rejected == "duration=-2.0"
    assert large is not None and large.rejected == "duration=nan"


@pytest.mark.parametrize("strip", [True, False])
def test_a_bad_usage_event_is_treated_as_usage_and_the_stream_kept_whole(strip: bool) -> None:
    bad = event({"choices": [], "usage": {"prompt_tokens": "nan", "completion_tokens": 2}})
    stream = b"".join(CONTENT) + bad + b"data: [DONE]\n\n"
    tap = SseTap(strip_usage=strip, prompt_estimate=20)
    assert run(tap, pieces(stream, 11)) == (stream.replace(bad, b"") if strip else stream)
    assert tap.result().rejected == "prompt_tokens='nan'"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
USAGE_LIKE = st.dictionaries(
    st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens", "completion_tokens_details",
                     "type", "seconds"]), JSON_VALUES | st.just("duration"), max_size=4,
) | JSON_VALUES


@settings(max_examples=300, deadline=None)
@given(usage=USAGE_LIKE, pad=st.sampled_from([0, SMALL]))
def test_any_usage_value_gives_bounded_counts_and_never_raises(usage: object, pad: int) -> None:
    body = dumps({"pad": "x" * pad, "usage": usage})
    found = usage_from_json(body)
    tap = SseTap(strip_usage=True)
    run(tap, [event({"choices": [], "usage": usage}), b"data: [DONE]\n\n"])
    for result in (found, tap.result()):
        if result is None:
            continue
        counts = (result.prompt_tokens, result.completion_tokens, result.reasoning_tokens)
        assert all(isinstance(c, int) and 0 <= c <= TOKEN_BOUND for c in counts)
        assert 0.0 <= result.audio_seconds <= AUDIO_BOUND_S
        assert not result.rejected or (counts == (0, 0, 0) and result.audio_seconds == 0.0)
