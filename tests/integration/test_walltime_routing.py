"""Routing near job ends, maintenance windows and start on demand: the real router on fake backends.

Job end times are written into the registry as the supervisor would; no Slurm is needed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
import openai
import pytest
from sqlalchemy import update

from launcher.core.db import session_factory, utcnow
from launcher.core.schema import Deployment, ModelTarget
from launcher.core.settings import ClusterSettings, RouterSettings, Settings
from tests.conftest import SECRET, TEST_ROUTER, Registry, RouterHandle
from tests.fake_backend import FakeBackend

CATALOG = """
[models.fake]
engine = "command"
weights = "none"
command = ["true"]

[models.lazy]
engine = "command"
weights = "none"
command = ["true"]
on_demand = true
"""


@pytest.fixture
def boot(start_router: Callable[..., RouterHandle], registry: Registry, tmp_path: Path) -> Callable[..., RouterHandle]:
    """Start a router with the test catalog and cluster settings OVERRIDES."""
    (tmp_path / "catalog.toml").write_text(CATALOG)

    def make(router: dict[str, Any] | None = None, **cluster: Any) -> RouterHandle:
        settings = Settings(
            database=registry.url,
            router=dataclasses.replace(RouterSettings(), **{**TEST_ROUTER, "accounting": False, **(router or {})}),
            cluster=dataclasses.replace(ClusterSettings(), catalog=str(tmp_path / "catalog.toml"), **cluster),
        )
        return start_router(settings, grace_s=1.0)

    return make


def ends_in(registry: Registry, deployment_id: int, seconds: float) -> None:
    """What the supervisor writes after each squeue: the job's end time."""
    with session_factory(registry.engine)() as session:
        now = utcnow()
        session.execute(update(Deployment).where(Deployment.id == deployment_id)
                        .values(end_time=now + timedelta(seconds=seconds), updated_at=now))
        session.commit()


def ask(router: RouterHandle, key: str, max_tokens: int = 4000, model: str = "fake") -> str:
    client = openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0)
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=max_tokens)
    return answer.choices[0].message.content or ""


def served(backends: list[FakeBackend]) -> list[int]:
    return [len(b.received) for b in backends]


def test_a_request_goes_to_the_replica_with_time_left(
    boot: Callable[..., RouterHandle], registry: Registry, make_backend: Callable[..., FakeBackend],
) -> None:
    ending, fresh = make_backend(models=["fake"], secret=SECRET), make_backend(models=["fake"], secret=SECRET)
    rows = [registry.add_backend("fake", b.url) for b in (ending, fresh)]
    ends_in(registry, rows[0].id, 120)  # less than the 600 s a request may take
    ends_in(registry, rows[1].id, 3000)
    key = registry.add_key("alice")  # before the router starts: it reads keys at its refreshes
    router = boot(drain_threshold_s=30, max_request_duration_s=600)
    for _ in range(4):  # long answers: even at the fake's measured speed, longer than 120 s
        assert ask(router, key, max_tokens=1_000_000)
    assert served([ending, fresh]) == [0, 4]
    ends_in(registry, rows[1].id, 20)  # under the drain threshold: no new request at all
    time.sleep(0.3)
    assert ask(router, key, max_tokens=1_000_000) and served([ending, fresh]) == [1, 4]  # short of time, but the only one


def test_short_requests_still_use_a_replica_near_its_end(
    boot: Callable[..., RouterHandle], registry: Registry, make_backend: Callable[..., FakeBackend],
) -> None:
    """Once the decode rate is known, a request that fits in the time left may go there."""
    ending, fresh = (make_backend(models=["fake"], secret=SECRET, chunks=5) for _ in range(2))
    rows = [registry.add_backend("fake", b.url) for b in (ending, fresh)]
    ends_in(registry, rows[0].id, 120)
    ends_in(registry, rows[1].id, 3000)
    key = registry.add_key("alice")  # before the router starts: it reads keys at its refreshes
    router = boot(drain_threshold_s=30, max_request_duration_s=600)
    for _ in range(6):
        ask(router, key, max_tokens=5)
    assert served([ending, fresh])[0] > 0  # 5 tokens at the measured rate take well under 120 s


def test_replicas_all_past_the_drain_threshold_give_a_clear_503(
    boot: Callable[..., RouterHandle], registry: Registry, make_backend: Callable[..., FakeBackend],
) -> None:
    backend = make_backend(models=["fake"], secret=SECRET)
    ends_in(registry, registry.add_backend("fake", backend.url).id, 10)
    key = registry.add_key("alice")
    router = boot(drain_threshold_s=30)
    with pytest.raises(openai.InternalServerError) as caught:
        ask(router, key)
    assert caught.value.status_code == 503 and "time limit" in caught.value.message
    assert caught.value.response.headers["Retry-After"] == "7"


def test_maintenance_window_503_and_models_list_name_its_end(
    boot: Callable[..., RouterHandle], registry: Registry,
) -> None:
    now = utcnow()
    start, end = now - timedelta(minutes=5), (now + timedelta(minutes=30)).replace(microsecond=0)
    key = registry.add_key("alice")
    router = boot(maintenance_windows=(f"{start:%Y-%m-%dT%H:%M:%S}Z/{end:%Y-%m-%dT%H:%M:%S}Z",))
    with pytest.raises(openai.InternalServerError) as caught:
        ask(router, key)
    until = f"{end:%Y-%m-%dT%H:%M:%S}Z"
    assert caught.value.status_code == 503 and until in caught.value.message
    assert 1700 < int(caught.value.response.headers["Retry-After"]) <= 1800
    listed = requests.get(router.base_url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=5).json()["data"]
    assert {m["id"]: m["maintenance"]["end"] for m in listed} == {"fake": until, "lazy": until}
    assert all(m["maintenance"]["active"] for m in listed)


def test_first_request_starts_an_on_demand_model_and_waits_for_it(
    boot: Callable[..., RouterHandle], registry: Registry, make_backend: Callable[..., FakeBackend],
) -> None:
    key = registry.add_key("alice")
    router = boot(router={"on_demand_wait_s": 20.0})
    backend = make_backend(models=["lazy"], secret=SECRET)
    answers: list[str] = []
    waiting = threading.Thread(target=lambda: answers.append(ask(router, key, model="lazy")))
    waiting.start()

    def wanted() -> int:
        with session_factory(registry.engine)() as session:
            target = session.get(ModelTarget, "lazy")
            return target.desired_replicas if target else 0

    deadline = time.monotonic() + 10
    while wanted() != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert wanted() == 1  # the supervisor takes it from here; the test plays the job's registration
    registry.add_backend("lazy", backend.url)
    waiting.join(20)
    assert answers and answers[0].startswith("tok0")


def test_on_demand_wait_is_bounded_and_ends_in_503_with_retry_after(
    boot: Callable[..., RouterHandle], registry: Registry,
) -> None:
    key = registry.add_key("alice")
    router = boot(router={"on_demand_wait_s": 0.5})
    with pytest.raises(openai.InternalServerError) as caught:
        ask(router, key, model="lazy")
    assert caught.value.status_code == 503 and caught.value.response.headers["Retry-After"] == "7"


def test_metrics_show_time_left_and_a_late_successor_with_slurms_reason(
    boot: Callable[..., RouterHandle], registry: Registry, make_backend: Callable[..., FakeBackend],
) -> None:
    old = registry.add_backend("fake", make_backend(models=["fake"], secret=SECRET).url)
    ends_in(registry, old.id, 100)
    with session_factory(registry.engine)() as session:
        now = utcnow()
        session.add(Deployment(model="fake", state="pending", job_id="77", reason="Resources", predecessor_id=old.id,
                               created_at=now, updated_at=now))
        session.commit()
    router = boot(router={"admin_token": "admin"}, successor_late_s=300)
    text = requests.get(router.url + "/metrics", headers={"Authorization": "Bearer admin"}, timeout=5).text
    assert f'llm_router_successor_late{{deployment="{old.id + 1}",model="fake",reason="Resources",state="pending"}} 1.0' in text
    left = next(line for line in text.splitlines() if line.startswith("llm_router_backend_seconds_left{"))
    assert f'backend="{old.id}"' in left and 90 < float(left.split()[-1]) <= 100


def test_metrics_count_a_successor_still_queued_after_its_predecessor_ended(
    boot: Callable[..., RouterHandle], registry: Registry, make_backend: Callable[..., FakeBackend],
) -> None:
    old = registry.add_backend("fake", make_backend(models=["fake"], secret=SECRET).url)
    with session_factory(registry.engine)() as session:
        now = utcnow()
        gone = session.get(Deployment, old.id)
        assert gone is not None
        gone.state, gone.gone_at = "gone", now
        session.add(Deployment(model="fake", state="pending", job_id="78", reason="Priority", predecessor_id=old.id,
                               created_at=now, updated_at=now))
        session.commit()
    router = boot(router={"admin_token": "admin"})
    text = requests.get(router.url + "/metrics", headers={"Authorization": "Bearer admin"}, timeout=5).text
    assert f'llm_router_successor_late{{deployment="{old.id + 1}",model="fake",reason="Priority",state="pending"}} 1.0' in text
