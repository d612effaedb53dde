"""`llm-launch keys`: personal API keys and their limits."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import click

from launcher.cli.context import CliContext, echo_json, echo_table
from launcher.cli.errors import cli_errors
from launcher.cli.options import UNLIMITED, DateType, LimitType, Unlimited, future
from launcher.core.keys import LIMIT_FIELDS, KeyRecord, KeyStoreError, create_key, list_keys
from launcher.core.keys import revoke_key, update_key
from launcher.core.settings import KeyLimits

LIMIT_HELP = {
    "rpm": "Requests per minute.",
    "tpm": "Tokens per minute (prompt + completion).",
    "max_parallel": "Requests in flight at once.",
    "daily_tokens": "Token budget per UTC day.",
    "monthly_tokens": "Token budget per calendar month.",
    "daily_audio_seconds": "Seconds of audio per UTC day.",
}


def limit_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by `keys create` and `keys update`."""
    for name in reversed(LIMIT_FIELDS):
        flag = "--" + name.replace("_", "-")
        func = click.option(flag, name, type=LimitType(), help=LIMIT_HELP[name])(func)
    func = click.option("--models", help="Comma list of models this key may use ('all' for any).")(func)
    func = click.option("--expires", type=DateType(), help="Expiry (UTC), e.g. 2026-12-31; 'never'.")(func)
    func = click.option("--account", help="Slurm account or project the usage is billed to.")(func)
    func = click.option("--tier", help="Named tier from the settings file supplying the limits.")(func)
    return func


@click.group()
def keys() -> None:
    """Create, list, update and revoke API keys."""


@keys.command()
@click.argument("name")
@limit_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object with a `key` field.")
@click.pass_obj
def create(ctx: CliContext, /, name: str, as_json: bool, **options: Any) -> None:
    """Create a key for NAME and print it once: it is stored only as a hash."""
    base = _tier_limits(ctx, options.get("tier")) or ctx.settings.key_defaults
    given = {f: options[f] for f in LIMIT_FIELDS if options[f] is not None}
    limits = dataclasses.replace(base, **{f: _db_value(v) for f, v in given.items()})
    models = _models(options["models"])
    allowed = None if isinstance(models, Unlimited) else models
    with ctx.session() as session:
        with cli_errors(KeyStoreError):
            key, record = create_key(
                session, name, limits=limits, models=allowed,
                account=options["account"], tier=options["tier"],
                expires_at=_db_value(future(options["expires"])),
            )
    if as_json:
        echo_json({"key": key, **_as_dict(record)})
        return
    click.echo(key)
    click.echo(f"(key {record.id} for {name!r}: shown once, store it now)", err=True)


@keys.command("update")
@click.argument("ident", metavar="ID|NAME")
@limit_options
@click.pass_obj
def update(ctx: CliContext, /, ident: str, **options: Any) -> None:
    """Change the limits, models, account or expiry of a key; 'none' removes a limit."""
    changes: dict[str, object] = {
        f: _db_value(options[f]) for f in LIMIT_FIELDS if options[f] is not None
    }
    if options["tier"] is not None:
        tier_limits = _tier_limits(ctx, options["tier"])
        assert tier_limits is not None
        changes = {**dataclasses.asdict(tier_limits), **changes, "tier": options["tier"]}
    if options["models"] is not None:
        models = _models(options["models"])
        changes["models"] = None if isinstance(models, Unlimited) else ",".join(models)
    if options["expires"] is not None:
        changes["expires_at"] = _db_value(future(options["expires"]))
    if options["account"] is not None:
        changes["account"] = options["account"] or None
    if not changes:
        raise click.UsageError("nothing to change: give at least one limit, --models, --expires, --account or --tier")
    with ctx.session() as session:
        with cli_errors(KeyStoreError):
            record = update_key(session, ident, changes)
    click.echo(f"updated key {record.id} ({record.name})")


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def list_(ctx: CliContext, as_json: bool) -> None:
    """List keys (their prefixes only, never the keys)."""
    with ctx.session() as session:
        records = list_keys(session)
    if as_json:
        echo_json([_as_dict(r) for r in records])
        return
    echo_table(
        ["id", "name", "prefix", "models", "account", "limits", "expires", "status"],
        [[r.id, r.name, r.prefix + "…", ",".join(r.models) if r.models else "all", r.account,
          _limits_text(r.limits), r.expires_at and f"{r.expires_at:%Y-%m-%d %H:%M:%S}",
          "revoked" if r.revoked_at else "active"] for r in records],
    )


@keys.command()
@click.argument("ident", metavar="ID|NAME")
@click.pass_obj
def revoke(ctx: CliContext, ident: str) -> None:
    """Revoke a key; the router refuses it within a second."""
    with ctx.session() as session:
        with cli_errors(KeyStoreError):
            record = revoke_key(session, ident)
    click.echo(f"revoked key {record.id} ({record.name})")


def _tier_limits(ctx: CliContext, tier: str | None) -> KeyLimits | None:
    if tier is None:
        return None
    if tier not in ctx.settings.tiers:
        known = ", ".join(sorted(ctx.settings.tiers)) or "none defined"
        raise click.BadParameter(f"unknown tier {tier!r} (known: {known})", param_hint="--tier")
    return ctx.settings.tiers[tier]


def _models(text: str | None) -> list[str] | Unlimited:
    if text is None or text.strip().lower() in ("all", "*"):
        return UNLIMITED
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise click.BadParameter("give at least one model name, or 'all'", param_hint="--models")
    return models


def _db_value(value: object) -> Any:
    return None if isinstance(value, Unlimited) else value


def _limits_text(limits: KeyLimits) -> str:
    parts = [f"{k}={v}" for k, v in dataclasses.asdict(limits).items() if v is not None]
    return " ".join(parts) or "-"


def _as_dict(record: KeyRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data.pop("key_hash")
    data["models"] = list(record.models) if record.models is not None else None
    return data
