"""The accounting seam as the proxy uses it: admit before routing, finish exactly once, headers out."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import requests

from launcher.core.keys import KeyRecord
from router.accounting.seam import Admission, QuotaExceeded, RequestInfo, Usage
from tests.conftest import Registry, RouterHandle
from tests.fake_backend import FakeBackend

CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Recording:
    """An Accounting that admits until `refuse` is set and remembers every finish."""

    refuse: bool = False
    admitted: list[RequestInfo] = field(default_factory=list)
    finished: list[tuple[str, int, Usage, str | None]] = field(default_factory=list)

    async def admit(self, info: RequestInfo, now: float) -> Admission:
        if self.refuse:
            raise QuotaExceeded("rpm limit of 1 reached; resets in 42 s", 42, {"x-ratelimit-remaining-requests": "0"},
                                limit="rpm")
        self.admitted.append(info)
        return Admission(info=info, started_at=now, headers={"x-ratelimit-remaining-requests": "9"})

    def finish(self, admission: Admission, status: int, usage: Usage, backend: str | None, now: float) -> None:
        self.finished.append((admission.info.request_id, status, usage, backend))

    def headers(self, key: KeyRecord, now: float) -> dict[str, str]:
        return {"x-ratelimit-remaining-requests": "9"}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


def setup(make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
          registry: Registry) -> tuple[RouterHandle, FakeBackend, Recording, dict[str, str]]:
    backend = make_backend(models=["fake-chat"], chunk_delay_ms=0)
    registry.add_backend("fake-chat", backend.url, secret=None)
    key = registry.add_key("erin")
    recording = Recording()
    return make_router(recording), backend, recording, {"Authorization": f"Bearer {key}"}


def test_finish_once_with_exact_usage_and_headers(make_backend: Callable[..., FakeBackend],
                                                  make_router: Callable[..., RouterHandle], registry: Registry) -> None:
    router, backend, recording, auth = setup(make_backend, make_router, registry)
    reply = requests.post(router.base_url + "/chat/completions", json={**CHAT, "max_tokens": 30}, headers=auth)
    assert reply.headers["x-ratelimit-remaining-requests"] == "9"
    (info,) = recording.admitted
    assert (info.model, info.endpoint, info.max_tokens, info.stream) == ("fake-chat", "chat", 30, False)
    assert info.request_id == reply.headers["x-request-id"]
    (finished,) = recording.finished
    assert finished == (info.request_id, 200, Usage(prompt_tokens=reply.json()["usage"]["prompt_tokens"],
                                                    completion_tokens=5, reasoning_tokens=3), backend.url)


def test_stream_usage_reaches_the_ledger_even_when_stripped(make_backend: Callable[..., FakeBackend],
                                                            make_router: Callable[..., RouterHandle],
                                                            registry: Registry) -> None:
    router, _, recording, auth = setup(make_backend, make_router, registry)
    with requests.post(router.base_url + "/chat/completions", json={**CHAT, "stream": True}, headers=auth,
                       stream=True) as reply:
        assert b"usage" not in b"".join(reply.iter_content(None))
        assert reply.headers["x-ratelimit-remaining-requests"] == "9"
    _wait(lambda: len(recording.finished) == 1)
    (_, status, usage, _) = recording.finished[0]
    assert status == 200 and usage.completion_tokens == 5 and not usage.estimated


def test_refused_request_is_429_and_reaches_no_backend(make_backend: Callable[..., FakeBackend],
                                                       make_router: Callable[..., RouterHandle],
                                                       registry: Registry) -> None:
    router, backend, recording, auth = setup(make_backend, make_router, registry)
    recording.refuse = True
    reply = requests.post(router.base_url + "/chat/completions", json=CHAT, headers=auth)
    assert reply.status_code == 429
    assert reply.headers["Retry-After"] == "42" and reply.headers["x-ratelimit-remaining-requests"] == "0"
    assert reply.json()["error"]["code"] == "rate_limit_exceeded" and "rpm" in reply.json()["error"]["message"]
    assert backend.received == [] and recording.finished == []


def test_errors_after_admission_are_finished_too(make_backend: Callable[..., FakeBackend],
                                                 make_router: Callable[..., RouterHandle], registry: Registry) -> None:
    router, backend, recording, auth = setup(make_backend, make_router, registry)
    backend.config.latency_ms = 3000
    reply = requests.post(router.base_url + "/chat/completions", json=CHAT, headers=auth)
    assert reply.status_code == 504 and reply.headers["x-ratelimit-remaining-requests"] == "9"
    requests.post(router.base_url + "/chat/completions", json={**CHAT, "model": "nope"}, headers=auth)
    requests.post(router.base_url + "/chat/completions", json=CHAT)  # no key: never admitted
    assert [f[1] for f in recording.finished] == [504]


def test_disconnect_is_finished_with_an_estimate(make_backend: Callable[..., FakeBackend],
                                                 make_router: Callable[..., RouterHandle], registry: Registry) -> None:
    router, backend, recording, auth = setup(make_backend, make_router, registry)
    backend.config.chunks, backend.config.chunk_delay_ms = 400, 20
    body = json.dumps({**CHAT, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", router.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"{next(iter(auth))}: {auth['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body)
        data = b""
        while data.count(b"data: ") < 3:
            data += sock.recv(65536)
    _wait(lambda: len(recording.finished) == 1)
    (_, status, usage, _) = recording.finished[0]
    assert status == 499 and usage.estimated and usage.completion_tokens >= 2


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)

