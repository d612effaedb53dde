"""What the router sends upstream and takes back: the hop marker that stops request loops, and the
cap on a backend's buffered (non-stream) answer."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from aiohttp import web

from tests.conftest import SECRET, LoopThread, Registry, RouterHandle
from tests.fake_backend import FakeBackend

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
HOP = "x-llm-launch-hop"


def post(router: RouterHandle, key: str, body: dict[str, object], path: str = "/chat/completions",
         **headers: str) -> requests.Response:
    return requests.post(router.base_url + path, json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}", **headers})


def assert_envelope(reply: requests.Response, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error


class EchoHop:
    """A backend that answers every chat request and sends the hop marker it got back in its headers."""

    def __init__(self, servers: LoopThread, big_bytes: int = 0) -> None:
        self.seen: list[str | None] = []
        self.big_bytes = big_bytes
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        self.runner = web.AppRunner(app)
        servers.run(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        servers.run(site.start())
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake-chat"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.headers.get(HOP))
        headers = {HOP: request.headers.get(HOP, ""), "Content-Type": "application/json"}
        if not self.big_bytes:
            return web.Response(body=b'{"choices": []}', headers=headers)
        response = web.StreamResponse(headers=headers)  # chunked: no Content-Length to refuse early
        await response.prepare(request)
        for _ in range(self.big_bytes // 65536):
            await response.write(b" " * 65536)
        await response.write(b'{"choices": []}')
        return response


@pytest.fixture
def echo(servers: LoopThread) -> Iterator[EchoHop]:
    backend = EchoHop(servers)
    yield backend
    servers.run(backend.runner.cleanup())


def test_a_non_stream_answer_over_max_response_bytes_is_502(
        make_router: Callable[..., RouterHandle], make_backend: Callable[..., FakeBackend], registry: Registry,
        servers: LoopThread) -> None:
    embed = make_backend(models=["fake-embed"], secret=SECRET, embedding_dim=4096)
    registry.add_backend("fake-embed", embed.url, kind="embeddings")
    big = EchoHop(servers, big_bytes=2 * 1024 * 1024)
    registry.add_backend("fake-chat", big.url)
    key = registry.add_key("alice")
    router = make_router(max_response_bytes=1024 * 1024)
    try:
        small = post(router, key, {"model": "fake-embed", "input": "one"}, "/embeddings")
        assert small.status_code == 200 and len(small.content) < 1024 * 1024
        sized = post(router, key, {"model": "fake-embed", "input": ["x"] * 40}, "/embeddings")  # ~3 MB, sized
        assert_envelope(sized, 502, "response_too_large")
        assert_envelope(post(router, key, CHAT), 502, "response_too_large")  # chunked, counted as it comes
        assert post(router, key, {"model": "fake-embed", "input": "again"}, "/embeddings").status_code == 200
    finally:
        servers.run(big.runner.cleanup())
