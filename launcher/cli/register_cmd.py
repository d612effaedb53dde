"""`llm-launch register` (a server announces itself to the router) and `llm-launch tokens`."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

import click

from launcher.cli.context import CliContext, echo_table
from launcher.cli.errors import cli_errors
from launcher.cli.options import DateType, Unlimited, future
from launcher.core.tokens import create_token, list_tokens, revoke_token
from launcher.engines.table import DEFAULT_SECRET_ENV, KINDS


@click.command()
@click.option("--model", required=True, help="Public model name the server answers to.")
@click.option("--url", required=True, help="Where the router reaches the server, e.g. http://$(hostname):8001.")
@click.option("--token", envvar="LLM_LAUNCH_REGISTRATION_TOKEN", required=True,
              help="Registration token from an admin (better: env LLM_LAUNCH_REGISTRATION_TOKEN, "
                   "which `ps` does not show).")
@click.option("--kind", type=click.Choice(KINDS), default="chat", show_default=True)
@click.option("--secret-env", default=DEFAULT_SECRET_ENV, show_default=True,
              help="Environment variable holding the server's API key, which the router sends it.")
@click.option("--router", "router_url", envvar="LLM_LAUNCH_ROUTER_URL",
              help="Router base URL (default: settings cluster.router_url).")
@click.option("--deregister", is_flag=True, help="Stop routing to the server (use in an EXIT trap).")
@click.pass_obj
def register(ctx: CliContext, model: str, url: str, token: str, kind: str, secret_env: str,
             router_url: str | None, deregister: bool) -> None:
    """Register a server you started yourself (e.g. inside your sbatch script) with the router."""
    base = (router_url or ctx.settings.cluster.router_url).rstrip("/")
    body: dict[str, Any] = {"token": token, "url": url, "model": model}
    if deregister:
        post_json(f"{base}/internal/deregister", body)
        click.echo(f"deregistered {url}")
        return
    body.update(kind=kind, node=socket.gethostname(), secret=os.environ.get(secret_env) or None)
    answer = post_json(f"{base}/internal/register", body)
    click.echo(f"registered {model} at {url} (deployment {answer.get('deployment_id')})")


def post_json(url: str, body: dict[str, Any], timeout_s: float = 15.0) -> dict[str, Any]:
    """POST BODY as JSON; the router's error envelope becomes a one-line CLI error."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    # HTTPError is a URLError: the inner handler must see it first.
    with (cli_errors(urllib.error.URLError, OSError,
                     message=lambda exc: f"router not reachable at {url}: {getattr(exc, 'reason', exc)}"),
          cli_errors(urllib.error.HTTPError, message=_refused)):
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
            return answer


def _refused(exc: urllib.error.HTTPError) -> str:
    return f"router refused ({exc.code}): {_message(exc.read())}"


def _message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace")[:200] or "no details"


@click.group()
def tokens() -> None:
    """Registration tokens that let users register servers they start themselves."""


@tokens.command()
@click.option("--model", help="The one public model name servers may register with the token.")
@click.option("--any-model", is_flag=True,
              help="Allow any model name: the holder can add replicas to every existing model.")
@click.option("--expires", type=DateType(), help="Expiry (UTC), e.g. 2026-12-31; default: never.")
@click.pass_obj
def create(ctx: CliContext, model: str | None, any_model: bool, expires: datetime | Unlimited | None) -> None:
    """Create a registration token and print it once (only its hash is stored)."""
    if model is None and not any_model:
        raise click.ClickException("give --model NAME (the model the token may register), or --any-model "
                               "for a token that may register servers under every model name")
    if model is not None and any_model:
        raise click.ClickException("give --model NAME or --any-model, not both")
    expiry = future(expires)
    with ctx.session() as session:
        token, row = create_token(session, model, expiry if isinstance(expiry, datetime) else None)
        click.echo(token)
        click.echo(f"token {row.id}: " + (f"model {model}" if model else "any model")
                   + (f", expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else ""), err=True)


@tokens.command("list")
@click.pass_obj
def list_(ctx: CliContext) -> None:
    """List registration tokens (never the tokens themselves)."""
    with ctx.session() as session:
        rows = list_tokens(session)
    echo_table(["id", "model", "expires", "created"],
               [[r.id, r.model or "any", r.expires_at, r.created_at] for r in rows])


@tokens.command()
@click.argument("token_id", metavar="ID", type=int)
@click.pass_obj
def revoke(ctx: CliContext, token_id: int) -> None:
    """Delete registration token ID; servers already registered with it stay."""
    with ctx.session() as session:
        if not revoke_token(session, token_id):
            raise click.ClickException(f"no registration token with id {token_id}")
    click.echo(f"revoked registration token {token_id}")
