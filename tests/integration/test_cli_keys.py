"""`llm-launch keys` and `db` through Click's runner and as a real subprocess, on real SQLite."""

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main
from launcher.core.keys import hash_key


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "registry.db"


def run(db: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--db", str(db), *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_created_key_is_shown_once_and_stored_only_as_hash(db: Path) -> None:
    code, out = run(db, "keys", "create", "alice", "--json", "--models", "m1,m2", "--rpm", "30")
    assert code == 0
    created = json.loads(out)
    key = created["key"]
    assert key.startswith("sk-llm-") and len(key) >= 7 + 43  # >= 256 bits of entropy
    assert created["models"] == ["m1", "m2"] and created["limits"]["rpm"] == 30
    raw = db.read_bytes()
    assert key.encode() not in raw
    rows = sqlite3.connect(db).execute("select key_hash, prefix from api_keys").fetchall()
    assert rows == [(hash_key(key), key[:13])]
    code, listing = run(db, "keys", "list", "--json")
    assert key not in listing and json.loads(listing)[0]["prefix"] == key[:13]


def test_registry_file_is_private_and_in_wal_mode(db: Path) -> None:
    code, out = run(db, "db", "upgrade")
    assert code == 0 and "revision" in out
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    assert sqlite3.connect(db).execute("pragma journal_mode").fetchone()[0] == "wal"
    code, out = run(db, "db", "upgrade")
    assert "already at" in out


def test_revoke_update_and_errors(db: Path) -> None:
    run(db, "keys", "create", "bob")
    assert run(db, "keys", "update", "bob", "--tpm", "1000", "--account", "proj42")[0] == 0
    listed = json.loads(run(db, "keys", "list", "--json")[1])[0]
    assert listed["limits"]["tpm"] == 1000 and listed["account"] == "proj42"
    assert run(db, "keys", "revoke", "bob")[0] == 0
    assert json.loads(run(db, "keys", "list", "--json")[1])[0]["revoked_at"] is not None
    code, out = run(db, "keys", "revoke", "nobody")
    assert code == 1 and "no key with id or name 'nobody'" in out
    code, out = run(db, "keys", "create", "bob")
    assert code == 1 and "already exists" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rpm", "-5"], "'-5' is not a whole number"),
        (["--tpm", "lots"], "'lots' is not a whole number"),
        (["--expires", "2001-01-01"], "is in the past"),
        (["--expires", "tomorrow"], "is not a date"),
        (["--tier", "gold"], "unknown tier 'gold'"),
    ],
)
def test_bad_limits_are_one_line_errors(db: Path, args: list[str], message: str) -> None:
    code, out = run(db, "keys", "create", "carol", *args)
    assert code == 2 and message in out and "Traceback" not in out


def test_cli_as_subprocess_reads_db_from_environment(db: Path) -> None:
    env = {**os.environ, "LLM_LAUNCH_DB": str(db)}
    cli = [str(Path(sys.executable).parent / "llm-launch")]
    made = subprocess.run([*cli, "keys", "create", "dave", "--json"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(made.stdout)["name"] == "dave"
    broken = subprocess.run([*cli, "--db", "/proc/forbidden/x.db", "keys", "list"], env=env, capture_output=True, text=True)
    assert broken.returncode == 1
    assert "cannot open registry" in broken.stderr and "Traceback" not in broken.stderr


def test_backends_add_list_remove(db: Path) -> None:
    code, out = run(db, "backends", "add", "m1", "http://127.0.0.1:9100/", "--kind", "embeddings", "--secret", "s3")
    assert code == 0
    listed = json.loads(run(db, "backends", "list", "--json")[1])
    assert listed[0]["url"] == "http://127.0.0.1:9100" and listed[0]["kind"] == "embeddings"
    assert listed[0]["secret"] is True  # shown as present, never its value
    assert run(db, "backends", "remove", str(listed[0]["id"]))[0] == 0
    assert json.loads(run(db, "backends", "list", "--json")[1]) == []
    code, out = run(db, "backends", "add", "m1", "node12:8000")
    assert code == 1 and "must start with http://" in out
