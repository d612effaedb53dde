"""What every subcommand shares: settings and the registry, opened lazily and once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import click
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session

from launcher.cli.errors import cli_errors
from launcher.core.db import RegistryError, open_engine, resolve_db_url, session_factory
from launcher.core.settings import Settings, SettingsError, load_settings
from launcher.core.settings_overrides import with_overrides


@dataclass
class CliContext:
    db_option: str | None = None
    config_option: str | None = None
    overrides: tuple[str, ...] = ()
    _settings: Settings | None = field(default=None, repr=False)
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        """The settings file, loaded once; a broken file is a one-line CLI error."""
        if self._settings is None:
            with cli_errors(SettingsError):
                self._settings = with_overrides(load_settings(self.config_option), self.overrides)
        return self._settings

    @property
    def db_url(self) -> str:
        return resolve_db_url(self.db_option, self.settings.database)

    @property
    def engine(self) -> Engine:
        """The registry engine, created and migrated on first use."""
        if self._engine is None:
            with cli_errors(RegistryError, OperationalError,
                            message=lambda exc: f"registry {_shown(self.db_url)}: {_one_line(exc)}"):
                self._engine = open_engine(self.db_url)
        return self._engine

    def session(self) -> Session:
        """A new session on the registry."""
        return session_factory(self.engine)()


def _shown(url: str) -> str:
    """URL without its password (a PostgreSQL URL may carry one)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _one_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__


def echo_json(value: Any) -> None:
    """Print VALUE as indented JSON (datetimes as ISO 8601 UTC)."""
    click.echo(json.dumps(value, indent=2, default=_json_default))


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def echo_table(headers: list[str], rows: list[list[object]]) -> None:
    """Print a plain aligned table."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
