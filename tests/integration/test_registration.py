"""Registration on the real router over a socket, real SQLite, real openai SDK through the router.

A job proves itself with its per-job token; a user's own server with an admin-issued token.
Whatever is refused leaves the registry as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import openai
import pytest
import requests
from click.testing import CliRunner
from sqlalchemy import func, select

from launcher.cli import main
from launcher.core.db import session_factory, utcnow
from launcher.core.keys import hash_key
from launcher.core.schema import Deployment, RegistrationToken
from tests.conftest import SECRET, Registry, RouterHandle
from tests.fake_backend import FakeBackend

TOKEN = "per-job-token"


def submitted_job(registry: Registry, job_id: str = "4242", model: str = "fake-chat") -> int:
    """A row as `llm-launch up` leaves it: pending, secret stored, only the token's hash kept."""
    now = utcnow()
    row = Deployment(model=model, kind="chat", engine="vllm", state="pending", job_id=job_id,
                     secret=SECRET, registration_token_hash=hash_key(TOKEN), submitted_at=now,
                     created_at=now, updated_at=now)
    with session_factory(registry.engine)() as session:
        session.add(row)
        session.commit()
        return row.id


def row_of(registry: Registry, deployment_id: int) -> Deployment:
    with session_factory(registry.engine)() as session:
        row = session.get(Deployment, deployment_id)
        assert row is not None
        return row


def row_count(registry: Registry) -> int:
    with session_factory(registry.engine)() as session:
        return int(session.scalar(select(func.count()).select_from(Deployment)) or 0)


def post(router: RouterHandle, path: str, body: Any) -> requests.Response:
    return requests.post(f"{router.url}/internal/{path}", json=body, timeout=10)


def chat(router: RouterHandle, key: str, model: str = "fake-chat") -> str:
    client = openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0)
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content or ""


@pytest.fixture
def router(make_router: Callable[..., RouterHandle]) -> RouterHandle:
    return make_router()


def test_job_registers_with_its_token_and_then_receives_traffic(
    registry: Registry, router: RouterHandle, make_backend: Callable[..., FakeBackend],
) -> None:
    backend = make_backend(models=["fake-chat"], secret=SECRET)
    key = registry.add_key("alice")
    deployment_id = submitted_job(registry)
    answer = post(router, "register", {"job_id": "4242", "url": backend.url, "node": "gpu7", "token": TOKEN})
    assert answer.status_code == 200, answer.text
    row = row_of(registry, deployment_id)
    assert (row.state, row.url, row.node) == ("ready", backend.url, "gpu7")
    assert chat(router, key)
    assert backend.received and backend.received[-1].headers["Authorization"] == f"Bearer {SECRET}"


@pytest.mark.parametrize("token", ["wrong-token", "", TOKEN + "x"])
def test_wrong_token_is_rejected_and_nothing_is_recorded(
    registry: Registry, router: RouterHandle, token: str,
) -> None:
    deployment_id = submitted_job(registry)
    answer = post(router, "register", {"job_id": "4242", "url": "http://evil:1", "token": token})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_token"
    row = row_of(registry, deployment_id)
    assert (row.state, row.url) == ("pending", None)


def test_token_of_another_job_or_unknown_job_is_rejected(registry: Registry, router: RouterHandle) -> None:
    submitted_job(registry, job_id="1")
    assert post(router, "register", {"job_id": "2", "url": "http://a:1", "token": TOKEN}).status_code == 401
    assert post(router, "register", {"deployment_id": 999, "url": "http://a:1", "token": TOKEN}).status_code == 401


def test_a_spent_token_cannot_register_again(registry: Registry, router: RouterHandle) -> None:
    deployment_id = submitted_job(registry)
    claim = {"job_id": "4242", "url": "http://gpu7:20001", "token": TOKEN}
    assert post(router, "register", claim).status_code == 200
    moved = post(router, "register", {**claim, "url": "http://elsewhere:1"})
    assert moved.status_code == 403
    assert post(router, "deregister", {**claim, "reason": "job ending"}).status_code == 200
    assert row_of(registry, deployment_id).state == "draining"  # the supervisor ends it as gone
    again = post(router, "register", claim)
    assert again.status_code == 403 and again.json()["error"]["code"] == "token_used"
    row = row_of(registry, deployment_id)
    assert (row.state, row.url, row.reason) == ("draining", "http://gpu7:20001", "job ending")


def test_deregistration_needs_the_token_too(registry: Registry, router: RouterHandle) -> None:
    deployment_id = submitted_job(registry)
    claim = {"job_id": "4242", "url": "http://gpu7:20001", "token": TOKEN}
    assert post(router, "register", claim).status_code == 200
    assert post(router, "deregister", {**claim, "token": "guess"}).status_code == 401
    assert row_of(registry, deployment_id).state == "ready"


@pytest.mark.parametrize(("body", "status"), [
    ("not json", 400), ({"url": "http://a:1"}, 401), ({"token": TOKEN, "job_id": "4242", "url": "ftp://a"}, 400),
    ({"token": TOKEN, "deployment_id": "x1", "url": "http://a:1"}, 400),
])
def test_malformed_registrations_get_the_error_envelope(
    registry: Registry, router: RouterHandle, body: Any, status: int,
) -> None:
    submitted_job(registry)
    if isinstance(body, str):
        answer = requests.post(f"{router.url}/internal/register", data=body, timeout=10)
    else:
        answer = post(router, "register", body)
    assert answer.status_code == status
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    assert row_of(registry, 1).state == "pending"


def cli(registry: Registry, *args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["--db", registry.url, *args], env=env, catch_exceptions=False)


def test_user_registers_own_server_with_admin_token_via_cli(
    registry: Registry, router: RouterHandle, make_backend: Callable[..., FakeBackend],
) -> None:
    backend = make_backend(models=["my-model"], secret="users-own-secret")
    key = registry.add_key("bob")
    made = cli(registry, "tokens", "create", "--model", "my-model")
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[0]
    env = {"LLM_LAUNCH_REGISTRATION_TOKEN": token, "LLM_LAUNCH_BACKEND_SECRET": "users-own-secret"}
    done = cli(registry, "register", "--model", "my-model", "--url", backend.url, "--router", router.url, env=env)
    assert done.exit_code == 0, done.output
    assert "registered my-model" in done.output
    deployment = done.stdout.strip()  # stdout is the id alone, for `deployment=$(llm-launch register ...)`
    assert deployment.isdigit(), done.stdout
    assert chat(router, key, model="my-model")
    gone = cli(registry, "register", "--router", router.url, "--deregister", deployment, env=env)
    assert gone.exit_code == 0, gone.output
    with session_factory(registry.engine)() as session:
        states = [r.state for r in session.scalars(select(Deployment))]
    assert states == ["gone"]


def test_admin_token_limits_are_enforced_and_nothing_is_recorded(
    registry: Registry, router: RouterHandle,
) -> None:
    now = utcnow()
    with session_factory(registry.engine)() as session:
        session.add(RegistrationToken(token_hash=hash_key("only-m"), model="m", created_at=now))
        session.add(RegistrationToken(token_hash=hash_key("old"), expires_at=now - timedelta(days=1), created_at=now))
        session.commit()
    cases = [("only-m", "other", 403), ("old", "m", 403), ("never-issued", "m", 401)]
    for token, model, status in cases:
        env = {"LLM_LAUNCH_REGISTRATION_TOKEN": token}
        done = cli(registry, "register", "--model", model, "--url", "http://x:1", "--router", router.url,
                   "--no-secret", env=env)
        assert done.exit_code == 1 and f"router refused ({status})" in done.output, done.output
    assert row_count(registry) == 0


def test_register_reports_an_unreachable_router(registry: Registry) -> None:
    env = {"LLM_LAUNCH_REGISTRATION_TOKEN": "t"}
    done = cli(registry, "register", "--model", "m", "--url", "http://x:1", "--router", "http://127.0.0.1:9",
               "--no-secret", env=env)
    assert done.exit_code == 1 and "router not reachable at http://127.0.0.1:9" in done.output
    assert "Traceback" not in done.output
