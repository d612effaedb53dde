"""Registration hygiene on the real router and through the CLI: URLs are checked (no CR/LF, no
router address), the same registration twice is one row, tokens are model-scoped unless asked."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from launcher.cli import main
from launcher.core.db import session_factory, utcnow
from launcher.core.keys import hash_key
from launcher.core.schema import Deployment, RegistrationToken
from tests.conftest import Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.integration.test_registration import TOKEN, post, row_count, row_of, submitted_job

ADMIN_TOKEN = "rt-admin-issued"
BAD_URLS = ["http://gpu7:20001/\r\nX-Injected: yes", "http://gpu7:20001\nFORGED line", "http://gpu 7:20001",
            "http://gpu7:20001\x00", "http://:20001", "http://gpu7:99999", "http://u:p@gpu7:20001"]


@pytest.fixture
def router(make_router: Callable[..., RouterHandle], registry: Registry) -> RouterHandle:
    with session_factory(registry.engine)() as session:
        session.add(RegistrationToken(token_hash=hash_key(ADMIN_TOKEN), model="mine", created_at=utcnow(),
                                      expires_at=utcnow() + timedelta(days=1)))
        session.commit()
    return make_router()


def cli(registry: Registry, *args: str, config: Path | None = None) -> Any:
    env = {"LLM_LAUNCH_CONFIG": str(config)} if config else {}
    return CliRunner().invoke(main, ["--db", registry.url, *args], env=env, catch_exceptions=False)


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_url_with_control_characters_or_no_usable_host_is_refused_everywhere(
    registry: Registry, router: RouterHandle, url: str,
) -> None:
    job = submitted_job(registry)
    for claim in ({"token": TOKEN, "job_id": "4242", "url": url}, {"token": ADMIN_TOKEN, "model": "mine", "url": url}):
        answer = post(router, "register", claim)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_url"
        assert "\n" not in answer.json()["error"]["message"] and "\r" not in answer.json()["error"]["message"]
    assert row_count(registry) == 1 and row_of(registry, job).url is None
    added = cli(registry, "backends", "add", "mine", url)
    assert added.exit_code == 1 and "URL" in added.output and len(added.output.strip().splitlines()) == 1
    assert row_count(registry) == 1


def test_the_routers_own_address_is_refused_by_registration(registry: Registry, router: RouterHandle) -> None:
    job = submitted_job(registry)
    port = router.port
    for url in (router.url, f"http://localhost:{port}", f"http://[::1]:{port}/", f"http://0.0.0.0:{port}"):
        for claim in ({"token": TOKEN, "job_id": "4242", "url": url}, {"token": ADMIN_TOKEN, "model": "mine", "url": url}):
            answer = post(router, "register", claim)
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["code"] == "router_address" and "the router's own address" in error["message"]
    assert row_count(registry) == 1 and row_of(registry, job).state == "pending"


def test_a_router_listening_everywhere_refuses_its_host_name(
    registry: Registry, make_router: Callable[..., RouterHandle],
) -> None:
    router = make_router(host="0.0.0.0", port=18123)  # as configured; the test binds loopback
    job = submitted_job(registry)
    for url in (f"http://{socket.gethostname()}:18123", "http://127.0.0.1:18123"):
        answer = post(router, "register", {"token": TOKEN, "job_id": "4242", "url": url})
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "router_address", answer.text
    assert post(router, "register", {"token": TOKEN, "job_id": "4242", "url": "http://gpu7:18123"}).status_code == 200
    assert row_of(registry, job).url == "http://gpu7:18123"


def test_backends_add_refuses_the_routers_address_from_the_settings(registry: Registry, tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text('[router]\nhost = "0.0.0.0"\nport = 8123\n\n[cluster]\nrouter_url = "http://router.internal:8123"\n')
    for url in ("http://127.0.0.1:8123", "http://localhost:8123/", f"http://{socket.gethostname()}:8123",
                "http://router.internal:8123"):
        added = cli(registry, "backends", "add", "mine", url, config=config)
        assert added.exit_code == 1 and "the router's own address" in added.output, added.output
        assert len(added.output.strip().splitlines()) == 1
    assert row_count(registry) == 0
    assert cli(registry, "backends", "add", "mine", "http://127.0.0.1:8124", config=config).exit_code == 0


def test_the_same_registration_twice_is_one_row(
    registry: Registry, router: RouterHandle, make_backend: Callable[..., FakeBackend],
) -> None:
    server, second = make_backend(models=["mine"]), make_backend(models=["mine"])
    claim = {"token": ADMIN_TOKEN, "model": "mine", "url": server.url, "secret": "s1"}
    first = post(router, "register", claim)
    again = post(router, "register", {**claim, "url": server.url + "/", "secret": "s2"})  # restarted server
    assert first.status_code == again.status_code == 200, again.text
    assert first.json()["deployment_id"] == again.json()["deployment_id"]
    with session_factory(registry.engine)() as session:
        rows = list(session.scalars(select(Deployment)))
    assert [(r.url, r.secret, r.state) for r in rows] == [(server.url, "s2", "ready")]
    other = post(router, "register", {**claim, "url": second.url})  # another server, same token
    assert other.status_code == 200 and other.json()["deployment_id"] != first.json()["deployment_id"]
    assert post(router, "deregister", {**claim, "deployment_id": first.json()["deployment_id"]}).status_code == 200
    back = post(router, "register", claim)  # after deregistering, it comes back as a new row
    assert back.status_code == 200 and back.json()["deployment_id"] not in (first.json()["deployment_id"],)


def test_a_jobs_registration_twice_answers_the_same_deployment(registry: Registry, router: RouterHandle) -> None:
    job = submitted_job(registry)
    claim = {"token": TOKEN, "job_id": "4242", "url": "http://gpu7:20001"}
    answers = [post(router, "register", claim) for _ in range(2)]
    assert [a.json()["deployment_id"] for a in answers] == [job, job]
    assert row_count(registry) == 1


def test_tokens_are_model_scoped_unless_any_model_is_asked_for(registry: Registry) -> None:
    bare = cli(registry, "tokens", "create")
    assert bare.exit_code != 0 and "--model NAME" in bare.output and "--any-model" in bare.output
    both = cli(registry, "tokens", "create", "--model", "m", "--any-model")
    assert both.exit_code != 0 and "not both" in both.output
    scoped = cli(registry, "tokens", "create", "--model", "m")
    assert scoped.exit_code == 0 and "model m" in scoped.output
    wide = cli(registry, "tokens", "create", "--any-model")
    assert wide.exit_code == 0 and "any model" in wide.output
    with session_factory(registry.engine)() as session:
        assert [r.model for r in session.scalars(select(RegistrationToken))] == ["m", None]
