"""Zero downtime across job ends, on the real local Slurm: successors, drain, `down`, failing successors,
a successor Slurm keeps pending, on demand.

One registry, one router and one supervisor serve five models of the `command` engine, each
running the fake backend from this checkout, on a private one-node cluster (other tests' jobs
must not hold its four fake GPUs). The handover settings are the defaults (signal_lead_s 120,
drain_threshold_s 60, the computed lead), so the time limits are a few minutes: long enough to
hold a handover. The scenarios that need a job to reach its time limit run side by side
(`flaky` starts before the handover test and is checked after it), and at most four jobs run
at once.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from launcher.core.catalog import load_catalog
from launcher.cli import main
from launcher.core.db import open_engine, session_factory, utcnow
from launcher.core.schema import Deployment, ModelTarget
from launcher.core.settings import ClusterSettings, RouterSettings, Settings
from launcher.slurm.client import JobInfo, SlurmClient
from launcher.control.supervisor import Supervisor
from router.app import create_app
from router.serve import start
from tests.conftest import LoopThread
from tests.integration.slurm_fixtures import SCRIPT, SMALL_JOBS, SlurmCluster, slurm_cluster  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.slurm

CHUNKS = 40  # a streamed answer: 40 chunks, 50 ms apart (2 s)
REPO = Path(__file__).resolve().parents[2]
SERVER = (f"{shlex.quote(sys.executable)} -m tests.fake_backend --host {{host}} --port {{port}} --model {{served_name}} "
          f'--chunks {CHUNKS} --chunk-delay-ms 50 --secret="$LLM_LAUNCH_BACKEND_SECRET"')


def _entry(line: str, time_limit: str, extra: str = "") -> str:
    command = ["bash", "-c", f"cd {shlex.quote(str(REPO))} && {line}"]
    words = ", ".join(f"'''{word}'''" for word in command)
    return (f'engine = "command"\nweights = "none"\ntime = "{time_limit}"\ncommand = [{words}]\n'
            f'env = {{ LLM_LAUNCH_NODE_HOST = "127.0.0.1" }}\n{extra}')


def _catalog(folder: Path) -> Path:
    mark = shlex.quote(str(folder / "flaky-started"))
    models = {
        # 6 minutes: with the defaults a successor is due once a job served a quarter of its limit
        "fake": _entry(f"exec {SERVER}", "6"),
        # the first job serves; every later one fails at once (a successor that cannot start)
        "flaky": _entry(f"if [ -e {mark} ]; then exit 3; fi; touch {mark}; exec {SERVER}", "6"),
        "pair": _entry(f"exec {SERVER}", "10"),
        "lazy": _entry(f"exec {SERVER}", "10", "on_demand = true\n"),
        # too short for a handover with the defaults: its successor is submitted 45 s after it is ready
        "stuck": _entry(f"exec {SERVER}", "3"),
    }
    path = folder / "catalog.toml"
    path.write_text("".join(f"[models.{name}]\n{body}\n" for name, body in models.items()))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """The service: registry, router (with the on-demand add-on) and a supervisor thread."""

    engine: Engine
    db: Path
    slurm: SlurmClient
    env: dict[str, str]
    base_url: str
    key: str
    supervisor: Supervisor

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.key, max_retries=0, timeout=60)

    def want(self, model: str, replicas: int) -> None:
        with session_factory(self.engine)() as s:
            s.merge(ModelTarget(model=model, desired_replicas=replicas, quick_failures=0, updated_at=utcnow()))
            s.commit()

    def target(self, model: str) -> ModelTarget | None:
        with session_factory(self.engine)() as s:
            return s.get(ModelTarget, model)

    def rows(self, model: str) -> list[Deployment]:
        with session_factory(self.engine)() as s:
            return list(s.scalars(select(Deployment).where(Deployment.model == model).order_by(Deployment.id)))

    def ready(self, model: str) -> list[Deployment]:
        return [r for r in self.rows(model) if r.state == "ready"]

    def job(self, row: Deployment) -> JobInfo:
        return self.slurm.jobs([str(row.job_id)])[str(row.job_id)]

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(main, ["--db", str(self.db), *args], env={"SLURM_CONF": self.env["SLURM_CONF"]},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    def stop(self, model: str) -> None:
        self.want(model, 0)
        for row in self.rows(model):
            if row.state != "gone":
                self.slurm.cancel(str(row.job_id))


@pytest.fixture(scope="module")
def private_cluster(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:  # noqa: F811
    """A one-node cluster of this module's own (the shared one proves Slurm can be installed)."""
    folder = Path(tempfile.mkdtemp(prefix="llm-launch-handover-"))
    folder.chmod(0o755)  # munged wants every directory above its socket traversable
    env = {**os.environ, "LLM_LAUNCH_SLURM_DIR": str(folder), "LLM_LAUNCH_SLURM_CTLD_PORT": str(_free_port()),
           "LLM_LAUNCH_SLURM_SLURMD_PORT": str(_free_port()), "LLM_LAUNCH_SLURM_LINK_ETC": "0",
           "SLURM_CONF": str(folder / "etc" / "slurm.conf")}
    try:
        done = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        yield SlurmCluster(env=env, node=SlurmClient(env=env).nodes()[0].name, conf=Path(env["SLURM_CONF"]))
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(private_cluster: SlurmCluster, servers: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("handover")
    port, db = _free_port(), folder / "registry.db"
    engine = open_engine(f"sqlite:///{db}")
    cluster = dataclasses.replace(
        ClusterSettings(), catalog=str(_catalog(folder)), router_url=f"http://127.0.0.1:{port}", log_dir=str(folder),
        reconcile_interval_s=0.5, backoff_base_s=3, max_quick_failures=3,  # the handover settings: defaults
        **SMALL_JOBS)
    router = RouterSettings(registry_refresh_s=0.2, accounting=False, request_log=False, on_demand_wait_s=45,
                            on_demand_idle_s=6, grace_period_s=1)
    settings = Settings(database=f"sqlite:///{db}", router=router, cluster=cluster)
    with session_factory(engine)() as session:
        from launcher.core.keys import create_key
        from launcher.core.settings import KeyLimits

        key, _ = create_key(session, "load", limits=KeyLimits())

    async def boot() -> Any:
        return (await start(create_app(settings, engine), "127.0.0.1", port, 1.0))[0]

    runner = servers.run(boot())
    slurm = private_cluster.client()
    supervisor = Supervisor(engine, slurm, load_catalog(Path(cluster.catalog)), settings)
    stop = threading.Event()
    loop = threading.Thread(target=supervisor.run_forever, args=(cluster.reconcile_interval_s, stop), daemon=True)
    loop.start()
    made = Stack(engine, db, slurm, private_cluster.env, f"http://127.0.0.1:{port}/v1", key, supervisor)
    try:
        yield made
    finally:
        stop.set()
        loop.join(30)
        for model in ("fake", "flaky", "pair", "lazy", "stuck"):
            made.stop(model)
        servers.run(runner.cleanup())
        engine.dispose()



@dataclass
class Load:
    """Clients asking MODEL in a loop: every third request streams a long answer."""

    client: openai.OpenAI
    model: str
    workers: int = 3
    pause_s: float = 0.3
    sent: int = 0
    streams: int = 0
    outcomes: list[tuple[float, str]] = field(default_factory=list)  # (time.monotonic(), "ok" or the error)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def failures(self) -> list[str]:
        return [text for _, text in self.outcomes if text != "ok"]

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Load:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self

    def _run(self, worker: int) -> None:
        n = worker
        while not self._stop.is_set():
            with self._lock:
                self.sent += 1
            try:
                outcome = self._ask(stream=n % 3 == 0)
            except openai.APIError as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.outcomes.append((time.monotonic(), outcome))
            n += 1
            self._stop.wait(self.pause_s)

    def _ask(self, stream: bool) -> str:
        messages: Any = [{"role": "user", "content": "hello"}]
        if not stream:
            answer = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=20)
            return "ok" if answer.choices[0].message.content else "empty answer"
        with self._lock:
            self.streams += 1
        chunks = self.client.chat.completions.create(model=self.model, messages=messages, max_tokens=100, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return "ok" if text.endswith(f"tok{CHUNKS - 1} ") else f"stream cut after {len(text)} characters"


def test_maint_reservations_are_read_as_windows_in_utc(stack: Stack, private_cluster: SlurmCluster) -> None:
    start = (utcnow() + timedelta(days=2)).replace(second=0, microsecond=0)
    local = start.replace(tzinfo=UTC).astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    argv = ["scontrol", "create", "reservation", "reservationname=llm-maint", f"starttime={local}", "duration=90",
            "flags=maint", "users=root", f"nodes={private_cluster.node}"]
    subprocess.run(argv, env=private_cluster.env, check=True, capture_output=True, timeout=30)
    try:
        (window,) = stack.slurm.reservations()
    finally:
        subprocess.run(["scontrol", "delete", "reservationname=llm-maint"], env=private_cluster.env, timeout=30,
                       check=False, capture_output=True)
    assert (window.name, window.start, window.end) == ("llm-maint", start, start + timedelta(minutes=90))
    assert stack.slurm.reservations() == ()


# --- phase 1: `down` under load, and a model started by its first request (3 jobs at most) ---

def test_down_of_one_job_under_load_fails_no_request(stack: Stack) -> None:
    stack.want("pair", 2)
    first, second = wait_for(lambda: _exactly(stack.ready("pair"), 2), 60, "two replicas")
    load = Load(stack.client(), "pair").start()
    try:
        time.sleep(3)
        out = stack.cli("down", str(first.job_id))  # drains: no --now
        time.sleep(3)
    finally:
        load.stop()
    assert "draining; requests in flight finish first" in out and "ended (COMPLETED)" in out
    assert load.failures == [] and load.sent > 10 and load.streams > 2
    assert stack.job(first).state == "COMPLETED" and [r.id for r in stack.ready("pair")] == [second.id]
    stack.stop("pair")


def test_first_request_starts_an_on_demand_model_and_idle_releases_it(stack: Stack) -> None:
    assert stack.target("lazy") is None  # nothing wanted, nothing running
    answer = stack.client().chat.completions.create(model="lazy", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content  # answered once the job it triggered was ready
    (row,) = stack.rows("lazy")
    target = stack.target("lazy")
    assert target is not None and target.desired_replicas == 1
    # no request for on_demand_idle_s: the target returns to 0 and the replica drains
    wait_for(lambda: stack.rows("lazy")[0].state == "gone", 60, "the idle replica to be released")
    assert stack.rows("lazy")[0].reason == "COMPLETED" and stack.job(row).state == "COMPLETED"
    assert (stack.target("lazy") or target).desired_replicas == 0


# --- phase 2: three handovers under load, beside a model whose successors fail (4 jobs at most) ---

@pytest.fixture(scope="module")
def flaky(stack: Stack) -> Load:
    """A `flaky` replica serving under light load; its successors will fail at once."""
    stack.want("flaky", 1)
    wait_for(lambda: stack.ready("flaky"), 60, "the first flaky replica")
    return Load(stack.client(), "flaky", workers=1, pause_s=0.5).start()


def test_three_handovers_under_load_lose_no_request(stack: Stack, flaky: Load) -> None:
    stack.want("fake", 1)
    wait_for(lambda: stack.ready("fake"), 60, "the first replica")
    load = Load(stack.client(), "fake").start()
    try:
        # each job serves a quarter of its 6-minute limit, then its successor starts; it drains once that is ready
        wait_for(lambda: [r.state for r in stack.rows("fake")][:4] == ["gone"] * 3 + ["ready"], 420, "three handovers")
        time.sleep(2)
    finally:
        load.stop()
    rows = stack.rows("fake")[:4]
    assert [r.predecessor_id for r in rows] == [None, rows[0].id, rows[1].id, rows[2].id]
    jobs = [stack.job(r) for r in rows]
    overlaps = [_overlap(old, new) for old, new in zip(jobs, jobs[1:])]
    print(f"\nhandovers: {load.sent} requests sent ({load.streams} streams), {len(load.failures)} failed; "
          f"overlap per handover: {', '.join(f'{o:.1f} s' for o in overlaps)}")
    assert load.failures == [] and load.sent > 100
    assert [j.state for j in jobs[:3]] == ["COMPLETED"] * 3  # drained before the limit, not TIMEOUT
    assert [r.reason for r in rows[:3]] == ["COMPLETED"] * 3
    stack.stop("fake")


def _overlap(old: JobInfo, new: JobInfo) -> float:
    """Seconds both jobs ran: from the new job's start to the old job's end."""
    assert old.end_time and new.start_time
    return (old.end_time - new.start_time).total_seconds()


def test_successor_that_fails_leaves_the_old_job_serving_until_its_end(stack: Stack, flaky: Load) -> None:
    old = stack.rows("flaky")[0]
    wait_for(lambda: getattr(stack.target("flaky"), "stopped_reason", None), 240, "the supervisor to give up on successors")
    status = stack.cli("status", "--router", "http://127.0.0.1:9")
    line = next(text for text in status.splitlines() if text.startswith("flaky: "))
    assert "STOPPED: stopped after 3 quick failures" in line and "FAILED (exit code 3)" in line
    wait_for(lambda: stack.rows("flaky")[0].state == "gone", 300, "the old job's end")
    time.sleep(1)
    flaky.stop()
    assert stack.job(old).state == "COMPLETED"  # drained at its last safe moment, not killed at the limit
    # Slurm's warning came first and changed nothing: the job kept serving until the supervisor drained it
    log = _job_log(stack, old)
    assert log.index("time limit near (Slurm's USR1)") < log.index("drain requested"), log[-1500:]
    served = [t for t, text in flaky.outcomes if text == "ok"]
    refused = [(t, text) for t, text in flaky.outcomes if text != "ok"]
    assert len(served) > 20 and refused and max(served) < min(t for t, _ in refused)  # served to its end
    assert all("503" in text and "offline" in text for _, text in refused), refused[:3]
    with pytest.raises(openai.InternalServerError) as caught:  # an answer, not a hang
        stack.client().chat.completions.create(model="flaky", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503 and caught.value.response.headers.get("Retry-After")


def _exactly(rows: list[Deployment], count: int) -> list[Deployment] | None:
    return rows if len(rows) == count else None


def _sbatch_sleep(cluster: SlurmCluster, gpus: int) -> str:
    """A plain job holding GPUS fake GPUs for a while (another user's job)."""
    argv = ["sbatch", "--parsable", f"--gres=gpu:{gpus}", "--mem=100M", "--time=10", "--job-name=other-user",
            "--output=/dev/null", "--wrap", "sleep 600"]
    return subprocess.run(argv, env=cluster.env, capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def _job_log(stack: Stack, row: Deployment) -> str:
    return (Path(stack.supervisor.settings.cluster.log_dir) / f"{row.model}-{row.job_id}.out").read_text()


# --- phase 3: a successor Slurm keeps pending (another job holds the free GPUs) ---

def test_pending_successor_old_replica_serves_to_its_last_safe_moment_then_a_clean_503(
        stack: Stack, private_cluster: SlurmCluster) -> None:
    stack.want("stuck", 1)
    (old,) = wait_for(lambda: stack.ready("stuck"), 60, "the first stuck replica")
    # other users: one holds the three other GPUs, one queued ahead of the successor takes the old job's GPU
    blockers = [_sbatch_sleep(private_cluster, 3), _sbatch_sleep(private_cluster, 1)]
    load = Load(stack.client(), "stuck", workers=2, pause_s=0.5).start()
    try:
        # too short for a lead: its successor is submitted after a quarter of the limit, and stays pending
        new = wait_for(lambda: next((r for r in stack.rows("stuck") if r.predecessor_id == old.id
                                     and r.state == "pending" and r.reason), None), 120, "a pending successor")
        listed = stack.client().models.list().model_dump()["data"]
        entry = next(m for m in listed if m["id"] == "stuck")
        assert entry["status"] == "ready" and entry["status_reason"].startswith("replacement queued in Slurm (reason ")
        status = stack.cli("status", "--router", "http://127.0.0.1:9")
        assert "pending: replacement queued in Slurm (reason " in status, status
        wait_for(lambda: stack.rows("stuck")[0].state == "gone", 200, "the old job's last safe moment")
        time.sleep(6)
    finally:
        load.stop()
        subprocess.run(["scancel", *blockers], env=private_cluster.env, check=False, timeout=30)
    gone = stack.rows("stuck")[0]
    job = stack.job(gone)
    assert job.state == "COMPLETED" and job.end_time and job.start_time  # drained, not killed at the limit
    assert 60 <= (job.start_time + timedelta(minutes=3) - job.end_time).total_seconds() <= 90  # its last safe moment
    served = [t for t, text in load.outcomes if text == "ok"]
    refused = [(t, text) for t, text in load.outcomes if text != "ok"]
    print(f"\npending successor #{new.id}: {len(served)} served until the old job's last safe moment, then "
          f"{len(refused)} refused; first refusal: {refused[0][1] if refused else '-'}")
    # served to the last safe moment, refused after it (a 2 s stream begun before it may end just after)
    assert len(served) > 50 and refused and max(served) < min(t for t, _ in refused) + CHUNKS * 0.05 + 1
    assert all("503" in text and "replacement queued in Slurm (reason" in text for _, text in refused), refused[:3]
    # once the other job is gone the replacement starts and serves
    wait_for(lambda: stack.ready("stuck"), 90, "the replacement to serve")
    answer = stack.client().chat.completions.create(model="stuck", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    stack.stop("stuck")
