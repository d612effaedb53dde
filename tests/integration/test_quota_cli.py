"""Limits at `keys create` / `keys update`: bad values are clear CLI errors, good ones stick."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main


def run(db: Path, *args: str, config: Path | None = None) -> tuple[int, str]:
    prefix = ["--db", str(db)] + (["--config", str(config)] if config else [])
    result = CliRunner().invoke(main, [*prefix, *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--rpm", "-5"), ("--tpm", "abc"), ("--max-parallel", "1.5"), ("--daily-tokens", "-1"),
     ("--monthly-tokens", "1e6"), ("--daily-audio-seconds", "ten")],
)
def test_negative_or_non_numeric_limits_are_refused_by_name(tmp_path: Path, flag: str, value: str) -> None:
    code, out = run(tmp_path / "r.db", "keys", "create", "dave", flag, value)
    assert code == 2
    assert f"Invalid value for '{flag}'" in out and "whole number >= 0" in out
    code, out = run(tmp_path / "r.db", "keys", "list", "--json")
    assert json.loads(out) == []  # nothing was created


def test_bad_limit_as_a_real_subprocess(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "from launcher.cli import main; main()",
                           "--db", str(tmp_path / "r.db"), "keys", "create", "eve", "--tpm", "-3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'-3' is not a whole number" in done.stderr
    assert "Traceback" not in done.stderr


def test_limits_from_flags_tiers_and_defaults_and_none_removes(tmp_path: Path) -> None:
    config = tmp_path / "settings.toml"
    config.write_text("[key_defaults]\nrpm = 60\n\n[tiers.student]\ntpm = 5000\ndaily_tokens = 100000\n")
    db = tmp_path / "r.db"
    code, out = run(db, "keys", "create", "fay", "--json", "--daily-audio-seconds", "600",
                    "--account", "proj7", config=config)
    assert code == 0
    created = json.loads(out)
    assert created["limits"]["rpm"] == 60 and created["limits"]["daily_audio_seconds"] == 600
    assert created["account"] == "proj7"
    assert run(db, "keys", "update", "fay", "--tier", "student", "--rpm", "none", config=config)[0] == 0
    limits = json.loads(run(db, "keys", "list", "--json", config=config)[1])[0]["limits"]
    assert limits["rpm"] is None and limits["tpm"] == 5000 and limits["daily_tokens"] == 100000
    code, out = run(db, "keys", "update", "fay", "--monthly-tokens", "-9", config=config)
    assert code == 2 and "--monthly-tokens" in out
