"""Reservations cover what a request may really use: `n` choices, names outside the catalog, audio.

Each test is a parallel burst against the real router and the fake backend: the burst is admitted
while the first requests are still running, so only what they reserved keeps the rest out.
"""

from __future__ import annotations

import asyncio
import io
import wave
from typing import Any, Callable

import openai
from openai.types.chat import ChatCompletionMessageParam

from launcher.core.settings import KeyLimits
from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.integration.test_quota_router import me

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A silent mono 8-bit WAV of SECONDS."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes(b"\x80" * int(seconds * rate))
    return out.getvalue()


async def burst(count: int, call: Callable[[], Any]) -> tuple[list[Any], int]:
    """COUNT calls at once: the answers admitted, and how many were refused with a 429."""
    results = await asyncio.gather(*(call() for _ in range(count)), return_exceptions=True)
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    admitted = [r for r in results if not isinstance(r, BaseException)]
    assert len(admitted) + len(refused) == count, [r for r in results if isinstance(r, BaseException)]
    return admitted, len(refused)


def start(registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
          limits: KeyLimits, kind: str = "chat", **backend: Any) -> tuple[RouterHandle, str, openai.AsyncOpenAI]:
    model = "fake-whisper" if kind == "transcription" else "fake-chat"
    fake = make_backend(models=[model], secret=SECRET, latency_ms=400, **backend)
    registry.add_backend(model, fake.url, kind=kind)
    key = registry.add_key("bob", limits=limits)
    router = make_router(stall_timeout_s=10)
    return router, key, openai.AsyncOpenAI(base_url=router.base_url, api_key=key, max_retries=0)


async def test_n_choices_are_reserved(registry: Registry, make_backend: Callable[..., FakeBackend],
                                      make_router: Callable[..., RouterHandle]) -> None:
    # The burst: 20 x (n=10, max_tokens=50) against 1,000 daily tokens used 6,630.
    router, key, client = start(registry, make_backend, make_router, KeyLimits(daily_tokens=1000),
                                chunks=100, honour_max_tokens=True)
    admitted, _ = await burst(20, lambda: client.chat.completions.create(
        model="fake-chat", messages=HI, n=10, max_tokens=50))
    await client.close()
    used = sum(a.usage.total_tokens for a in admitted)
    assert all(len(a.choices) == 10 for a in admitted)
    assert 500 < used <= 1000, used
    assert me(router, key)["usage"]["today"]["total_tokens"] == used


async def test_best_of_is_reserved_on_completions(registry: Registry, make_backend: Callable[..., FakeBackend],
                                                  make_router: Callable[..., RouterHandle]) -> None:
    router, key, client = start(registry, make_backend, make_router, KeyLimits(tpm=1000),
                                chunks=100, honour_max_tokens=True)
    admitted, _ = await burst(10, lambda: client.completions.create(
        model="fake-chat", prompt="once", n=2, max_tokens=50, extra_body={"best_of": 8}))
    await client.close()
    used = sum(a.usage.total_tokens for a in admitted)
    assert 400 < used <= 1000, used


async def test_a_name_outside_the_catalog_reserves_the_default(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
) -> None:
    # The burst: 40 requests without max_tokens on a `backends add` name, tpm 1,000: 12,400 used.
    router, key, client = start(registry, make_backend, make_router, KeyLimits(tpm=1000), chunks=300)
    admitted, refused = await burst(40, lambda: client.chat.completions.create(model="fake-chat", messages=HI))
    await client.close()
    used = sum(a.usage.total_tokens for a in admitted)
    assert 300 < used <= 1000 and refused == 40 - len(admitted), used


async def test_audio_seconds_are_reserved_from_the_file(
    registry: Registry, make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
) -> None:
    # The burst: 20 three-second transcriptions against 10 daily audio seconds were all admitted.
    router, key, client = start(registry, make_backend, make_router, KeyLimits(daily_audio_seconds=10),
                                kind="transcription")
    clip = wav(3.0)
    admitted, refused = await burst(20, lambda: client.audio.transcriptions.create(
        model="fake-whisper", file=("clip.wav", clip, "audio/wav")))
    await client.close()
    assert (len(admitted), refused) == (3, 17)
    standing = me(router, key)
    assert standing["usage"]["today"]["audio_seconds"] == 9.0
    assert standing["windows"]["daily_audio_seconds"]["used"] == 9.0  # reservations settled
