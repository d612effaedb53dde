"""`llm-launch db`: explicit schema management."""

from __future__ import annotations

import click

from launcher.cli.context import CliContext
from launcher.cli.errors import cli_errors
from launcher.core.copy import CopyError, copy_registry
from launcher.core.db import RegistryError, open_engine, resolve_db_url
from launcher.core.migrate import current_revision, head_revision, upgrade_if_needed


@click.group()
def db() -> None:
    """Manage the registry database."""


@db.command()
@click.pass_obj
def upgrade(ctx: CliContext) -> None:
    """Create the registry or migrate it to the newest schema."""
    with cli_errors(RegistryError):
        engine = open_engine(ctx.db_url, migrate=False)
        applied = upgrade_if_needed(engine)
    state = "migrated to" if applied else "already at"
    click.echo(f"registry {engine.url.render_as_string()} {state} revision {head_revision(engine)}")


@db.command()
@click.pass_obj
def current(ctx: CliContext) -> None:
    """Print the registry's schema revision and whether a migration is pending."""
    with cli_errors(RegistryError):
        engine = open_engine(ctx.db_url, migrate=False)
    revision, head = current_revision(engine), head_revision(engine)
    pending = "" if revision == head else f" (newest is {head}: run `llm-launch db upgrade`)"
    click.echo(f"{revision or 'empty'}{pending}")


@db.command()
@click.option("--to", "target_url", required=True, metavar="URL",
              help="The empty database to copy into, e.g. postgresql+psycopg://llm@db1/llm_launch.")
@click.pass_obj
def copy(ctx: CliContext, target_url: str) -> None:
    """Copy the registry (keys, deployments, tokens, usage: every table) into an empty database."""
    target_url = resolve_db_url(target_url)
    if target_url == ctx.db_url:
        raise click.ClickException("--to names the registry itself; give the new database's URL")
    source = ctx.engine
    with cli_errors(RegistryError, CopyError):
        target = open_engine(target_url, migrate=False)
        try:
            counts = copy_registry(source, target)
        finally:
            target.dispose()
    for table, rows in counts.items():
        click.echo(f"{table:<22} {rows:>10} rows")
    click.echo(f"copied {sum(counts.values())} rows into {target.url.render_as_string()}; "
               f"point `--db`/`database` at it now")
