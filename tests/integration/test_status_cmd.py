"""`llm-launch status` on a real registry file, with and without the router's live view."""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main
from launcher.cli.status_cmd import duration_text
from launcher.control.leadership import leadership_for
from launcher.core.db import open_engine, session_factory, utcnow
from launcher.core.schema import Deployment, ModelTarget

NO_ROUTER = "http://127.0.0.1:9"  # the discard port: nothing answers


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "registry.db"
    engine = open_engine(f"sqlite:///{path}")
    now = utcnow()
    rows = [
        Deployment(model="qwen", state="ready", job_id="41", node="gpu01", url="http://gpu01:20001",
                   end_time=now + timedelta(hours=2, minutes=30), ready_at=now),
        Deployment(model="qwen", state="pending", job_id="42", reason="Priority", predecessor_id=1,
                   expected_start=now.replace(hour=13, minute=5, second=0, microsecond=0)),
        Deployment(model="whisper", state="gone", job_id="40", reason="TIMEOUT"),
    ]
    targets = [ModelTarget(model="qwen", desired_replicas=1, updated_at=now),
               ModelTarget(model="whisper", desired_replicas=1, quick_failures=3, updated_at=now,
                           stopped_reason="stopped after 3 quick failures in a row; last: FAILED (exit code 1)")]
    with session_factory(engine)() as session:
        for row in rows:
            row.created_at = row.updated_at = now
        session.add_all([*rows, *targets])
        session.commit()
    engine.dispose()
    return path


def run(db: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--db", str(db), "status", "--router", NO_ROUTER, *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_table_shows_slurm_reason_time_left_links_and_stopped_models(db: Path) -> None:
    out = run(db)
    ready = next(line for line in out.splitlines() if " 41 " in line)
    pending = next(line for line in out.splitlines() if " 42 " in line)
    assert "ready" in ready and "gpu01" in ready and "http://gpu01:20001" in ready and "next #2" in ready
    assert "2h29m" in ready or "2h30m" in ready
    assert "pending: replacement queued in Slurm (reason Priority, expected start 13:05:00 UTC)" in pending
    assert "after #1" in pending
    assert "qwen: 1 ready, 1 starting, 1 wanted" in out
    assert "whisper: 0 ready, 0 starting, 1 wanted; STOPPED: stopped after 3 quick failures" in out
    assert " 40 " not in out  # gone rows only with --all
    assert "health and in-flight unknown" in out


def test_all_includes_gone_deployments_with_slurms_final_state(db: Path) -> None:
    assert "gone (TIMEOUT)" in run(db, "--all")


def test_json_has_every_field_and_no_router_view(db: Path) -> None:
    report = json.loads(run(db, "--json"))
    first, second = report["deployments"]
    assert report["router_reachable"] is False
    assert (first["job_id"], first["successor_id"], first["health"], first["in_flight"]) == ("41", 2, None, None)
    assert (second["state"], second["reason"], second["predecessor_id"]) == ("pending", "Priority", 1)
    assert 2 * 3600 <= first["time_left_s"] + 60 <= 2 * 3600 + 31 * 60
    counts = {m["model"]: (m["ready_replicas"], m["starting_replicas"]) for m in report["models"]}
    assert counts == {"qwen": (1, 1), "whisper": (0, 0)}


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (12, "12s"), (250, "4m10s"), (11100, "3h05m"),
                                               (93600, "1d02h")])
def test_duration_text(seconds: int | None, text: str) -> None:
    assert duration_text(seconds) == text


def test_status_names_the_acting_supervisor_or_says_none_runs(db: Path) -> None:
    assert "supervisor: none running: nothing starts, replaces or scales deployments" in run(db)
    assert json.loads(run(db, "--json"))["supervisor"] is None
    leader = leadership_for(open_engine(f"sqlite:///{db}"))
    assert leader.try_lead()
    try:
        assert f"supervisor: {socket.gethostname()} pid {os.getpid()} leads" in run(db)
        assert json.loads(run(db, "--json"))["supervisor"] == f"{socket.gethostname()} pid {os.getpid()}"
    finally:
        leader.release()
