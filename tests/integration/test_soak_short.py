"""The soak's short mode (bench/soak.py --short, about 60 s): a steady mixed load on the real router
process with clients hanging up at random. The full 10-minute soak is `python -m bench.soak`
(docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_short_soak_has_no_errors_flat_resources_and_an_exact_ledger(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "bench.soak", "--short", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["error_count"] == 0, report["errors"]
    assert report["disconnects_injected"] > 0
    assert report["ledger"] == report["seen"]  # every token the backends reported, no more
    assert report["ledger_quitters"] == report["disconnects_injected"]  # hung-up streams are charged too
    rss, fds = report["rss_kib"], report["fds"]
    assert fds[-1] <= fds[0] + 4, fds  # no descriptor leak
    assert rss[-1] <= rss[0] * 1.25 + 8192, rss  # no steady growth
