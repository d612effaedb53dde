"""How many seconds of audio an upload holds, for the audio quota's reservation (pure, cheap).

A WAV file says it in its header. Other formats would need decoding, so their length is bounded
from their size instead, assuming no upload is encoded below MIN_BITRATE; the backend's own figure
settles the reservation afterwards either way.
"""

from __future__ import annotations

import struct

MIN_BITRATE = 16_000  # bits per second: below even speech-grade MP3 (32k) and Opus (24k) settings
MIN_BYTES_PER_S = MIN_BITRATE // 8
PCM_FORMATS = frozenset({1, 3, 0xFFFE})  # integer PCM, IEEE float, extensible: fixed bytes per second
MAX_CHUNKS = 64  # a WAV header with more chunks before its data is not worth reading


def audio_seconds(body: bytes, start: int, end: int) -> float:
    """The length of the audio file in BODY[START:END]: read from a WAV header, else bounded by size."""
    seconds = wav_seconds(body, start, end)
    return seconds if seconds is not None else (end - start) / MIN_BYTES_PER_S


def wav_seconds(body: bytes, start: int, end: int) -> float | None:
    """The length of a PCM WAV file in BODY[START:END]; None when it is not one.

    Counted from the bytes really present after the data chunk's header, not from the size the
    header claims, so a header cannot make a long file look short.
    """
    if end - start < 12 or body[start:start + 4] != b"RIFF" or body[start + 8:start + 12] != b"WAVE":
        return None
    at, bytes_per_s = start + 12, 0
    for _ in range(MAX_CHUNKS):
        if at + 8 > end:
            return None
        chunk, size = body[at:at + 4], struct.unpack_from("<I", body, at + 4)[0]
        if chunk == b"fmt ":
            bytes_per_s = _pcm_bytes_per_s(body, at + 8, min(at + 8 + size, end))
        elif chunk == b"data":
            return (end - at - 8) / bytes_per_s if bytes_per_s else None
        at += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


def _pcm_bytes_per_s(body: bytes, at: int, end: int) -> int:
    """Bytes per second of a `fmt ` chunk at AT, from its rate and frame size; 0 unless PCM."""
    if end - at < 16:
        return 0
    fmt, _channels, rate, _declared, block = struct.unpack_from("<HHIIH", body, at)
    return rate * block if fmt in PCM_FORMATS else 0
