"""The benchmark suite runs end to end in its smallest mode and writes its table (no timing checks)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")


def row(text: str, label: str) -> list[str]:
    """The cells of the table row starting with LABEL."""
    line = next(l for l in text.splitlines() if l.startswith(f"| {label}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_smoke_run_writes_a_table_with_every_target(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert text.strip() == done.stdout.strip()
    assert "nproc=" in text and "python -m bench.run --smoke" in text
    header = row(text, "figure")
    assert {"direct", "floor", "router", "router-noacct"} <= set(header)
    # every target answered every request of every phase
    targets = len(header) - 3  # less the label and the two ratio columns
    errors = row(text, "errors (all phases)")[1:1 + targets]
    assert errors == ["0.00"] * targets, errors
    assert "| router CPU per chat request vs floor" in text


def test_workers_bench_runs_and_every_router_answers(pg_url: str, redis_url: str) -> None:
    # pg_url only proves the server is there (the bench makes a database of its own)
    done = subprocess.run([sys.executable, "-m", "bench.workers", "--seconds", "1", "--rounds", "1",
                           "--connections", "8", "--redis", redis_url],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(("shared", "--no-accounting"))]
    assert len(rows) == 4, done.stdout
    assert all(r[-2] == "0" for r in rows), done.stdout  # no errors at any router
