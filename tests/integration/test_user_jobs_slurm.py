"""The admin guide's job for a user's own server, run as written on the local Slurm.

The script is the guide's block, with only its site values replaced (the venv, the router's
URL); `vllm` is a stand-in that runs the test fake backend, which reads its secret from the
environment as vllm does. Two copies on one node both serve and neither removes the other; a
job killed with SIGKILL (no trap runs) is removed by the supervisor following it through Slurm;
`register` in a job refuses a server without a secret and a dead URL; a server that starts
rejecting the router's secret is a 502 and leaves the rotation.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import requests
from sqlalchemy import Engine, select

from launcher.control.supervisor import Supervisor
from launcher.core.catalog import Catalog
from launcher.core.db import open_engine, session_factory
from launcher.core.keys import create_key
from launcher.core.schema import Deployment
from launcher.core.settings import ClusterSettings, KeyLimits, RouterSettings, Settings
from launcher.core.tokens import create_token
from router.app import create_app
from router.serve import start
from tests.conftest import LoopThread
from tests.integration.slurm_fixtures import SlurmCluster, slurm_cluster  # noqa: F401
from tests.integration.test_docs_cli import ADMIN, blocks
from tests.waiting import wait_for

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
MODEL = "my-finetune"  # the guide's name
GUIDE_JOB = "#!/bin/bash\n#SBATCH --job-name=my-finetune\n"
SITE = {"/shared/llm-launch/venv/bin/activate": "{activate}", "http://llm-svc01.cluster.local:8000": "{router}"}
INTERVAL_S = 1.0  # the supervisor's pass interval and the router's probe interval
VLLM = f"""#!/bin/bash
# vllm serve WEIGHTS --served-model-name NAME --host HOST --port PORT, played by the test fake backend
shift 2
while [ $# -gt 0 ]; do
  case $1 in --served-model-name) name=$2;; --host) host=$2;; --port) port=$2;; esac
  shift 2
done
echo $$ >> "$(dirname "$0")/servers.pid"   # the test ends what a killed job's shell left behind
cd {shlex.quote(str(REPO))} && exec {shlex.quote(sys.executable)} -m tests.fake_backend --host "$host" \\
  --port "$port" --model "$name" --secret-env VLLM_API_KEY
"""
LLM_LAUNCH = f"""#!/bin/bash
PYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} -c 'from launcher.cli import main; main()' "$@"
"""


def guide_script() -> str:
    """The guide's job script, verbatim."""
    found = [b for b in blocks(ADMIN, {"bash"}) if b.startswith(GUIDE_JOB)]
    assert len(found) == 1, "the admin guide's job script is gone or duplicated"
    return found[0]


def token_file_commands() -> str:
    found = [b for b in blocks(ADMIN, {"bash"}) if "umask 077" in b and ".config/llm-launch/token" in b]
    assert len(found) == 1
    return found[0]


@dataclass
class Stack:
    engine: Engine
    cluster: SlurmCluster
    folder: Path
    router_url: str
    key: str
    env: dict[str, str]  # a user's environment for sbatch: HOME with the token file, SLURM_CONF
    outputs: dict[str, Path] = dataclasses.field(default_factory=dict)

    def submit(self, script: str, env: dict[str, str] | None = None) -> str:
        path = self.folder / f"job-{time.monotonic_ns()}.sh"
        path.write_text(script)
        done = subprocess.run(["sbatch", "--parsable", "-o", f"{path}.out", "--cpus-per-gpu=1", "--mem-per-gpu=2G",
                               str(path)], env=env or self.env, capture_output=True, text=True, timeout=30, check=True)
        job_id = done.stdout.strip().split(";")[0]
        self.outputs[job_id] = Path(f"{path}.out")
        return job_id

    def output(self, job_id: str) -> str:
        """What job JOB_ID wrote (stdout and stderr)."""
        return self.outputs[job_id].read_text() if self.outputs[job_id].exists() else ""

    def rows(self) -> list[Deployment]:
        with session_factory(self.engine)() as session:
            return list(session.scalars(select(Deployment).order_by(Deployment.id)))

    def live(self) -> list[Deployment]:
        return [r for r in self.rows() if r.state == "ready"]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.router_url + "/v1", api_key=self.key, max_retries=0, timeout=30)

    def listed(self) -> set[str]:
        answer = requests.get(self.router_url + "/v1/models", headers={"Authorization": f"Bearer {self.key}"},
                              timeout=10)
        return {m["id"] for m in answer.json()["data"]}

    def scancel(self, job_id: str, *args: str) -> None:
        subprocess.run(["scancel", *args, job_id], env=self.env, check=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def stack(slurm_cluster: SlurmCluster, servers: LoopThread,  # noqa: F811
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("user-jobs")
    folder.chmod(0o755)
    engine = open_engine(f"sqlite:///{folder / 'registry.db'}")
    port = _free_port()
    cluster = dataclasses.replace(ClusterSettings(), router_url=f"http://127.0.0.1:{port}", log_dir=str(folder),
                                  reconcile_interval_s=INTERVAL_S)
    router = RouterSettings(registry_refresh_s=0.2, accounting=False, request_log=False, grace_period_s=1,
                            health_interval_s=INTERVAL_S, health_timeout_s=1.0)
    settings = Settings(database=f"sqlite:///{folder / 'registry.db'}", router=router, cluster=cluster)
    with session_factory(engine)() as session:
        key, _ = create_key(session, "alice", limits=KeyLimits())
        token, _ = create_token(session, MODEL, None)
    env = _user_env(folder, slurm_cluster, token)

    async def boot() -> object:
        return (await start(create_app(settings, engine), "127.0.0.1", port, 1.0))[0]

    runner = servers.run(boot())
    supervisor = Supervisor(engine, slurm_cluster.client(), Catalog("none", {}), settings)
    stop = threading.Event()
    loop = threading.Thread(target=supervisor.run_forever, args=(INTERVAL_S, stop), daemon=True)
    loop.start()
    made = Stack(engine, slurm_cluster, folder, f"http://127.0.0.1:{port}", key, env)
    try:
        yield made
    finally:
        subprocess.run(["scancel", "--user", os.environ.get("USER", "root"), "--name", MODEL], env=env, timeout=30,
                       check=False)
        stop.set()
        loop.join(30)
        _end_orphans(folder / "bin" / "servers.pid")
        servers.run(runner.cleanup())  # type: ignore[attr-defined]
        engine.dispose()


def _end_orphans(pids: Path) -> None:
    """Servers of jobs whose shell was SIGKILLed: linuxproc loses track of them (cgroups would not)."""
    for pid in (int(p) for p in (pids.read_text().split() if pids.exists() else [])):
        try:
            if b"tests.fake_backend" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, 15)
        except (OSError, ValueError):
            continue


def _user_env(folder: Path, cluster: SlurmCluster, token: str) -> dict[str, str]:
    """HOME with the token file made by the guide's own commands; `vllm` and `llm-launch` on PATH."""
    home, bin_dir = folder / "home", folder / "bin"
    home.mkdir()
    bin_dir.mkdir()
    for name, text in (("vllm", VLLM), ("llm-launch", LLM_LAUNCH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (folder / "activate").write_text(f"export PATH={shlex.quote(str(bin_dir))}:$PATH\n")
    env = {k: v for k, v in cluster.env.items() if not k.startswith(("LLM_LAUNCH_", "SLURM_JOB"))}
    env.update(HOME=str(home), SLURM_CONF=str(cluster.conf))
    subprocess.run(["bash", "-euc", token_file_commands()], input=token + "\n", env=env, text=True, check=True,
                   timeout=10)
    mode = stat.S_IMODE((home / ".config" / "llm-launch" / "token").stat().st_mode)
    assert mode == 0o600, oct(mode)
    return env


def job_script(stack: Stack) -> str:
    script = guide_script()
    values = {"{activate}": str(stack.folder / "activate"), "{router}": stack.router_url}
    for site, mark in SITE.items():
        assert script.count(site) == 1, f"the guide's script no longer has {site}"
        script = script.replace(site, values[mark])
    return script


def ask(stack: Stack) -> str:
    answer = stack.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content or ""


def test_the_guides_job_twice_on_one_node_both_serve_and_a_hard_kill_is_removed(stack: Stack) -> None:
    first = stack.submit(job_script(stack))
    wait_for(lambda: [r for r in stack.live() if r.job_id == first], 90, "the first job registered")
    second = stack.submit(job_script(stack))
    wait_for(lambda: [r for r in stack.live() if r.job_id == second], 90, "the second job registered")
    rows = {r.job_id: r for r in stack.live()}
    assert set(rows) == {first, second} and rows[first].url != rows[second].url
    assert {r.owner for r in rows.values()} == {os.environ.get("USER") or "root"}
    assert all(ask(stack) for _ in range(6))  # both serve
    stack.scancel(second)  # its trap deregisters its own deployment, not the first one
    wait_for(lambda: {r.job_id for r in stack.live()} == {first}, 30, "the second job's deployment gone")
    assert ask(stack) and [r.state for r in stack.rows() if r.job_id == first] == ["ready"]

    stack.scancel(first, "--signal=KILL", "--batch")  # a hard death: the job shell dies, no trap runs
    killed = time.monotonic()
    wait_for(lambda: MODEL not in stack.listed(), 6 * INTERVAL_S + 20, "the killed job's model gone from /v1/models")
    measured = time.monotonic() - killed
    assert measured <= 2 * INTERVAL_S + 5  # a supervisor pass (plus Slurm's notice), not the trap, removed it
    gone = [r for r in stack.rows() if r.job_id == first]
    assert gone[0].state == "gone" and "deregistered" not in (gone[0].reason or ""), gone[0].reason
    print(f"\nhard death to removal from /v1/models: {measured:.2f} s (supervisor interval {INTERVAL_S:g} s, "
          f"probes every {INTERVAL_S:g} s); reason: {gone[0].reason}")


def test_two_copies_given_one_port_the_second_gives_up_and_the_first_keeps_its_registration(stack: Stack) -> None:
    port, one_port = _free_port(), stack.folder / "one-port"
    one_port.mkdir()
    (one_port / "shuf").write_text(f"#!/bin/bash\nfor i in $(seq 100); do echo {port}; done\n")
    (one_port / "shuf").chmod(0o755)
    env = {**stack.env, "PATH": f"{one_port}:{stack.env['PATH']}"}  # every `shuf` draw is the same port
    first = stack.submit(job_script(stack), env)
    wait_for(lambda: [r for r in stack.live() if r.job_id == first], 90, "the first job registered")
    second = stack.submit(job_script(stack), env)
    wait_for(lambda: _finished(stack, second), 60, "the second job gave up")
    assert "the server exited before it was ready" in stack.output(second), stack.output(second)
    assert [r.job_id for r in stack.live()] == [first] and not [r for r in stack.rows() if r.job_id == second]
    assert ask(stack)
    stack.scancel(first)
    wait_for(lambda: not stack.live(), 30, "the first job deregistered")


REFUSALS = """#!/bin/bash
#SBATCH --gres=gpu:1
source {activate}
export LLM_LAUNCH_REGISTRATION_TOKEN="$(cat ~/.config/llm-launch/token)"
export LLM_LAUNCH_ROUTER_URL={router}
url="http://$(hostname):{port}"
llm-launch register --model my-finetune --url "$url" || echo "exit $?"
LLM_LAUNCH_BACKEND_SECRET=s3cret llm-launch register --model my-finetune --url "$url" || echo "exit $?"
"""


def test_register_in_a_job_refuses_no_secret_and_a_dead_url(stack: Stack) -> None:
    script = REFUSALS.format(activate=stack.folder / "activate", router=stack.router_url, port=_free_port())
    before = len(stack.rows())
    job = stack.submit(script)
    wait_for(lambda: _finished(stack, job), 60, "the refusing job ended")
    text = stack.output(job)
    assert "is empty: without a secret anyone who can reach" in text and "--no-secret" in text, text
    assert "the router cannot reach http://" in text and text.count("exit 1") == 2, text
    assert len(stack.rows()) == before


def _finished(stack: Stack, job: str) -> bool:
    found = stack.cluster.client().jobs([job]).get(job)
    return found is None or found.finished


REJECTING = """#!/bin/bash
#SBATCH --gres=gpu:1
set -euo pipefail
source {activate}
export LLM_LAUNCH_REGISTRATION_TOKEN="$(cat ~/.config/llm-launch/token)"
export LLM_LAUNCH_ROUTER_URL={router}
export LLM_LAUNCH_BACKEND_SECRET=first VLLM_API_KEY=first
port={port}
vllm serve w --served-model-name my-finetune --host 0.0.0.0 --port "$port" &
until printf 'Authorization: Bearer first\\n' | curl -fsS -o /dev/null -H @- "http://127.0.0.1:$port/v1/models"; do sleep 0.5; done
llm-launch register --model my-finetune --url "http://$(hostname):$port"
kill %1; wait || true
export VLLM_API_KEY=rotated                       # restarted with another secret, not registered again
vllm serve w --served-model-name my-finetune --host 0.0.0.0 --port "$port" &
until curl -s -o /dev/null "http://127.0.0.1:$port/v1/models"; do sleep 0.5; done
touch {ready}
wait
"""


def test_a_server_that_rejects_the_routers_secret_is_a_502_and_leaves_the_rotation(stack: Stack) -> None:
    ready = stack.folder / "rotated"
    job = stack.submit(REJECTING.format(activate=stack.folder / "activate", router=stack.router_url,
                                        port=_free_port(), ready=ready))
    wait_for(ready.exists, 60, "the server restarted with another secret")
    # A request finds it first (502), or a probe did (out of rotation: a 503 saying why). A probe
    # in the restart's gap saw nothing listening: the next one finds the 401.
    wait_for(lambda: _rejected(stack), 10, "the router's secret rejected, and said so")
    with pytest.raises(openai.APIStatusError) as after:
        ask(stack)
    assert after.value.status_code == 503  # out of rotation: not tried again
    assert f"job {job}" in after.value.message
    stack.scancel(job, "--signal=KILL", "--full")
    wait_for(lambda: all(r.state == "gone" for r in stack.rows()), 6 * INTERVAL_S + 20, "the job's row removed")


def _rejected(stack: Stack) -> bool:
    try:
        ask(stack)
    except openai.APIStatusError as exc:
        if exc.status_code == 502:
            return "rejected the service's credentials" in exc.message
        return exc.status_code == 503 and "answered 401" in exc.message
    return False
