"""Shared fixtures: a registry on a temporary SQLite file, fake backends, a router on a real socket.

Servers run on one background event loop thread, so sync clients (openai, requests, curl) and
async tests on pytest's own loop talk to them over loopback like any client would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from sqlalchemy import Engine

from launcher.core.db import open_engine, session_factory
from launcher.core.keys import create_key
from launcher.core.deployments import DeploymentRecord, add_backend
from launcher.core.settings import KeyLimits, RouterSettings, Settings
from router.app import create_app
from router.serve import start
from tests.fake_backend import FakeBackend, FakeConfig
from tests.shared_services import db_url, pg_url, private_pg, private_redis, redis_url  # noqa: F401

try:
    from tests.integration.slurm_fixtures import slurm_cluster  # noqa: F401
except ImportError:
    pass

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the e2e tier last: its session-wide stack holds real model servers (CPU, fake GPUs)
    that the Slurm integration tests need, and it is torn down only when the session ends."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)


# Short timeouts keep failure tests fast; probes are off unless a test asks for them.
TEST_ROUTER = {"stall_timeout_s": 0.5, "connect_timeout_s": 1.0, "health_interval_s": 3600.0,
               "registry_refresh_s": 0.05, "retry_after_s": 7, "grace_period_s": 2.0}
SECRET = "backend-secret"


class LoopThread:
    """An event loop running in a daemon thread; `run` executes a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="servers", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="session")
def servers() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture
def make_backend(servers: LoopThread) -> Iterator[Callable[..., FakeBackend]]:
    """Start fake backends: make_backend(models=[...], chunks=..., failure=...)."""
    started: list[FakeBackend] = []

    def make(**config: Any) -> FakeBackend:
        backend = FakeBackend(FakeConfig(**config))
        servers.run(backend.start())
        started.append(backend)
        return backend

    yield make
    for backend in started:
        servers.run(backend.stop())


@dataclass
class Registry:
    """A temporary registry with helpers that go through the launcher's own functions."""

    url: str
    engine: Engine

    def add_key(self, name: str, *, models: list[str] | None = None, expires_at: datetime | None = None,
                limits: KeyLimits | None = None) -> str:
        with session_factory(self.engine)() as session:
            key, _ = create_key(session, name, limits=limits or KeyLimits(), models=models, expires_at=expires_at)
        return key

    def add_backend(self, model: str, url: str, *, kind: str = "chat", secret: str | None = SECRET) -> DeploymentRecord:
        with session_factory(self.engine)() as session:
            return add_backend(session, model, url, kind=kind, secret=secret)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = open_engine(url)
    yield Registry(url, engine)
    engine.dispose()


@dataclass
class RouterHandle:
    """A running router: its app, port and URLs."""

    app: web.Application
    runner: web.AppRunner
    port: int
    settings: Settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


@pytest.fixture
def start_router(servers: LoopThread, registry: Registry) -> Iterator[Callable[..., RouterHandle]]:
    """Start routers on the registry: start_router(settings, accounting=None, grace_s=None).

    grace_s None: the settings' grace period. Every router started stops when the test ends.
    """
    handles: list[RouterHandle] = []

    def start_one(settings: Settings, accounting: Any = None, grace_s: float | None = None) -> RouterHandle:
        grace = settings.router.grace_period_s if grace_s is None else grace_s

        async def boot() -> RouterHandle:
            app = create_app(settings, registry.engine, accounting)
            runner, port = await start(app, "127.0.0.1", 0, grace)
            return RouterHandle(app, runner, port, settings)

        handles.append(servers.run(boot()))
        return handles[-1]

    yield start_one
    for handle in handles:
        servers.run(handle.runner.cleanup())


@pytest.fixture
def make_router(start_router: Callable[..., RouterHandle], registry: Registry) -> Callable[..., RouterHandle]:
    """Start routers with the test settings: make_router(stall_timeout_s=..., accounting=...)."""

    def make(accounting: Any = None, **overrides: Any) -> RouterHandle:
        router_settings = dataclasses.replace(RouterSettings(), **{**TEST_ROUTER, **overrides})
        return start_router(Settings(database=registry.url, router=router_settings), accounting)

    return make


@dataclass
class Stack:
    """Two chat replicas, an embeddings and a whisper backend, a key for all, a router in front."""

    router: RouterHandle
    key: str
    chat: list[FakeBackend]
    embed: FakeBackend
    whisper: FakeBackend
    registry: Registry
    extra: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def stack(make_backend: Callable[..., FakeBackend], make_router: Callable[..., RouterHandle],
          registry: Registry) -> Stack:
    chat = [make_backend(models=["fake-chat"], secret=SECRET) for _ in range(2)]
    embed = make_backend(models=["fake-embed"], secret=SECRET, embedding_dim=4096)
    whisper = make_backend(models=["fake-whisper"], secret=SECRET)
    for backend in chat:
        registry.add_backend("fake-chat", backend.url)
    registry.add_backend("fake-embed", embed.url, kind="embeddings")
    registry.add_backend("fake-whisper", whisper.url, kind="transcription")
    key = registry.add_key("alice")
    return Stack(make_router(), key, chat, embed, whisper, registry)
