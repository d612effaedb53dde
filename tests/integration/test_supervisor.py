"""The supervisor against a real local Slurm: jobs die, time out, lose their node, never get ready.

Two kinds of jobs: real ones from the job templates (launcher.deploy) serving the fake backend,
and stand-in scripts without traps (a test plays their registration through the router's own
code). The one 70-second test (TIMEOUT) starts its job first and checks it last, so its wait
overlaps the other tests.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from launcher.core.catalog import Catalog, CatalogEntry, catalog_from_dict
from launcher.core.db import open_engine, session_factory, utcnow
from launcher.core.schema import Deployment, ModelTarget
from launcher.core.deployments import DeploymentRecord, new_secret, to_record
from launcher.core.settings import ClusterSettings, RouterSettings, Settings
from launcher.slurm.client import SlurmClient
from launcher.control.supervisor import Supervisor
from router.api.registration import Claim, register, token_hash
from launcher.control.supervisor_task import supervisor_context
from router.app import create_app
from router.serve import start
from tests.conftest import LoopThread, Registry, RouterHandle
from tests.integration.slurm_fixtures import SCRIPT, SMALL_JOBS, SlurmCluster, slurm_cluster  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.slurm

# Stand-in jobs without the templates' traps: they never register, ignore the drain signal and
# die without deregistering, so only the supervisor can notice what happens to them.
SCRIPTS = {"sleeper": "sleep 600 & wait", "short": "sleep 600 & wait"}
TOKENS: dict[int, str] = {}


def _catalog() -> Catalog:
    models: dict[str, dict[str, Any]] = {
        name: {"engine": "command", "weights": "none", "command": ["true"]} for name in SCRIPTS}
    models["sleeper"]["start_deadline"] = 3
    return catalog_from_dict({"models": models}, "test-catalog.toml", {})


def _submit(session: Session, slurm: SlurmClient, entry: CatalogEntry, cluster: ClusterSettings, *,
            predecessor_id: int | None = None, now: datetime, time_limit: str = "10") -> DeploymentRecord:
    """Stand-in for launcher.deploy.submit_deployment: sbatch a tiny job, record it pending."""
    script = f"#!/bin/bash\n{SCRIPTS[entry.name]}\n"
    job_id = slurm.submit(script, args=["--job-name", entry.name, f"--time={time_limit}", "--no-requeue",
                                        "--output=/dev/null", "--gres=gpu:1"])
    token = new_secret()
    row = Deployment(model=entry.name, engine="command", state="pending", job_id=job_id, secret=new_secret(),
                     registration_token_hash=token_hash(token), submitted_at=now, predecessor_id=predecessor_id,
                     created_at=now, updated_at=now)
    session.add(row)
    session.commit()
    TOKENS[row.id] = token
    return to_record(row)


@dataclass
class Harness:
    """A registry, a catalog and a supervisor bound to the local cluster."""

    engine: Engine
    slurm: SlurmClient
    supervisor: Supervisor

    def session(self) -> Session:
        return session_factory(self.engine)()

    def want(self, model: str, replicas: int) -> None:
        with self.session() as s:
            s.merge(ModelTarget(model=model, desired_replicas=replicas, quick_failures=0, updated_at=utcnow()))
            s.commit()

    def rows(self, model: str) -> list[Deployment]:
        with self.session() as s:
            return list(s.scalars(select(Deployment).where(Deployment.model == model).order_by(Deployment.id)))

    def target(self, model: str) -> ModelTarget:
        with self.session() as s:
            found = s.get(ModelTarget, model)
            assert found is not None
            return found

    def register(self, row: Deployment) -> None:
        """What the job does once its server is healthy: the router's registration code."""
        with self.session() as s:
            register(s, Claim(token=TOKENS[row.id], url="http://127.0.0.1:9", deployment_id=row.id))

    def loop(self, interval_s: float = 1.0) -> Callable[[], None]:
        """Run `supervise` in a thread; returns the function that stops it."""
        stop = threading.Event()
        thread = threading.Thread(target=self.supervisor.run_forever, args=(interval_s, stop), daemon=True)
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(30)
        return halt


def make_harness(tmp_path: Path, slurm: SlurmClient, **cluster: Any) -> Harness:
    engine = open_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    defaults: dict[str, Any] = dict(backoff_base_s=600.0, max_quick_failures=3)
    settings = Settings(cluster=replace(ClusterSettings(), **{**defaults, **cluster}))
    return Harness(engine, slurm, Supervisor(engine, slurm, _catalog(), settings, submit=_submit))



@pytest.fixture(scope="module")
def time_limited(slurm_cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:  # noqa: F811
    """A ready deployment whose job has a 1-minute limit, started before the other tests run."""
    harness = make_harness(tmp_path_factory.mktemp("timeout"), slurm_cluster.client())
    with harness.session() as s:
        record = _submit(s, harness.slurm, harness.supervisor.catalog.entries["short"], harness.supervisor.settings.cluster,
                         now=utcnow(), time_limit="1")
    harness.supervisor.run_once()
    harness.register(harness.rows("short")[0])
    assert record.job_id
    yield harness


@pytest.fixture
def harness(slurm_cluster: SlurmCluster, tmp_path: Path) -> Harness:  # noqa: F811
    return make_harness(tmp_path, slurm_cluster.client())


def test_supervisor_alone_takes_a_killed_job_out_of_routing(harness: Harness, time_limited: Harness) -> None:
    """A job with no exit trap (as after SIGKILL or a lost node): only the supervisor notices."""
    harness.want("sleeper", 1)
    halt = harness.loop(interval_s=1.0)
    try:
        first = wait_for(lambda: [r for r in harness.rows("sleeper") if r.state == "starting"], 15, "starting")[0]
        harness.register(first)
        harness.slurm.cancel(str(first.job_id))
        wait_for(lambda: harness.rows("sleeper")[0].state == "gone", 5, "the cancelled job to leave routing")
        replacement = wait_for(lambda: harness.rows("sleeper")[1:], 10, "a replacement")[0]
    finally:
        halt()
    gone = harness.rows("sleeper")[0]
    assert (gone.state, gone.reason) == ("gone", "CANCELLED")
    assert replacement.job_id != first.job_id and harness.target("sleeper").quick_failures == 0
    harness.slurm.cancel(str(replacement.job_id))


def test_job_not_ready_within_its_start_deadline_is_cancelled(harness: Harness) -> None:
    harness.want("sleeper", 1)  # start_deadline = 3 s; the job never registers
    halt = harness.loop(interval_s=1.0)
    try:
        row = wait_for(lambda: [r for r in harness.rows("sleeper") if r.state == "gone"], 30, "deadline")[0]
    finally:
        halt()
    assert row.reason == "not ready within its start deadline (3 s)"
    job = wait_for(lambda: harness.slurm.jobs([str(row.job_id)]).get(str(row.job_id)), 5, "job info")
    wait_for(lambda: harness.slurm.jobs([str(row.job_id)])[str(row.job_id)].finished, 10, "the job to end")
    assert harness.slurm.jobs([str(row.job_id)])[str(row.job_id)].state == "CANCELLED" and job
    assert harness.target("sleeper").quick_failures == 1  # and backoff holds off the next try
    for other in harness.rows("sleeper")[1:]:
        harness.slurm.cancel(str(other.job_id))


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture
def private_cluster(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:  # noqa: F811
    """A second one-node cluster, so setting its node down kills no one else's jobs."""
    ctld, slurmd = _free_ports(2)
    # munged wants every directory above its socket traversable: pytest's tmp dirs are private
    folder = Path(tempfile.mkdtemp(prefix="llm-launch-downtest-"))
    folder.chmod(0o755)
    env = {**os.environ, "LLM_LAUNCH_SLURM_DIR": str(folder),
           "LLM_LAUNCH_SLURM_CTLD_PORT": str(ctld),
           "LLM_LAUNCH_SLURM_SLURMD_PORT": str(slurmd), "LLM_LAUNCH_SLURM_LINK_ETC": "0"}
    env["SLURM_CONF"] = str(folder / "etc" / "slurm.conf")
    try:
        done = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        yield SlurmCluster(env=env, node=SlurmClient(env=env).nodes()[0].name, conf=Path(env["SLURM_CONF"]))
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_node_set_down_marks_its_jobs_gone(private_cluster: SlurmCluster, tmp_path: Path) -> None:
    harness, node = make_harness(tmp_path, private_cluster.client()), private_cluster.node
    harness.want("short", 2)
    halt = harness.loop(interval_s=1.0)
    try:
        wait_for(lambda: [r.state for r in harness.rows("short")] == ["starting"] * 2, 30, "two running jobs")
        harness.register(harness.rows("short")[0])
        harness.slurm.set_node_state(node, "DOWN", "supervisor test")
        try:
            wait_for(lambda: [r.state for r in harness.rows("short")[:2]] == ["gone"] * 2, 10, "both gone")
            wait_for(lambda: len(harness.rows("short")) == 4, 10, "two replacements")
        finally:
            harness.slurm.set_node_state(node, "RESUME")
        wait_for(lambda: [r.state for r in harness.rows("short")[2:]] == ["starting"] * 2, 60, "replacements run")
    finally:
        halt()
    assert [r.reason for r in harness.rows("short")[:2]] == [f"NODE_FAIL (node {node})"] * 2
    assert harness.target("short").quick_failures == 0  # a lost node is not the model's failure


# --- through the real job templates (launcher.deploy), the fake backend as the server ---

def _real_catalog(command: str) -> Catalog:
    """Entry "fake": engine "command" running COMMAND in bash, from this checkout."""
    repo = Path(__file__).resolve().parents[2]
    line = f"cd {shlex.quote(str(repo))} && exec {command}"
    entry = {"engine": "command", "weights": "none", "command": ["bash", "-c", line], "time": "10",
             "start_deadline": 60, "env": {"LLM_LAUNCH_NODE_HOST": "127.0.0.1"}}
    return catalog_from_dict({"models": {"fake": entry}}, "test-catalog.toml", {})


FAKE_SERVER = (f"{shlex.quote(sys.executable)} -m tests.fake_backend --host {{host}} --port {{port}} "
               '--model fake --secret="$LLM_LAUNCH_BACKEND_SECRET"')  # '=': a secret may start with '-'


def real_harness(slurm: SlurmClient, engine: Engine, router_url: str, log_dir: Path, command: str,
                 **cluster: Any) -> Harness:
    settings = Settings(cluster=replace(ClusterSettings(), router_url=router_url, log_dir=str(log_dir),
                                        **{"backoff_base_s": 600.0, **SMALL_JOBS, **cluster}))
    return Harness(engine, slurm, Supervisor(engine, slurm, _real_catalog(command), settings))


def test_job_cancelled_behind_our_back_leaves_routing_and_is_replaced(
    slurm_cluster: SlurmCluster, registry: Registry, make_router: Callable[..., RouterHandle],  # noqa: F811
    tmp_path: Path,
) -> None:
    router = make_router()
    harness = real_harness(slurm_cluster.client(), registry.engine, router.url, tmp_path, FAKE_SERVER)
    client = openai.OpenAI(base_url=router.base_url, api_key=registry.add_key("alice"), max_retries=0)

    def ask() -> str | None:
        answer = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
        return answer.choices[0].message.content

    harness.want("fake", 1)
    halt = harness.loop(interval_s=1.0)
    try:
        first = wait_for(lambda: [r for r in harness.rows("fake") if r.state == "ready"], 30, "ready")[0]
        assert ask()
        harness.slurm.cancel(str(first.job_id))
        wait_for(lambda: harness.rows("fake")[0].state != "ready", 5, "the router to stop routing to it")
        wait_for(lambda: harness.rows("fake")[0].state == "gone", 10, "the supervisor to mark it gone")
        wait_for(lambda: [r for r in harness.rows("fake")[1:] if r.state == "ready"], 30, "the replacement")

        def served() -> str | None:
            try:
                return ask()
            except openai.InternalServerError:  # the router's next registry read has not come yet
                return None

        # answered by the replacement within a few registry reads of its row turning ready
        wait_for(served, 5, "the router to route to the replacement")
    finally:
        halt()
        for row in harness.rows("fake"):
            harness.slurm.cancel(str(row.job_id))
    assert harness.rows("fake")[0].reason == "CANCELLED"


def test_repeated_quick_failures_of_a_real_job_stop_with_a_reason(
    slurm_cluster: SlurmCluster, registry: Registry, tmp_path: Path,  # noqa: F811
) -> None:
    harness = real_harness(slurm_cluster.client(), registry.engine, "http://127.0.0.1:9", tmp_path,
                           "sh -c 'exit 3'", backoff_base_s=0.5, max_quick_failures=3)
    harness.want("fake", 1)
    halt = harness.loop(interval_s=0.5)
    try:
        wait_for(lambda: harness.target("fake").stopped_reason, 60, "the supervisor to give up")
    finally:
        halt()
    reason = harness.target("fake").stopped_reason or ""
    assert [r.reason for r in harness.rows("fake")] == ["FAILED (exit code 3)"] * 3
    assert "3 quick failures" in reason and "FAILED (exit code 3)" in reason
    harness.supervisor.run_once()
    assert len(harness.rows("fake")) == 3  # stopped: nothing more is submitted


def test_supervisor_runs_inside_the_router(
    slurm_cluster: SlurmCluster, registry: Registry, servers: LoopThread, tmp_path: Path,  # noqa: F811
) -> None:
    """settings.router.supervise: the loop runs as a task of the router process, off its event loop."""
    (port,) = _free_ports(1)
    command = _real_catalog(FAKE_SERVER).entries["fake"].command
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(f'[models.fake]\nengine = "command"\nweights = "none"\ntime = "10"\n'
                       f'command = {json.dumps(list(command))}\nenv = {{ LLM_LAUNCH_NODE_HOST = "127.0.0.1" }}\n')
    settings = Settings(database=registry.url, router=RouterSettings(registry_refresh_s=0.2, accounting=False),
                        cluster=replace(ClusterSettings(), catalog=str(catalog), reconcile_interval_s=0.5,
                                        log_dir=str(tmp_path), router_url=f"http://127.0.0.1:{port}", **SMALL_JOBS))

    async def boot() -> tuple[web.AppRunner, int]:
        app = create_app(settings, registry.engine)
        app.cleanup_ctx.append(supervisor_context(settings, registry.engine))
        return await start(app, "127.0.0.1", port, 1.0)

    key = registry.add_key("bob")  # before the router starts: it reads keys at its refreshes
    runner, _ = servers.run(boot())
    harness = Harness(registry.engine, slurm_cluster.client(), None)  # type: ignore[arg-type]
    try:
        harness.want("fake", 1)
        wait_for(lambda: [r for r in harness.rows("fake") if r.state == "ready"], 30, "a replica the router started")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
    finally:
        servers.run(runner.cleanup())
        for row in harness.rows("fake"):
            harness.slurm.cancel(str(row.job_id))


# Last, so that every test above ran while its job used up its minute.
def test_job_killed_by_its_time_limit_is_timeout(time_limited: Harness) -> None:
    row = time_limited.rows("short")[0]
    assert row.state == "ready"
    wait_for(lambda: time_limited.slurm.jobs([str(row.job_id)])[str(row.job_id)].finished, 150, "the time limit")
    time_limited.supervisor.run_once()
    assert (time_limited.rows("short")[0].state, time_limited.rows("short")[0].reason) == ("gone", "TIMEOUT")
