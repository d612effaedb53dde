"""What the router sends upstream and takes back: the hop marker that stops request loops, and the
cap on a backend's buffered (non-stream) answer."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from aiohttp import web

from router.accounting.seam import NoAccounting
from tests.conftest import SECRET, LoopThread, Registry, RouterHandle
from tests.fake_backend import FakeBackend

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}
HOP = "x-llm-launch-hop"
ROUTER_ID = re.compile(r"llmr-[0-9a-f]{16}")


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


def test_a_backend_at_the_routers_own_address_is_a_508_not_a_loop(
        make_router: Callable[..., RouterHandle], registry: Registry) -> None:
    key = registry.add_key("alice")
    router = make_router()
    # What registration refuses; with a client key as its secret, each hop would be served again.
    registry.add_backend("fake-chat", router.url, secret=key)
    time.sleep(0.3)  # the registry refresh sees it
    reply = post(router, key, CHAT)
    assert_envelope(reply, 508, "loop_detected")
    assert HOP not in reply.headers


def test_routers_in_a_circle_refuse_the_request_that_comes_back(
        make_router: Callable[..., RouterHandle], registry: Registry) -> None:
    key = registry.add_key("alice")
    first, second = make_router(), make_router(accounting=NoAccounting())  # one quota keeper per registry
    registry.add_backend("fake-chat", second.url, secret=key)  # each router sees both: every path is a circle
    registry.add_backend("fake-chat", first.url, secret=key)
    time.sleep(0.3)
    for _ in range(6):
        assert_envelope(post(first, key, CHAT), 508, "loop_detected")


def test_the_marker_names_the_router_and_never_reaches_the_client(
        make_router: Callable[..., RouterHandle], registry: Registry, echo: EchoHop) -> None:
    registry.add_backend("fake-chat", echo.url)
    key = registry.add_key("alice")
    router = make_router()
    reply = post(router, key, CHAT)
    assert reply.status_code == 200, reply.text
    assert ROUTER_ID.fullmatch(echo.seen[-1] or "")
    assert HOP not in reply.headers  # the backend echoed it; the router does not pass it on


@pytest.mark.parametrize("sent", ["1", "hello", "llmr-zz", "llmr-0123456789abcdef0", "llmr-0123456789abcdef",
                                  "llmr-0123456789abcdef, llmr-fedcba9876543210"])
def test_a_client_marker_that_is_not_this_routers_id_is_no_loop(
        make_router: Callable[..., RouterHandle], registry: Registry, echo: EchoHop, sent: str) -> None:
    registry.add_backend("fake-chat", echo.url)
    key = registry.add_key("alice")
    router = make_router()
    reply = post(router, key, CHAT, **{HOP: sent})
    assert reply.status_code == 200, reply.text
    forwarded = [part.strip() for part in (echo.seen[-1] or "").split(",")]
    own = forwarded[-1]
    assert ROUTER_ID.fullmatch(own)
    assert forwarded[:-1] == [p.strip() for p in sent.split(",") if ROUTER_ID.fullmatch(p.strip())]


def test_eight_routers_in_a_row_are_refused(make_router: Callable[..., RouterHandle], registry: Registry,
                                             echo: EchoHop) -> None:
    registry.add_backend("fake-chat", echo.url)
    key = registry.add_key("alice")
    router = make_router()
    chain = ", ".join(f"llmr-{i:016x}" for i in range(8))
    assert_envelope(post(router, key, CHAT, **{HOP: chain}), 508, "loop_detected")
    assert post(router, key, CHAT, **{HOP: ", ".join(chain.split(", ")[:7])}).status_code == 200


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
