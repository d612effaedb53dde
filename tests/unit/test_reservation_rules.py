"""What a request reserves: choices, the default for any name, and the length of an audio upload."""

from __future__ import annotations

import io
import struct
import wave

import pytest

from launcher.core.settings import KeyLimits
from router.accounting import limits as quota
from router.api.audio_length import MIN_BYTES_PER_S, audio_seconds, wav_seconds
from router.api.body import form_part, inspect
from router.api.defaults import choices, reservation

NOW = 1_790_000_000.0


def wav(seconds: float, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\0" * int(seconds * rate) * channels * width)
    return out.getvalue()


@pytest.mark.parametrize(("seconds", "rate", "channels", "width"), [(3.0, 16000, 1, 2), (1.5, 44100, 2, 2),
                                                                     (0.25, 8000, 1, 1), (2.0, 48000, 2, 4)])
def test_a_wav_header_gives_the_length(seconds: float, rate: int, channels: int, width: int) -> None:
    data = b"head" + wav(seconds, rate, channels, width) + b"tail"
    assert wav_seconds(data, 4, len(data) - 4) == pytest.approx(seconds)


def test_a_wav_header_cannot_make_a_long_file_look_short() -> None:
    data = bytearray(wav(10.0))
    at = data.find(b"data")
    data[at + 4:at + 8] = struct.pack("<I", 16)  # claims 16 bytes of samples
    assert wav_seconds(bytes(data), 0, len(data)) == pytest.approx(10.0, abs=0.01)


def test_chunks_before_the_samples_are_skipped_and_odd_sizes_padded() -> None:
    plain = wav(1.0)
    fmt_end = plain.find(b"data")
    data = plain[:fmt_end] + b"LIST" + struct.pack("<I", 3) + b"abc\0" + plain[fmt_end:]
    assert wav_seconds(data, 0, len(data)) == pytest.approx(1.0)


@pytest.mark.parametrize("data", [b"", b"RIFF....WAVEfake-audio-bytes", b"ID3\x03" + b"\0" * 5000,
                                  wav(1.0)[:30], wav(1.0).replace(b"\x01\x00\x01\x00", b"\x55\x00\x01\x00", 1)])
def test_anything_else_is_bounded_by_its_size(data: bytes) -> None:
    assert wav_seconds(data, 0, len(data)) is None
    assert audio_seconds(data, 0, len(data)) == len(data) / MIN_BYTES_PER_S


def test_the_file_part_of_a_form_is_found_without_copying() -> None:
    clip = wav(2.0)
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n" + clip + b"\r\n--XyZ--\r\n")
    span = form_part(body, "multipart/form-data; boundary=XyZ", "file")
    assert span is not None and body[span[0]:span[1]] == clip
    assert audio_seconds(body, *span) == pytest.approx(2.0)


@pytest.mark.parametrize(("doc", "endpoint", "expected"), [
    ({"n": 10}, "chat", 10), ({"n": 2, "best_of": 8}, "completions", 8), ({"best_of": 8}, "chat", 1),
    ({"n": 3, "best_of": 2}, "completions", 3), ({"n": 0}, "chat", 1), ({"n": "4"}, "chat", 1),
    ({"n": True}, "chat", 1), ({"n": 5}, "embeddings", 1), ({}, "completions", 1),
])
def test_choices_count_every_sequence_the_backend_generates(doc: dict[str, object], endpoint: str,
                                                            expected: int) -> None:
    assert choices(inspect({"model": "m", **doc}), endpoint) == expected


def test_every_name_has_a_default_reservation() -> None:
    assert reservation(50, None, 4096) == 50
    assert reservation(0, None, 4096) == 4096  # a name outside the catalog
    assert reservation(0, 1000, 4096) == 1000 and reservation(0, 9000, 4096) == 4096


def test_audio_is_reserved_in_whole_seconds_and_released_on_settlement() -> None:
    limits = KeyLimits(daily_audio_seconds=10)
    st = quota.KeyState(NOW)
    reserve = quota.audio_reservation(limits, 2.2)
    assert reserve == 3.0 and quota.audio_reservation(limits, 0.0) == 1.0
    assert quota.audio_reservation(limits, 500.0) == 10.0  # capped, so that it can ever pass
    for _ in range(3):
        assert quota.refusal(st, limits, 0, reserve, NOW) is None
        quota.charge(st, 0, reserve)
    refused = quota.refusal(st, limits, 0, reserve, NOW)
    assert refused is not None and refused.limit == "daily_audio_seconds" and "in flight" in refused.message
    quota.settle(st, NOW, 0, 0, NOW + 1, reserve)
    st.today.audio += 2.2
    assert st.audio_reserved == 6.0 and quota.refusal(st, limits, 0, 1.0, NOW + 1) is None
    assert quota.refusal(st, KeyLimits(daily_audio_seconds=0), 0, 1.0, NOW) is not None
