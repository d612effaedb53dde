"""`llm-launch register` (a server announces itself to the router) and `llm-launch tokens`."""

from __future__ import annotations

import getpass
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

TOKEN_ENV = "LLM_LAUNCH_REGISTRATION_TOKEN"


@click.command()
@click.option("--model", help="Public model name the server answers to.")
@click.option("--url", help="Where the router reaches the server, e.g. http://$(hostname):$port.")
@click.option("--token", envvar=TOKEN_ENV,
              help=f"Registration token from an admin (better: env {TOKEN_ENV}, which `ps` does not show).")
@click.option("--kind", type=click.Choice(KINDS), default="chat", show_default=True)
@click.option("--secret-env", default=DEFAULT_SECRET_ENV, show_default=True,
              help="Environment variable holding the server's API key, which the router sends it.")
@click.option("--no-secret", is_flag=True,
              help="Register a server that takes no API key: anyone who reaches its URL can use it.")
@click.option("--router", "router_url", envvar="LLM_LAUNCH_ROUTER_URL",
              help="Router base URL (default: settings cluster.router_url).")
@click.option("--deregister", "deployment_id", metavar="ID",
              help="Stop routing to deployment ID, the one register printed (use in an EXIT trap).")
@click.pass_obj
def register(ctx: CliContext, model: str | None, url: str | None, token: str | None, kind: str, secret_env: str,
             no_secret: bool, router_url: str | None, deployment_id: str | None) -> None:
    """Register a server you started yourself (e.g. inside your sbatch script) with the router.

    Prints the deployment id on stdout (what --deregister takes); inside a Slurm job it sends the
    job id, so the server is removed when the job ends, even if it could not deregister.
    """
    if not token:
        raise click.ClickException(f"no registration token: set {TOKEN_ENV} (or pass --token)")
    base = (router_url or ctx.settings.cluster.router_url).rstrip("/")
    if deployment_id is not None:
        if not deployment_id.isdigit():
            raise click.ClickException(f"--deregister takes the deployment id that register printed, not {deployment_id!r}")
        post_json(f"{base}/internal/deregister", {"token": token, "deployment_id": int(deployment_id)})
        click.echo(f"deregistered deployment {deployment_id}", err=True)
        return
    if not model or not url:
        raise click.ClickException("give --model NAME and --url URL (or --deregister ID)")
    answer = post_json(f"{base}/internal/register", _claim(token, model, url, kind, _secret(secret_env, no_secret, url)))
    click.echo(answer.get("deployment_id"))
    click.echo(f"registered {model} at {url} (deployment {answer.get('deployment_id')})", err=True)


def _secret(secret_env: str, no_secret: bool, url: str) -> str | None:
    """The server's API key from SECRET_ENV; none only when asked for explicitly."""
    secret = os.environ.get(secret_env) or None
    if secret is None and not no_secret:
        raise click.ClickException(
            f"${secret_env} is empty: without a secret anyone who can reach {url} uses your server (and GPU) "
            f"without a key; start the server with a secret in ${secret_env}, or pass --no-secret")
    if secret is not None and no_secret:
        raise click.ClickException(f"--no-secret, but ${secret_env} is set: unset it or drop --no-secret")
    return secret


def _claim(token: str, model: str, url: str, kind: str, secret: str | None) -> dict[str, Any]:
    """What the router records: the server, and the Slurm job (and its user) it runs in, if any."""
    job_id = os.environ.get("SLURM_JOB_ID") or None
    return {"token": token, "url": url, "model": model, "kind": kind, "node": socket.gethostname(),
            "secret": secret, "job_id": job_id, "owner": os.environ.get("SLURM_JOB_USER") or _user()}


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return None


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
                   + (f", expires {row.expires_at:%Y-%m-%d %H:%M:%S} UTC" if row.expires_at else ""), err=True)


@tokens.command("list")
@click.pass_obj
def list_(ctx: CliContext) -> None:
    """List registration tokens (never the tokens themselves)."""
    with ctx.session() as session:
        rows = list_tokens(session)
    echo_table(["id", "model", "expires", "created"],
               [[r.id, r.model or "any", _second(r.expires_at), _second(r.created_at)] for r in rows])


@tokens.command()
@click.argument("token_id", metavar="ID", type=int)
@click.pass_obj
def revoke(ctx: CliContext, token_id: int) -> None:
    """Delete registration token ID; servers already registered with it stay."""
    with ctx.session() as session:
        if not revoke_token(session, token_id):
            raise click.ClickException(f"no registration token with id {token_id}")
    click.echo(f"revoked registration token {token_id}")


def _second(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment else "never"
