"""`llm-launch db`: explicit schema management."""

from __future__ import annotations

import click

from launcher.cli.context import CliContext
from launcher.cli.errors import cli_errors
from launcher.core.db import RegistryError, open_engine
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
