"""Servers users start in their own jobs, on the real router over a socket with real fake backends:
the router checks a server before recording it, a job registers one row, a URL another job holds
is refused, deregistration names the deployment, a server that rejects the router's secret is a
502 and leaves the rotation, and a job-less server that stays down is removed."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from launcher.cli import main
from launcher.core.db import session_factory, utcnow
from launcher.core.keys import hash_key
from launcher.core.schema import Deployment, RegistrationToken
from tests.conftest import Registry, RouterHandle
from tests.fake_backend import FakeBackend
from tests.integration.test_registration import TOKEN as JOB_TOKEN
from tests.integration.test_registration import post, row_count, submitted_job
from tests.waiting import wait_for

TOKEN = "rt-users-token"
MODEL = "mine"


@pytest.fixture
def granted(registry: Registry) -> None:
    with session_factory(registry.engine)() as session:
        session.add(RegistrationToken(token_hash=hash_key(TOKEN), model=MODEL, created_at=utcnow(),
                                      expires_at=utcnow() + timedelta(days=1)))
        session.commit()


def rows(registry: Registry) -> list[tuple[int, str | None, str, str | None]]:
    with session_factory(registry.engine)() as session:
        return [(r.id, r.job_id, r.state, r.owner) for r in session.scalars(select(Deployment).order_by(Deployment.id))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(registry: Registry, *args: str, env: dict[str, str]) -> Any:
    return CliRunner().invoke(main, ["--db", registry.url, *args], env=env, catch_exceptions=False)


def test_a_job_registers_one_row_and_another_job_cannot_take_its_url(
    registry: Registry, granted: None, make_router: Callable[..., RouterHandle],
    make_backend: Callable[..., FakeBackend],
) -> None:
    router, server = make_router(), make_backend(models=[MODEL], secret="s1")
    claim = {"token": TOKEN, "model": MODEL, "url": server.url, "secret": "s1", "job_id": "7", "owner": "bob"}
    first, again = post(router, "register", claim), post(router, "register", claim)
    assert first.status_code == again.status_code == 200, again.text
    assert first.json()["deployment_id"] == again.json()["deployment_id"]
    taken = post(router, "register", {**claim, "job_id": "8", "secret": "s2"})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "url_in_use"
    assert "job 7" in taken.json()["error"]["message"]
    by_url = post(router, "deregister", {"token": TOKEN, "url": server.url})
    assert by_url.status_code == 400 and "deployment_id" in by_url.json()["error"]["message"]
    assert rows(registry) == [(first.json()["deployment_id"], "7", "ready", "bob")]
    done = post(router, "deregister", {"token": TOKEN, "deployment_id": first.json()["deployment_id"]})
    assert done.status_code == 200 and rows(registry)[0][2] == "gone"  # a user's job has nothing to drain


@pytest.mark.parametrize(("config", "claim", "code", "words"), [
    ({"models": [MODEL], "secret": "right"}, {"secret": "wrong"}, "server_rejects_secret", "answered 401"),
    ({"models": ["other"], "secret": "s"}, {"secret": "s"}, "server_not_ready", "does not list 'mine'"),
])
def test_the_router_checks_the_server_before_recording_it(
    registry: Registry, granted: None, make_router: Callable[..., RouterHandle],
    make_backend: Callable[..., FakeBackend], config: dict[str, Any], claim: dict[str, str], code: str, words: str,
) -> None:
    router, server = make_router(), make_backend(**config)
    answer = post(router, "register", {"token": TOKEN, "model": MODEL, "url": server.url, **claim})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == code, answer.text
    assert words in answer.json()["error"]["message"] and "\n" not in answer.json()["error"]["message"]
    assert row_count(registry) == 0


def test_register_refuses_a_dead_url_and_a_server_without_a_secret(
    registry: Registry, granted: None, make_router: Callable[..., RouterHandle],
) -> None:
    router = make_router()
    url = f"http://127.0.0.1:{free_port()}"
    env = {"LLM_LAUNCH_REGISTRATION_TOKEN": TOKEN, "LLM_LAUNCH_BACKEND_SECRET": "s"}
    dead = cli(registry, "register", "--model", MODEL, "--url", url, "--router", router.url, env=env)
    assert dead.exit_code == 1 and f"the router cannot reach {url}/v1/models" in dead.output, dead.output
    assert len(dead.output.strip().splitlines()) == 1
    open_server = cli(registry, "register", "--model", MODEL, "--url", url, "--router", router.url,
                      env={**env, "LLM_LAUNCH_BACKEND_SECRET": ""})
    assert open_server.exit_code == 1 and "--no-secret" in open_server.output
    assert "without a key" in open_server.output and len(open_server.output.strip().splitlines()) == 1
    no_token = cli(registry, "register", "--model", MODEL, "--url", url, "--router", router.url,
                   env={"LLM_LAUNCH_REGISTRATION_TOKEN": ""})
    assert no_token.exit_code == 1 and "LLM_LAUNCH_REGISTRATION_TOKEN" in no_token.output
    assert row_count(registry) == 0


def test_a_backend_that_rejects_the_routers_secret_is_a_502_and_leaves_the_rotation(
    registry: Registry, granted: None, make_router: Callable[..., RouterHandle],
    make_backend: Callable[..., FakeBackend],
) -> None:
    key = registry.add_key("alice")  # before the router starts: its first snapshot has it
    router, server = make_router(), make_backend(models=[MODEL], secret="s1")
    claim = {"token": TOKEN, "model": MODEL, "url": server.url, "secret": "s1", "job_id": "7", "owner": "bob"}
    assert post(router, "register", claim).status_code == 200
    client = openai.OpenAI(base_url=router.base_url, api_key=key, max_retries=0)
    server.config.secret = "rotated"  # the user restarted the server with another secret
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    assert "rejected the service's credentials" in caught.value.message
    with pytest.raises(openai.APIStatusError) as offline:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert offline.value.status_code == 503  # out of rotation: not sent to it again
    assert "bob's job 7" in offline.value.message and "administrators to start it" not in offline.value.message


@pytest.mark.parametrize("job", [{}, {"job_id": "99"}], ids=["no job", "a job Slurm never showed"])
def test_a_server_no_job_backs_is_removed_once_down_long_enough(
    registry: Registry, granted: None, make_router: Callable[..., RouterHandle],
    make_backend: Callable[..., FakeBackend], servers: Any, job: dict[str, str],
) -> None:
    router = make_router(health_interval_s=0.2, health_timeout_s=0.5, unbacked_down_s=0.5)
    server = make_backend(models=[MODEL], secret="s1")
    claim = {"token": TOKEN, "model": MODEL, "url": server.url, "secret": "s1", "owner": "bob", **job}
    assert post(router, "register", claim).status_code == 200
    servers.run(server.stop())
    wait_for(lambda: rows(registry)[0][2] == "gone", 10, "the dead job-less server removed")
    with session_factory(registry.engine)() as session:
        reason = session.scalars(select(Deployment.reason)).one()
    assert reason is not None and "no Slurm job backs it" in reason


def test_status_and_backends_list_show_the_job_and_owner_and_agree_on_health(
    registry: Registry, granted: None, make_router: Callable[..., RouterHandle],
    make_backend: Callable[..., FakeBackend], servers: Any, tmp_path: Any,
) -> None:
    router = make_router(health_interval_s=0.2, health_timeout_s=0.5, admin_token="adm")
    server = make_backend(models=[MODEL], secret="s1")
    claim = {"token": TOKEN, "model": MODEL, "url": server.url, "secret": "s1", "job_id": "4242", "owner": "bob"}
    assert post(router, "register", claim).status_code == 200
    servers.run(server.stop())
    config = tmp_path / "settings.toml"
    config.write_text('[router]\nadmin_token = "adm"\n')
    env = {"LLM_LAUNCH_CONFIG": str(config), "LLM_LAUNCH_ROUTER_URL": router.url}

    def health() -> tuple[str, str] | None:
        status = json.loads(cli(registry, "status", "--json", env=env).output)["deployments"][0]
        listed = json.loads(cli(registry, "backends", "list", "--json", env=env).output)[0]
        pair = (status["health"], listed["health"])
        return pair if pair[0] == "down" else None
    assert wait_for(health, 10, "health down in status") == ("down", "down")
    table = cli(registry, "status", env=env).output
    assert "OWNER" in table and "4242" in table and "bob" in table
    listed = cli(registry, "backends", "list", env=env).output
    assert "HEALTH" in listed and "down" in listed and "bob" in listed


def test_expiry_times_print_to_the_second(registry: Registry) -> None:
    made = cli(registry, "tokens", "create", "--model", MODEL, "--expires", "2031-01-02T03:04:05", env={})
    assert made.exit_code == 0 and "expires 2031-01-02 03:04:05 UTC" in made.output, made.output
    assert "2031-01-02 03:04:05" in cli(registry, "tokens", "list", env={}).output


def test_a_url_a_draining_launcher_job_still_serves_is_refused(
    registry: Registry, granted: None, make_router: Callable[..., RouterHandle],
    make_backend: Callable[..., FakeBackend],
) -> None:
    router, server = make_router(), make_backend(models=[MODEL], secret="s1")
    submitted_job(registry)
    job_claim = {"token": JOB_TOKEN, "job_id": "4242", "url": server.url}
    assert post(router, "register", job_claim).status_code == 200
    assert post(router, "deregister", job_claim).json()["state"] == "draining"  # its server still answers
    taken = post(router, "register", {"token": TOKEN, "model": MODEL, "url": server.url, "secret": "s1"})
    assert taken.status_code == 409 and "job 4242" in taken.json()["error"]["message"]
