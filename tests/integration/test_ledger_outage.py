"""PostgreSQL stopped and restarted under load: the router keeps serving from its last registry
snapshot, the usage waits (in memory, then in the spill file) and is written once when the
database returns, also through a router restart during the outage; the ledger's totals equal what
the backend reported, no row lost or doubled."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from sqlalchemy import func, select

from launcher.core.db import open_engine
from launcher.core.schema import UsageDaily
from router.accounting.ledger import Ledger
from router.accounting.metered import LimitsAccounting
from router.state import STATE
from tests.conftest import SECRET, LoopThread, Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.shared_services import PrivatePostgres

KEYS = ("alice", "bob", "carol")
ADMIN = "admin-token"


@pytest.fixture
def registry(private_pg: PrivatePostgres) -> Iterator[Registry]:
    engine = open_engine(private_pg.url)
    yield Registry(private_pg.url, engine)
    engine.dispose()


class Load:
    """Threads sending chat completions with the real SDK until stopped; what each one got."""

    def __init__(self, base_url: str, keys: list[str], threads: int = 3) -> None:
        self.clients = [openai.OpenAI(base_url=base_url, api_key=k, max_retries=0, timeout=10) for k in keys]
        self.served: list[tuple[int, int]] = []  # (prompt, completion) tokens of each answer
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            client = self.clients[(index + n) % len(self.clients)]
            n += 1
            self.one(client, f"hello number {n} from thread {index}")

    def one(self, client: openai.OpenAI, text: str) -> None:
        try:
            answer = client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": text}])
        except openai.OpenAIError as exc:
            self.failed.append(repr(exc))
            return
        assert answer.usage is not None
        self.served.append((answer.usage.prompt_tokens, answer.usage.completion_tokens))


def ledger_of(router: RouterHandle) -> Ledger:
    accounting = router.app[STATE].accounting
    assert isinstance(accounting, LimitsAccounting)
    return accounting.ledger


def metrics(router: RouterHandle) -> dict[str, float]:
    """The router's /metrics samples without a label, or with one as name{label="value"}."""
    text = requests.get(router.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=5).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def wait_for(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_an_outage_under_load_loses_no_request_and_no_usage_row_and_doubles_none(
    registry: Registry, private_pg: PrivatePostgres, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle], servers: LoopThread, tmp_path: Path,
) -> None:
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    keys = [registry.add_key(name) for name in KEYS]
    options: dict[str, Any] = {"ledger_flush_s": 0.1, "ledger_max_rows": 4,
                               "ledger_spill_dir": str(tmp_path / "spill"), "admin_token": ADMIN}
    router = make_router(**options)
    with Load(router.base_url, keys) as load:
        time.sleep(0.5)
        private_pg.stop()
        wait_for(lambda: ledger_of(router).spilled > 0)  # past the bound: in the spill file
        during = metrics(router)
        assert during["llm_router_ledger_spill_file_rows"] > 0
        assert during["llm_router_ledger_spilled_rows_total"] > 0
        assert during['llm_router_database_errors_total{source="ledger"}'] > 0
        served_in_outage = len(load.served)
        time.sleep(1.0)
        assert len(load.served) > served_in_outage  # still serving, from the last snapshot
        private_pg.start()
        time.sleep(1.0)
    assert load.failed == [] and len(load.served) > 20
    wait_for(lambda: (ledger_of(router).pending, ledger_of(router).spilled) == (0, 0))
    after = metrics(router)
    assert (after["llm_router_ledger_pending_rows"], after["llm_router_ledger_spill_file_rows"]) == (0, 0)
    assert after["llm_router_ledger_written_rows_total"] >= after["llm_router_ledger_spilled_rows_total"] > 0

    # A second outage, and the router is stopped during it: its usage waits in the spill file
    # for the next router on the same folder.
    private_pg.stop()
    for client in load.clients:
        load.one(client, "during the second outage")
    servers.run(router.runner.cleanup())
    assert list((tmp_path / "spill").rglob("spill-*.jsonl"))
    private_pg.start()
    servers.run(make_router(**options).runner.cleanup())
    assert not list((tmp_path / "spill").rglob("spill-*.jsonl"))

    with registry.engine.connect() as conn:
        requests, prompt, completion = conn.execute(select(
            func.sum(UsageDaily.requests), func.sum(UsageDaily.prompt_tokens),
            func.sum(UsageDaily.completion_tokens))).one()
    assert load.failed == []
    assert requests == len(load.served)
    assert (prompt, completion) == (sum(p for p, _ in load.served), sum(c for _, c in load.served))
    print(f"\nserved {len(load.served)} requests through two PostgreSQL outages; ledger exact")


def test_shared_mode_three_routers_through_an_outage_serve_everything_and_write_each_row_once(
    registry: Registry, private_pg: PrivatePostgres, redis_url: str, make_backend: Callable[..., FakeBackend],
    make_router: Callable[..., RouterHandle],
) -> None:
    """Shared mode: the limiter is in Redis, so admissions go on while PostgreSQL is down; each
    router keeps its own batches and writes them once when the database returns."""
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    registry.add_backend("fake-chat", backend.url)
    keys = [registry.add_key(name) for name in KEYS]
    three = [make_router(redis_url=redis_url, ledger_flush_s=0.1, admin_token=ADMIN) for _ in range(3)]
    with contextlib.ExitStack() as stack:
        loads = [stack.enter_context(Load(router.base_url, keys, threads=1)) for router in three]
        time.sleep(0.5)
        private_pg.stop()
        served_before = sum(len(load.served) for load in loads)
        time.sleep(2.0)
        assert sum(len(load.served) for load in loads) > served_before  # every router still serving
        private_pg.start()
        time.sleep(1.0)
    served = [answer for load in loads for answer in load.served]
    assert [failure for load in loads for failure in load.failed] == []
    wait_for(lambda: all(metrics(r)["llm_router_ledger_pending_rows"] == 0 for r in three))
    with registry.engine.connect() as conn:
        requests, prompt, completion = conn.execute(select(
            func.sum(UsageDaily.requests), func.sum(UsageDaily.prompt_tokens),
            func.sum(UsageDaily.completion_tokens))).one()
    assert requests == len(served)
    assert (prompt, completion) == (sum(p for p, _ in served), sum(c for _, c in served))
    print(f"\nshared mode: {len(served)} requests over 3 routers through a PostgreSQL outage; ledger exact")
