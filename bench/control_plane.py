"""The launcher's own cost: one reconcile pass over 1,000 deployments, and `up` beyond Slurm.

Runs in a fresh process (`python -m bench.control_plane WORK`, one JSON line out) so the
orchestrator's heap does not slow the garbage collector. Slurm's tools are stand-ins on PATH:
`squeue --json` prints a real Slurm 22.05.8 job object copied 1,000 times with fresh ids,
`sbatch` prints a job id; their own CPU is not the launcher's and is not counted.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.control.supervisor import Supervisor

TEMPLATE = Path(__file__).with_name("squeue_job_22.05.json")
MODELS = 10


@dataclass(frozen=True)
class PassCost:
    """CPU milliseconds of each step of one pass, and how many Slurm queries it made."""

    registry_ms: float
    parse_ms: float
    plan_ms: float
    slurm_queries: int

    @property
    def total_ms(self) -> float:
        return self.registry_ms + self.parse_ms + self.plan_ms


def squeue_text(count: int, now: int) -> str:
    """`squeue --json` output with COUNT running jobs with ids 1..COUNT."""
    template = json.loads(TEMPLATE.read_text())
    jobs = []
    for i in range(1, count + 1):
        job = copy.deepcopy(template)
        job.update(job_id=i, name=f"llm-model-{i % MODELS}", start_time=now - 600,
                   submit_time=now - 700, end_time=now + 3 * 3600, time_limit=240)
        jobs.append(job)
    return json.dumps({"meta": {"plugin": {"type": "openapi/v0.0.38"}}, "errors": [], "jobs": jobs})


def fill_registry(db: Path, count: int, now: datetime) -> None:
    """COUNT ready deployments over MODELS models (each at its replica target), with job ids."""
    from launcher.core.db import open_engine, session_factory
    from launcher.core.schema import Deployment, ModelTarget

    engine = open_engine(f"sqlite:///{db}")
    with session_factory(engine)() as session:
        session.add_all(Deployment(
            model=f"model-{i % MODELS}", kind="chat", engine="vllm", state="ready",
            job_id=str(i), node="gpu001", url=f"http://gpu001:{20000 + i}", secret="s",
            submitted_at=now - timedelta(minutes=12), ready_at=now - timedelta(minutes=8),
            end_time=now + timedelta(hours=3), created_at=now, updated_at=now,
        ) for i in range(1, count + 1))
        session.add_all(ModelTarget(model=f"model-{m}", desired_replicas=count // MODELS,
                                    updated_at=now) for m in range(MODELS))
        session.commit()
    engine.dispose()


def fake_slurm(work: Path, count: int) -> Path:
    """A bin dir with `squeue` (COUNT running jobs) and `sbatch` (prints a job id)."""
    bin_dir = work / "fake-slurm"
    bin_dir.mkdir(exist_ok=True)
    answer = work / "squeue.json"
    answer.write_text(squeue_text(count, int(time.time())))
    for name, body in (("squeue", f"exec cat {answer}"), ("sbatch", "cat >/dev/null; echo 4242")):
        tool = bin_dir / name
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    return bin_dir


def pure_pass(db: Path, squeue: str, count: int) -> dict[str, float]:
    """CPU ms of the pure steps of a pass: registry read, squeue parse, plan."""
    from launcher.core.db import open_engine, session_factory, utcnow
    from launcher.control.plan import Policy
    from launcher.control.reconcile import reconcile
    from launcher.core.targets import Target
    from launcher.slurm.parse import parse_squeue_json
    from launcher.control.supervisor import live_records

    engine = open_engine(f"sqlite:///{db}")
    targets = {f"model-{m}": Target(f"model-{m}", count // MODELS) for m in range(MODELS)}
    t0 = time.process_time()
    with session_factory(engine)() as session:
        rows = live_records(session)
    t1 = time.process_time()
    jobs = parse_squeue_json(squeue)
    t2 = time.process_time()
    plan = reconcile(rows, jobs, targets, Policy(launchable=frozenset(targets)), utcnow())
    t3 = time.process_time()
    engine.dispose()
    if plan.submissions or plan.cancels:
        raise RuntimeError(f"a steady cluster of {count} jobs planned changes: {plan}")
    return {"registry_ms": (t1 - t0) * 1e3, "parse_ms": (t2 - t1) * 1e3, "plan_ms": (t3 - t2) * 1e3}


def make_supervisor(db: Path, bin_dir: Path) -> Supervisor:
    """The real Supervisor on DB, its Slurm the stand-ins in BIN_DIR (one for every pass, as in service)."""
    from launcher.core.catalog import Catalog
    from launcher.core.db import open_engine
    from launcher.core.settings import Settings
    from launcher.slurm.client import SlurmClient
    from launcher.control.supervisor import Supervisor

    slurm = SlurmClient(env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    return Supervisor(open_engine(f"sqlite:///{db}"), slurm, Catalog("bench", {}), Settings(), submit=_no_submit)


def supervisor_pass(supervisor: Supervisor) -> dict[str, float]:
    """One real Supervisor.run_once against the stand-in squeue: its CPU and Slurm commands."""
    summary = supervisor.run_once()
    if summary.error or summary.submitted or summary.cancelled:
        raise RuntimeError(f"supervisor pass did not hold steady: {summary}")
    return {"total_ms": summary.cpu_s * 1e3, "wall_ms": summary.wall_s * 1e3,
            "queries": float(summary.slurm_commands)}


def _no_submit(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a steady cluster must not submit")


def up_cost(work: Path, bin_dir: Path) -> dict[str, float] | None:
    """`llm-launch up` with the stand-in sbatch: wall and CPU of the whole command."""
    if importlib.util.find_spec("launcher.control.deploy") is None:
        return None
    config = work / "up.toml"
    config.write_text(f'[cluster]\nlog_dir = "{work / "logs"}"\n')
    launcher = Path(sys.executable).parent / "llm-launch"
    argv = [str(launcher), "--db", str(work / "up.db"), "--config", str(config), "up",
            "smollm2-135m", "--catalog", "demo"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
           "LLM_LAUNCH_CHAT_MODEL": "/models/chat", "LLM_LAUNCH_EMBED_MODEL": "/models/embed"}
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = child.stdout.read().decode() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"llm-launch up failed: {out[-400:]}")
    inner = next((l.rsplit("overhead", 1)[1].strip().rstrip("s").strip() for l in out.splitlines()
                  if "launcher overhead" in l), "nan")
    return {"wall_ms": wall * 1e3, "cpu_ms": (usage.ru_utime + usage.ru_stime) * 1e3,
            "submit_ms": float(inner) * 1e3}


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.control_plane WORK [ROUNDS]`: one JSON object with every round."""
    args = argv if argv is not None else sys.argv[1:]
    work, rounds, count = Path(args[0]), int(args[1]) if len(args) > 1 else 2, 1000
    work.mkdir(parents=True, exist_ok=True)
    db = work / "control.db"
    fill_registry(db, count, __import__("launcher.core.db", fromlist=["utcnow"]).utcnow())
    bin_dir = fake_slurm(work, count)
    squeue = (work / "squeue.json").read_text()
    supervisor = make_supervisor(db, bin_dir)
    supervisor_pass(supervisor)  # the first pass pays imports and cold caches
    pure_pass(db, squeue, count)
    # As `llm-launch supervise` and the router do once started: what is loaded lives as long as
    # the process, so the collector's full passes need not walk it.
    gc.collect()
    gc.freeze()
    result: dict[str, list[dict[str, float]]] = {"reconcile": [], "up": []}
    for _ in range(rounds):
        result["reconcile"].append({**supervisor_pass(supervisor), **pure_pass(db, squeue, count)})
        up = up_cost(work, bin_dir)
        if up is not None:
            result["up"].append(up)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
