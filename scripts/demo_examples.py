"""The API page's examples against a running service, printing each answer (run by scripts/demo).

Reads OPENAI_BASE_URL and OPENAI_API_KEY like any openai client; --workdir is where the speech
clip for the transcription example is written.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from openai import OpenAI

SENTENCES = ["The cat sat on the mat.", "A feline rested on the rug.", "Stock markets fell sharply today."]
SPOKEN = "The quick brown fox jumps over the lazy dog."


def heading(title: str) -> None:
    """A visible separator between examples."""
    print(f"\n=== {title}", flush=True)


def show_models(client: OpenAI) -> None:
    """GET /v1/models: the public names and, where the router tells, their status."""
    heading("GET /v1/models")
    for model in client.models.list().data:
        extra = model.model_extra or {}
        status = extra.get("status", "")
        base = extra.get("base_model", "")
        print(f"  {model.id:28} {status:8} {base}")


def chat(client: OpenAI) -> None:
    """A plain chat completion on the thinking model's public name."""
    heading("chat: qwen3.5-122b, 'Name three planets.'")
    answer = client.chat.completions.create(
        model="qwen3.5-122b", messages=[{"role": "user", "content": "Name three planets."}], max_tokens=40)
    print(answer.choices[0].message.content)
    print(f"(model {answer.model}; {answer.usage.total_tokens if answer.usage else '?'} tokens)")


def streaming(client: OpenAI) -> None:
    """A streamed chat completion: tokens are printed as they arrive, then the usage chunk."""
    heading("streaming chat: qwen3.5-122b, 'Count from one to five.'")
    stream = client.chat.completions.create(
        model="qwen3.5-122b", messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=60, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage:
            print(f"\n(usage: {chunk.usage.prompt_tokens} prompt + {chunk.usage.completion_tokens} completion tokens)")


def nonthinking(client: OpenAI) -> None:
    """The alias: same deployment, thinking off and the recommended sampling filled in."""
    heading("non-thinking alias: qwen3.5-122b-nonthinking, 'Say hello in French.'")
    answer = client.chat.completions.create(
        model="qwen3.5-122b-nonthinking", messages=[{"role": "user", "content": "Say hello in French."}],
        max_tokens=32)
    print(answer.choices[0].message.content)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors."""
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def embeddings(client: OpenAI) -> None:
    """Three sentences embedded; the two that mean the same are the closest pair."""
    heading("embeddings: qwen3-embedding-8B")
    result = client.embeddings.create(model="qwen3-embedding-8B", input=SENTENCES)
    vectors = [d.embedding for d in result.data]
    print(f"{len(vectors)} vectors of {len(vectors[0])} dimensions")
    print(f"similar:   {cosine(vectors[0], vectors[1]):.3f}  {SENTENCES[0]!r} ~ {SENTENCES[1]!r}")
    print(f"unrelated: {cosine(vectors[0], vectors[2]):.3f}  {SENTENCES[0]!r} ~ {SENTENCES[2]!r}")


def transcription(client: OpenAI, workdir: Path) -> None:
    """A clip spoken by espeak-ng, transcribed by the whisper deployment."""
    heading(f"transcription: whisper-large-v3, espeak-ng saying {SPOKEN!r}")
    clip = workdir / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(clip), SPOKEN], check=True, capture_output=True)
    with clip.open("rb") as audio:
        text = client.audio.transcriptions.create(model="whisper-large-v3", file=audio, language="en")
    print(text.text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every example; exit 1 if one failed (the others still run)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    client = OpenAI(timeout=300)
    examples: list[Callable[[], None]] = [
        lambda: show_models(client), lambda: chat(client), lambda: streaming(client),
        lambda: nonthinking(client), lambda: embeddings(client),
        lambda: transcription(client, args.workdir),
    ]
    failed = 0
    for example in examples:
        started = time.monotonic()
        try:
            example()
        except Exception as exc:  # show every example's outcome, then fail as a whole
            failed += 1
            print(f"FAILED: {type(exc).__name__}: {exc}")
        print(f"({time.monotonic() - started:.2f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
