"""Output formats of the whisper server: what a subtitle tool or OpenAI client reads."""

from __future__ import annotations

import pytest

from launcher.engines.whisper import formats as wf

SEGMENTS = (
    wf.Segment(0, 0, 0.0, 2.5, " The quick brown fox",
               words=(wf.Word(" The", 0.0, 0.3), wf.Word(" quick", 0.3, 0.61))),
    wf.Segment(1, 250, 2.5, 3661.0456, " jumps over the lazy dog."),
)
TRANSCRIPT = wf.Transcript("transcribe", "en", 3661.2, SEGMENTS)


@pytest.mark.parametrize("seconds, marker, expected", [
    (0.0, ",", "00:00:00,000"),
    (2.5, ",", "00:00:02,500"),
    (3661.0456, ".", "01:01:01.046"),
    (59.9996, ".", "00:01:00.000"),
    (-0.01, ",", "00:00:00,000"),
])
def test_format_timestamp(seconds: float, marker: str, expected: str) -> None:
    assert wf.format_timestamp(seconds, marker) == expected


@pytest.mark.parametrize("fmt, expected_body, expected_type", [
    ("text", "The quick brown fox jumps over the lazy dog.\n", "text/plain"),
    ("srt",
     "1\n00:00:00,000 --> 00:00:02,500\nThe quick brown fox\n\n"
     "2\n00:00:02,500 --> 01:01:01,046\njumps over the lazy dog.\n",
     "application/x-subrip"),
    ("vtt",
     "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nThe quick brown fox\n\n"
     "00:00:02.500 --> 01:01:01.046\njumps over the lazy dog.\n",
     "text/vtt"),
    ("json",
     {"text": "The quick brown fox jumps over the lazy dog.",
      "usage": {"type": "duration", "seconds": 3662}},
     "application/json"),
])
def test_render_formats(fmt: str, expected_body: object, expected_type: str) -> None:
    assert wf.render(TRANSCRIPT, wf.Options(response_format=fmt)) == (expected_body,
                                                                        expected_type)


@pytest.mark.parametrize("grains, has_segments, has_words", [
    (frozenset({"segment"}), True, False),
    (frozenset({"word"}), False, True),
    (frozenset({"word", "segment"}), True, True),
])
def test_verbose_json_follows_granularities(grains: frozenset[str], has_segments: bool,
                                            has_words: bool) -> None:
    body = wf.to_verbose_json(TRANSCRIPT, grains)
    assert body["language"] == "english"
    assert body["task"] == "transcribe"
    assert ("segments" in body) is has_segments
    assert ("words" in body) is has_words
    if has_words:
        assert body["words"][1] == {"word": "quick", "start": 0.3, "end": 0.61}
    if has_segments:
        assert [s["id"] for s in body["segments"]] == [0, 1]


def test_empty_transcript_renders_empty_subtitles() -> None:
    silent = wf.Transcript("transcribe", "xx", 0.4, ())
    assert wf.to_srt(silent.segments) == ""
    assert wf.to_vtt(silent.segments) == "WEBVTT\n\n"
    assert wf.to_verbose_json(silent, frozenset({"segment"}))["language"] == "xx"
    assert wf.usage(silent.duration) == {"type": "duration", "seconds": 1}


@pytest.mark.parametrize("fields, grains, expected", [
    ({}, [], wf.Options()),
    ({"response_format": "verbose_json", "language": "de", "temperature": "0.2",
      "prompt": "Slurm"}, ["word"],
     wf.Options("verbose_json", "de", "Slurm", 0.2, frozenset({"word"}))),
    ({"response_format": "", "language": "", "temperature": ""}, [], wf.Options()),
])
def test_parse_options(fields: dict[str, str], grains: list[str],
                       expected: wf.Options) -> None:
    assert wf.parse_options(fields, grains) == expected


@pytest.mark.parametrize("fields, grains, param", [
    ({"response_format": "xml"}, [], "response_format"),
    ({"temperature": "hot"}, [], "temperature"),
    ({"temperature": "1.5"}, [], "temperature"),
    ({}, ["sentence"], "timestamp_granularities[]"),
])
def test_parse_options_rejects(fields: dict[str, str], grains: list[str], param: str) -> None:
    with pytest.raises(wf.InvalidRequest) as info:
        wf.parse_options(fields, grains)
    assert info.value.param == param


def test_word_timestamps_only_for_verbose_json_words() -> None:
    assert wf.Options("verbose_json", granularities=frozenset({"word"})).word_timestamps
    assert not wf.Options("json", granularities=frozenset({"word"})).word_timestamps
    assert not wf.Options("verbose_json").word_timestamps
