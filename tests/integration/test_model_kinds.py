"""A model serves only the endpoints of its kind: the router refuses the others itself, in the
OpenAI envelope, and forwards nothing (real router, fake backends, a catalog and registered names)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from launcher.core.settings import ClusterSettings, RouterSettings, Settings
from tests.conftest import TEST_ROUTER, LoopThread, Registry, RouterHandle
from tests.fake_backend import FakeBackend

CATALOG = """
[models.talker]
engine = "vllm"
kind = "chat"
weights = "/models/talker"

[models.embedder]
engine = "vllm"
kind = "embeddings"
weights = "/models/embedder"
"""
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
CHAT_PATHS = "/v1/chat/completions, /v1/completions, /v1/responses, /v1/messages, /v1/messages/count_tokens"
AUDIO = (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
         b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n--b--\r\n')


@dataclasses.dataclass
class Stack:
    router: RouterHandle
    key: str
    backends: dict[str, FakeBackend]


@pytest.fixture
def stack(servers: LoopThread, registry: Registry, tmp_path: Path,
          make_backend: Callable[..., FakeBackend]) -> Iterator[Stack]:
    from router.app import create_app
    from router.serve import start

    (tmp_path / "catalog.toml").write_text(CATALOG)
    backends = {name: make_backend(models=[name]) for name in ("talker", "embedder", "whisper-tiny", "chatty")}
    registry.add_backend("talker", backends["talker"].url, secret=None)
    registry.add_backend("embedder", backends["embedder"].url, kind="embeddings", secret=None)
    registry.add_backend("whisper-tiny", backends["whisper-tiny"].url, kind="transcription", secret=None)
    registry.add_backend("chatty", backends["chatty"].url, secret=None)  # registered, not in the catalog
    key = registry.add_key("alice")
    overrides: dict[str, Any] = {**TEST_ROUTER, "accounting": False}
    rs = dataclasses.replace(RouterSettings(), **overrides)
    settings = Settings(database=registry.url, router=rs, cluster=ClusterSettings(catalog=str(tmp_path / "catalog.toml")))

    async def go() -> RouterHandle:
        app = create_app(settings, registry.engine)
        runner, port = await start(app, "127.0.0.1", 0, rs.grace_period_s)
        return RouterHandle(app, runner, port, settings)

    handle = servers.run(go())
    yield Stack(handle, key, backends)
    servers.run(handle.runner.cleanup())


def ask(s: Stack, path: str, model: str) -> requests.Response:
    auth = {"Authorization": f"Bearer {s.key}"}
    if path.startswith("/v1/audio/"):
        return requests.post(s.router.url + path, data=AUDIO.replace(b"{model}", model.encode()), timeout=10,
                             headers={**auth, "Content-Type": "multipart/form-data; boundary=b"})
    body: dict[str, Any] = {"model": model, **(CHAT if "chat" in path else {"input": "hi", "prompt": "hi"})}
    return requests.post(s.router.url + path, json=body, headers=auth, timeout=10)


@pytest.mark.parametrize(("path", "model", "kind", "serves"), [
    ("/v1/chat/completions", "whisper-tiny", "transcription", "/v1/audio/transcriptions, /v1/audio/translations"),
    ("/v1/embeddings", "whisper-tiny", "transcription", "/v1/audio/transcriptions, /v1/audio/translations"),
    ("/v1/embeddings", "talker", "chat", CHAT_PATHS),
    ("/v1/embeddings", "chatty", "chat", CHAT_PATHS),
    ("/v1/audio/transcriptions", "chatty", "chat", CHAT_PATHS),
    ("/v1/chat/completions", "embedder", "embeddings", "/v1/embeddings"),
    ("/v1/completions", "embedder", "embeddings", "/v1/embeddings"),
])
def test_an_endpoint_the_models_kind_does_not_serve_is_refused_and_not_forwarded(
    stack: Stack, path: str, model: str, kind: str, serves: str,
) -> None:
    answer = ask(stack, path, model)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "wrong_endpoint_for_model" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert error["message"] == f"model {model!r} is a {kind} model; it serves {serves}"
    assert not stack.backends[model].received


@pytest.mark.parametrize(("path", "model"), [
    ("/v1/chat/completions", "talker"), ("/v1/completions", "chatty"), ("/v1/embeddings", "embedder"),
])
def test_an_endpoint_the_kind_serves_is_forwarded(stack: Stack, path: str, model: str) -> None:
    answer = ask(stack, path, model)
    assert answer.status_code == 200, answer.text
    assert stack.backends[model].received


def test_unknown_models_are_still_not_found(stack: Stack) -> None:
    answer = ask(stack, "/v1/embeddings", "nobody")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
