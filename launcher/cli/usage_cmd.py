"""`llm-launch usage`: who used what, from the usage ledger."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, date, datetime
from typing import Any

import click

from launcher.cli.context import CliContext, echo_json, echo_table
from launcher.control.usage_report import GROUP_FIELDS, GROUPINGS, columns, month_start, totals, usage_rows

DAY = click.DateTime(formats=["%Y-%m-%d"])


@click.command()
@click.option("--since", type=DAY, help="First UTC day, e.g. 2026-03-01 (default: start of this month).")
@click.option("--until", type=DAY, help="Last UTC day, inclusive (default: today).")
@click.option("--by", "by", type=click.Choice(GROUPINGS), default="key", show_default=True,
              help="One row per key, model, day or Slurm account.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format.")
@click.pass_obj
def usage(ctx: CliContext, since: datetime | None, until: datetime | None, by: str, fmt: str) -> None:
    """Report usage: requests, prompt/completion/reasoning tokens and audio seconds.

    The ledger is written by the router every `ledger_flush_s` (1 s by default), so the last
    second of traffic may not be in the report yet.
    """
    today = datetime.now(UTC).date()
    first, last = (since.date() if since else month_start(today)), (until.date() if until else today)
    if first > last:
        raise click.BadParameter(f"--since {first} is after --until {last}", param_hint="--since")
    with ctx.session() as session:
        rows = usage_rows(session, first, last, by)
    if fmt == "json":
        echo_json(rows)
    elif fmt == "csv":
        _write_csv(rows, by)
    else:
        _print_table(rows, by, first, last)


def _write_csv(rows: list[dict[str, Any]], by: str) -> None:
    writer = csv.DictWriter(sys.stdout, fieldnames=columns(by), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def _print_table(rows: list[dict[str, Any]], by: str, first: date, last: date) -> None:
    names = columns(by)
    body: list[list[object]] = [[r[c] if r[c] is not None else "-" for c in names] for r in rows]
    total = totals(rows)
    label: list[object] = ["TOTAL", *[""] * (len(GROUP_FIELDS[by]) - 1)]
    body.append(label + [total[c] for c in names[len(label):]])
    click.echo(f"usage {first} .. {last} (UTC), by {by}")
    echo_table(names, body)
