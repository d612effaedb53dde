"""`llm-launch usage` on a real ledger: groupings, date range and the three formats agree."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main
from launcher.core.db import open_engine
from router.accounting.seam import Usage
from router.accounting.ledger import Ledger

MAR14 = datetime(2026, 3, 14, 9, tzinfo=UTC).timestamp()
MAR15 = MAR14 + 86400
APR01 = datetime(2026, 4, 1, 9, tzinfo=UTC).timestamp()
WRITES = [  # (when, key, account, model, usage)
    (MAR14, 1, "proj-a", "qwen", Usage(prompt_tokens=10, completion_tokens=20, reasoning_tokens=5)),
    (MAR14, 1, "proj-a", "qwen", Usage(prompt_tokens=1, completion_tokens=2, reasoning_tokens=0)),
    (MAR15, 2, None, "qwen", Usage(prompt_tokens=100, completion_tokens=200, reasoning_tokens=50)),
    (MAR15, 2, None, "whisper", Usage(audio_seconds=12.5)),
    (APR01, 1, "proj-a", "qwen", Usage(prompt_tokens=1000, completion_tokens=1000)),
]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("usage") / "registry.db"
    ledger = Ledger(open_engine(f"sqlite:///{path}"))
    for when, key, account, model, usage in WRITES:
        ledger.record("r", key, f"user{key}", account, model, 200, usage, "b", when, when)
    asyncio.run(ledger.flush())
    return path


def usage(db: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--db", str(db), "usage", "--since", "2026-03-01",
                                       "--until", "2026-03-31", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    ("by", "groups"),
    [("key", [(1, "user1", "proj-a"), (2, "user2", None)]), ("model", [("qwen",), ("whisper",)]),
     ("day", [("2026-03-14",), ("2026-03-15",)]), ("account", [(None,), ("proj-a",)])],
)
def test_json_rows_have_grouping_fields_and_exact_sums(db: Path, by: str, groups: list[tuple[object, ...]]) -> None:
    rows = json.loads(usage(db, "--by", by, "--format", "json"))
    fields = {"key": ("key_id", "key_name", "account")}.get(by, (by,))
    assert [tuple(r[f] for f in fields) for r in rows] == groups
    assert sum(r["requests"] for r in rows) == 4
    assert sum(r["prompt_tokens"] for r in rows) == 111
    assert sum(r["completion_tokens"] for r in rows) == 222
    assert sum(r["reasoning_tokens"] for r in rows) == 55
    assert sum(r["audio_seconds"] for r in rows) == 12.5


def test_table_csv_and_json_agree(db: Path) -> None:
    as_json = json.loads(usage(db, "--by", "model", "--format", "json"))
    as_csv = list(csv.DictReader(io.StringIO(usage(db, "--by", "model", "--format", "csv"))))
    assert [(r["model"], int(r["prompt_tokens"]), float(r["audio_seconds"])) for r in as_csv] == \
        [(r["model"], r["prompt_tokens"], r["audio_seconds"]) for r in as_json]
    table = usage(db, "--by", "model").splitlines()
    total = table[-1].split()
    assert total[0] == "TOTAL"
    assert total[1:] == ["4", "0", "0", "111", "222", "55", "333", "12.5"]


def test_range_defaults_and_errors(db: Path) -> None:
    result = CliRunner().invoke(main, ["--db", str(db), "usage", "--since", "2026-04-01",
                                       "--until", "2026-04-30", "--format", "json"])
    assert json.loads(result.output)[0]["total_tokens"] == 2000
    result = CliRunner().invoke(main, ["--db", str(db), "usage", "--since", "2026-05-01",
                                       "--until", "2026-04-01"])
    assert result.exit_code == 2 and "is after --until" in result.output
    result = CliRunner().invoke(main, ["--db", str(db), "usage", "--since", "yesterday"])
    assert result.exit_code == 2 and "yesterday" in result.output
