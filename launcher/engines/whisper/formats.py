"""Pure wire formats of the whisper server: request options in, OpenAI-shaped answers out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")

# OpenAI's verbose_json names the language in words; faster-whisper gives the ISO code.
# Codes not listed here are passed through as they are.
LANGUAGE_NAMES = {
    "en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian",
    "pt": "portuguese", "nl": "dutch", "pl": "polish", "cs": "czech", "sv": "swedish",
    "da": "danish", "fi": "finnish", "no": "norwegian", "ru": "russian", "uk": "ukrainian",
    "tr": "turkish", "el": "greek", "hu": "hungarian", "ro": "romanian", "ar": "arabic",
    "he": "hebrew", "hi": "hindi", "zh": "chinese", "ja": "japanese", "ko": "korean",
}


class InvalidRequest(ValueError):
    """A request field the client got wrong; `param` names it for the error envelope."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Word:
    """One word with its timing, as in OpenAI's verbose_json `words`."""

    word: str
    start: float
    end: float


@dataclass(frozen=True)
class Segment:
    """One decoded segment, as in OpenAI's verbose_json `segments`."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class Transcript:
    """What a transcription produced, independent of the engine."""

    task: str
    language: str
    duration: float
    segments: tuple[Segment, ...]

    @property
    def text(self) -> str:
        """The whole text, segments joined the way Whisper emits them (leading spaces kept)."""
        return "".join(s.text for s in self.segments).strip()


@dataclass(frozen=True)
class Options:
    """Validated transcription options from OpenAI's multipart fields."""

    response_format: str = "json"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    granularities: frozenset[str] = field(default_factory=lambda: frozenset({"segment"}))

    @property
    def word_timestamps(self) -> bool:
        """Word timing costs extra decoding time: only when verbose_json asks for words."""
        return self.response_format == "verbose_json" and "word" in self.granularities


def parse_options(fields: Mapping[str, str], granularities: Sequence[str]) -> Options:
    """Validate the text fields of a transcription request; raise InvalidRequest on bad input."""
    fmt = fields.get("response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise InvalidRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                             "response_format")
    unknown = [g for g in granularities if g not in GRANULARITIES]
    if unknown:
        raise InvalidRequest(f"unknown timestamp granularity {unknown[0]!r}",
                             "timestamp_granularities[]")
    return Options(
        response_format=fmt,
        language=fields.get("language") or None,
        prompt=fields.get("prompt") or None,
        temperature=_parse_temperature(fields.get("temperature")),
        granularities=frozenset(granularities or ("segment",)),
    )


def _parse_temperature(raw: str | None) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest("temperature must be a number", "temperature") from None
    if not 0.0 <= value <= 1.0:
        raise InvalidRequest("temperature must be between 0 and 1", "temperature")
    return value


def format_timestamp(seconds: float, decimal_marker: str) -> str:
    """HH:MM:SS<marker>mmm, the subtitle timestamp (',' for SRT, '.' for WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def to_srt(segments: Sequence[Segment]) -> str:
    """SubRip subtitles, one numbered cue per segment."""
    cues = [
        f"{i}\n{format_timestamp(s.start, ',')} --> {format_timestamp(s.end, ',')}\n"
        f"{s.text.strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(segments: Sequence[Segment]) -> str:
    """WebVTT subtitles, one cue per segment."""
    cues = [
        f"{format_timestamp(s.start, '.')} --> {format_timestamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def usage(duration: float) -> dict[str, Any]:
    """OpenAI's duration usage object: whole seconds of audio, rounded up, as billed."""
    return {"type": "duration", "seconds": math.ceil(duration)}


def to_verbose_json(t: Transcript, granularities: frozenset[str]) -> dict[str, Any]:
    """OpenAI's verbose_json body; segments and words only when their granularity was asked."""
    body: dict[str, Any] = {
        "task": t.task,
        "language": LANGUAGE_NAMES.get(t.language, t.language),
        "duration": round(t.duration, 2),
        "text": t.text,
    }
    if "segment" in granularities:
        body["segments"] = [_segment_json(s) for s in t.segments]
    if "word" in granularities:
        body["words"] = [_word_json(w) for s in t.segments for w in s.words]
    body["usage"] = usage(t.duration)
    return body


def _segment_json(s: Segment) -> dict[str, Any]:
    return {
        "id": s.id, "seek": s.seek, "start": round(s.start, 2), "end": round(s.end, 2),
        "text": s.text, "tokens": list(s.tokens), "temperature": s.temperature,
        "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
        "no_speech_prob": s.no_speech_prob,
    }


def _word_json(w: Word) -> dict[str, Any]:
    return {"word": w.word.strip(), "start": round(w.start, 2), "end": round(w.end, 2)}


def render(t: Transcript, options: Options) -> tuple[str | dict[str, Any], str]:
    """The response body (text or a JSON-able dict) and its content type for the asked format."""
    fmt = options.response_format
    if fmt == "text":
        return t.text + "\n", "text/plain"
    if fmt == "srt":
        return to_srt(t.segments), "application/x-subrip"
    if fmt == "vtt":
        return to_vtt(t.segments), "text/vtt"
    if fmt == "verbose_json":
        return to_verbose_json(t, options.granularities), "application/json"
    return {"text": t.text, "usage": usage(t.duration)}, "application/json"


def error_body(message: str, err_type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}
