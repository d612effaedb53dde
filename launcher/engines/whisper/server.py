"""OpenAI-compatible transcription server on faster-whisper, run inside a whisper Slurm job.

    python -m launcher.engines.whisper.server --model PATH_OR_NAME --host H --port P
        [--api-key-file F | env LLM_LAUNCH_BACKEND_SECRET] [--served-name whisper-1]
        [--device auto|cpu|cuda] [--compute-type auto|int8|float16]
        [--max-concurrency N] [--max-queue N]
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from launcher.engines.table import ENGINES
from launcher.engines.whisper import formats as wf

SAMPLE_RATE = 16_000
MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # OpenAI caps audio at 25 MB; leave room for the form
SECRET_ENV = ENGINES["whisper"].secret_env  # the job script exports the backend secret here
AUDIO_SECONDS = "x-audio-seconds"  # response header: seconds of decoded audio (router/upstream/usage.py reads it)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs, resolved at the edge by main()."""

    model: str
    secret: str | None = None
    served_name: str = "whisper-1"
    device: str = "auto"
    compute_type: str = "auto"
    max_concurrency: int = 1
    max_queue: int = 8


class BadAudio(Exception):
    """The uploaded bytes are not audio that can be decoded."""


class Admission:
    """Counts requests waiting or running; refuses past concurrency + queue (single event loop)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0

    def try_enter(self) -> bool:
        """Take a slot if one is free."""
        if self.active >= self.capacity:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        """Give a slot back."""
        self.active -= 1


class Transcriber:
    """Owns the faster-whisper model (loaded once) and the threads that run it."""

    def __init__(self, config: ServerConfig) -> None:
        from faster_whisper import WhisperModel  # heavy import: only when a server starts

        device = resolve_device(config.device)
        self.model = WhisperModel(
            config.model, device=device,
            compute_type=resolve_compute_type(config.compute_type, device),
            num_workers=config.max_concurrency,
        )
        self.executor = ThreadPoolExecutor(config.max_concurrency, "whisper")

    async def run(self, audio: bytes, options: wf.Options, task: str) -> wf.Transcript:
        """Decode and transcribe in the thread pool, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._run, audio, options, task)

    def _run(self, data: bytes, options: wf.Options, task: str) -> wf.Transcript:
        samples = decode(data)
        kwargs: dict[str, Any] = {
            "language": options.language, "task": task, "initial_prompt": options.prompt,
            "word_timestamps": options.word_timestamps,
        }
        if options.temperature is not None:
            kwargs["temperature"] = options.temperature
        segments, info = self.model.transcribe(samples, **kwargs)
        return wf.Transcript(task, info.language, len(samples) / SAMPLE_RATE,
                             tuple(_segment(i, s) for i, s in enumerate(segments)))

    def close(self) -> None:
        """Stop the worker threads."""
        self.executor.shutdown(wait=False, cancel_futures=True)


def decode(data: bytes) -> Any:
    """Audio bytes in any container PyAV reads -> 16 kHz mono float32 samples, or BadAudio."""
    from faster_whisper.audio import decode_audio

    if not data:
        raise BadAudio("the uploaded file is empty")
    try:
        samples = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except Exception as exc:  # PyAV raises many types for corrupt input; all mean "not audio"
        raise BadAudio(f"could not decode the uploaded file as audio: {exc}") from None
    if len(samples) == 0:
        raise BadAudio("the uploaded file holds no audio samples")
    return samples


def _segment(index: int, s: Any) -> wf.Segment:
    # OpenAI numbers segments from 0; faster-whisper from 1.
    words = tuple(wf.Word(w.word, w.start, w.end) for w in (s.words or ()))
    return wf.Segment(index, s.seek, s.start, s.end, s.text, tuple(s.tokens),
                      s.temperature or 0.0, s.avg_logprob, s.compression_ratio,
                      s.no_speech_prob, words)


def resolve_device(device: str) -> str:
    """'auto' means CUDA when CTranslate2 sees a GPU, CPU otherwise."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def resolve_compute_type(compute_type: str, device: str) -> str:
    """'auto' means float16 on CUDA and int8 on CPU, the fast choice on each."""
    if compute_type != "auto":
        return compute_type
    return "float16" if device == "cuda" else "int8"


def error(status: int, message: str, err_type: str, param: str | None = None,
          code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    """An OpenAI error envelope response."""
    return web.json_response(wf.error_body(message, err_type, param, code),
                             status=status, headers=headers)


CONFIG = web.AppKey("config", ServerConfig)
TRANSCRIBER = web.AppKey("transcriber", Transcriber)
ADMISSION = web.AppKey("admission", Admission)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (404, 405, 413) in the OpenAI envelope."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason, "invalid_request_error")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer secret on everything but /health, so other cluster users get 401."""
    secret = request.app[CONFIG].secret
    if secret is None or request.path == "/health":
        return await handler(request)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
        return error(401, "Incorrect API key provided.", "invalid_request_error",
                     code="invalid_api_key")
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    """Liveness: the model is loaded before the socket opens, so answering means ready."""
    return web.json_response({"status": "ok"})


async def models(request: web.Request) -> web.Response:
    """The one served model, as OpenAI's model list."""
    name = request.app[CONFIG].served_name
    entry = {"id": name, "object": "model", "created": 0, "owned_by": "llm-launch"}
    return web.json_response({"object": "list", "data": [entry]})


async def read_form(request: web.Request) -> tuple[bytes, dict[str, str], list[str]]:
    """The multipart upload: file bytes, text fields, and the repeated granularity field."""
    if not request.content_type.startswith("multipart/"):
        raise wf.InvalidRequest("expected a multipart/form-data body")
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise wf.InvalidRequest("a 'file' field with the audio is required", "file")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    grains = [str(v) for k, v in form.items() if k in ("timestamp_granularities[]",
                                                       "timestamp_granularities")]
    return upload.file.read(), fields, grains


def audio_handler(task: str) -> Handler:
    """Handler for /v1/audio/transcriptions ('transcribe') or /translations ('translate')."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            data, fields, grains = await read_form(request)
            options = wf.parse_options(fields, grains)
        except wf.InvalidRequest as exc:
            return error(400, str(exc), "invalid_request_error", exc.param)
        admission = request.app[ADMISSION]
        if not admission.try_enter():
            return error(503, "The server is busy; retry shortly.", "server_error",
                         code="server_busy", headers={"Retry-After": "1"})
        try:
            transcript = await request.app[TRANSCRIBER].run(data, options, task)
        except BadAudio as exc:
            return error(400, str(exc), "invalid_request_error", "file", "invalid_file_format")
        finally:
            admission.leave()
        return respond(transcript, options)

    return handle


def respond(transcript: wf.Transcript, options: wf.Options) -> web.Response:
    """Render the transcript in the asked format; `x-audio-seconds` gives the audio's length in all of them.

    text, srt and vtt bodies have no usage object: the header is how the router bills them.
    """
    body, content_type = wf.render(transcript, options)
    headers = {AUDIO_SECONDS: f"{transcript.duration:.3f}"}
    if isinstance(body, dict):
        return web.json_response(body, headers=headers)
    return web.Response(text=body, content_type=content_type, headers=headers)


def create_app(config: ServerConfig, transcriber: Transcriber) -> web.Application:
    """The aiohttp app around an already loaded model."""
    app = web.Application(middlewares=[errors_middleware, auth_middleware],
                          client_max_size=MAX_UPLOAD_BYTES)
    app[CONFIG] = config
    app[TRANSCRIBER] = transcriber
    app[ADMISSION] = Admission(config.max_concurrency + config.max_queue)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/audio/transcriptions", audio_handler("transcribe"))
    app.router.add_post("/v1/audio/translations", audio_handler("translate"))

    async def close(_: web.Application) -> None:
        transcriber.close()

    app.on_cleanup.append(close)
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(prog="python -m launcher.engines.whisper.server",
                                description="OpenAI-compatible faster-whisper server")
    p.add_argument("--model", required=True, help="CTranslate2 model folder or Whisper size name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-file", help="file holding the bearer secret "
                   f"(default: env {SECRET_ENV}; neither: no auth)")
    p.add_argument("--served-name", default="whisper-1")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--compute-type", default="auto", help="auto, int8, float16, ...")
    p.add_argument("--max-concurrency", type=int, default=1)
    p.add_argument("--max-queue", type=int, default=8)
    return p.parse_args(argv)


def load_secret(path: str | None) -> str | None:
    """The backend secret from a file (kept out of argv, which `ps` shows) or the environment."""
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    return os.environ.get(SECRET_ENV) or None


def main(argv: list[str] | None = None) -> None:
    """Load the model, then serve until interrupted."""
    args = parse_args(argv)
    config = ServerConfig(args.model, load_secret(args.api_key_file), args.served_name,
                          args.device, args.compute_type, max(1, args.max_concurrency),
                          max(0, args.max_queue))
    started = time.monotonic()
    transcriber = Transcriber(config)
    print(f"model {config.model} loaded in {time.monotonic() - started:.2f} s", flush=True)
    web.run_app(create_app(config, transcriber), host=args.host, port=args.port,
                access_log=None)


if __name__ == "__main__":
    main()
