"""`llm-launch models | render | up | down | logs`: catalog models as Slurm jobs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from launcher.core.catalog import Catalog, CatalogEntry, CatalogError, load_catalog, resolve_catalog_path
from launcher.core.handover_check import handover_problems, time_limits
from launcher.cli.context import CliContext, echo_json, echo_table
from launcher.cli.errors import cli_errors
from launcher.cli.follow import Outcome, breakdown, follow
from launcher.core.db import utcnow
from launcher.control.deploy import find_by_job, job_spec, live_deployments
from launcher.control.deploy import prepare_log_dir, stop_deployments, submit_deployment
from launcher.core.schema import Deployment
from launcher.core.deployments import DeploymentError, DeploymentRecord, mark_gone, to_record
from launcher.core.targets import change_target
from launcher.slurm.render import JobSecrets, RenderError, log_file, render_script
from launcher.slurm.client import SlurmClient, SlurmError
from launcher.slurm.connect import open_slurm

catalog_option = click.option(
    "--catalog", "catalog_path", envvar="LLM_LAUNCH_CATALOG", metavar="PATH",
    help="Model catalog (TOML), or 'production' / 'demo' for the packaged ones.",
)


# The launcher's errors that these commands report as one line (no traceback).
ADMIN_ERRORS = (CatalogError, DeploymentError, RenderError, SlurmError)


def open_catalog(ctx: CliContext, path: str | None) -> Catalog:
    """The catalog named by --catalog, LLM_LAUNCH_CATALOG, settings, or the packaged default."""
    with cli_errors(*ADMIN_ERRORS):
        return load_catalog(resolve_catalog_path(path, ctx.settings.cluster.catalog))


@click.command()
@catalog_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def models(ctx: CliContext, catalog_path: str | None, as_json: bool) -> None:
    """List the catalog's models."""
    catalog = open_catalog(ctx, catalog_path)
    if as_json:
        echo_json([_entry_json(e) for e in catalog.entries.values()])
        return
    default_time = ctx.settings.cluster.default_time
    echo_table(
        ["model", "engine", "kind", "public names", "gpus", "time", "replicas", "weights"],
        [[e.name, e.engine, e.kind, ", ".join(e.public_names), e.gpus * e.nodes,
          e.time or default_time, e.replicas, e.weights] for e in catalog.entries.values()],
    )


def _entry_json(entry: CatalogEntry) -> dict[str, Any]:
    # Field by field: asdict() cannot copy the read-only mappings a catalog entry holds.
    data = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
    data["env"] = dict(entry.env)
    data["names"] = {n.name: {"defaults": _plain(n.defaults)} for n in entry.names}
    return data


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@click.command()
@click.argument("model")
@catalog_option
@click.option("--time", "time_limit", metavar="T", help="Slurm time limit, e.g. 04:00:00.")
@click.pass_obj
def render(ctx: CliContext, model: str, catalog_path: str | None, time_limit: str | None) -> None:
    """Print the sbatch script `up MODEL` would submit (secrets masked)."""
    entry = _entry(ctx, catalog_path, model)
    with cli_errors(*ADMIN_ERRORS):
        spec = job_spec(ctx.settings.cluster, time_limit)
        click.echo(render_script(entry, ctx.settings.cluster, JobSecrets("", ""), spec, mask=True), nl=False)


def _entry(ctx: CliContext, catalog_path: str | None, model: str) -> CatalogEntry:
    catalog = open_catalog(ctx, catalog_path)
    with cli_errors(*ADMIN_ERRORS):
        return catalog.entry(model)


@click.command()
@click.argument("model")
@catalog_option
@click.option("--replicas", type=click.IntRange(1, 64), help="Jobs to start (default: the catalog's replicas, at least 1).")
@click.option("--time", "time_limit", metavar="T", help="Slurm time limit, e.g. 04:00:00 (default: catalog, then cluster).")
@click.option("--wait", is_flag=True, help="Follow the jobs until they serve or fail.")
@click.option("--timeout", "timeout_s", type=float, help="With --wait: give up after this many seconds.")
@click.pass_obj
def up(ctx: CliContext, model: str, catalog_path: str | None, replicas: int | None, time_limit: str | None,
       wait: bool, timeout_s: float | None) -> None:
    """Submit MODEL's server as Slurm job(s) and record them as pending."""
    entry = _entry(ctx, catalog_path, model)
    replicas = replicas or max(entry.replicas, 1)
    with cli_errors(*ADMIN_ERRORS):
        slurm = open_slurm()
    started = time.monotonic()
    records = []
    with cli_errors(*ADMIN_ERRORS), ctx.session() as session:
        for _ in range(replicas):
            records.append(submit_deployment(session, slurm, entry, ctx.settings.cluster,
                                             time_limit=time_limit, now=utcnow()))
        overhead = time.monotonic() - started
        desired = change_target(session, entry.name, now=utcnow(), delta=replicas)
    for record in records:
        click.echo(f"submitted job {record.job_id} for {entry.name} (deployment {record.id}, pending)")
    click.echo(f"{entry.name}: {desired} replica(s) desired; launcher overhead {overhead:.2f} s")
    for line in handover_problems(time_limits({entry.name: entry}, ctx.settings.cluster), ctx.settings.cluster):
        click.echo(f"warning: {line}", err=True)
    if wait:
        _wait(ctx, slurm, entry, records, started, overhead, timeout_s)


def _wait(ctx: CliContext, slurm: SlurmClient, entry: CatalogEntry, records: list[DeploymentRecord],
          started: float, overhead: float, timeout_s: float | None) -> None:
    tty = sys.stdout.isatty()
    ids = [r.id for r in records]
    with cli_errors(*ADMIN_ERRORS):
        outcome = follow(slurm, lambda: _read(ctx, ids), tty=tty, echo=_echo(tty), started=started,
                         timeout_s=timeout_s)
    if tty:
        click.echo()
    rows = {r.id: r for r in _read(ctx, ids)}
    if outcome.ok:
        for row in rows.values():
            click.echo(f"ready: job {row.job_id} at {row.url} after {outcome.elapsed_s:.1f} s "
                       f"({breakdown(row, outcome.jobs.get(row.id), overhead)})")
        return
    _report_failure(ctx, entry, rows, outcome)


def _read(ctx: CliContext, ids: Sequence[int]) -> list[DeploymentRecord]:
    with ctx.session() as session:
        return [to_record(row) for i in ids if (row := session.get(Deployment, i)) is not None]


def _echo(tty: bool) -> Any:
    def echo(text: str, transient: bool) -> None:
        if transient:
            click.echo(f"\r\033[K{text}", nl=False)
        else:
            click.echo(text)
    return echo


def _report_failure(ctx: CliContext, entry: CatalogEntry, rows: dict[int, DeploymentRecord],
                    outcome: Outcome) -> None:
    log_dir = prepare_log_dir(ctx.settings.cluster)
    with ctx.session() as session:
        for row_id, phase in outcome.phases.items():
            if phase.name == "ready":
                continue
            row = rows[row_id]
            click.echo(f"job {row.job_id}: {phase.text}", err=True)
            _print_tail(Path(log_file(log_dir, entry, row.job_id or "?")))
            db_row = session.get(Deployment, row_id)
            if phase.name == "failed" and db_row is not None and db_row.state != "gone":
                mark_gone(session, db_row, phase.text)
    raise click.ClickException(f"{entry.name} is not ready" + (
        " (timed out)" if not any(p.name == "failed" for p in outcome.phases.values()) else ""))


def _print_tail(path: Path, lines: int = 25) -> None:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        click.echo(f"(no log at {path})", err=True)
        return
    click.echo(f"--- last {len(tail)} lines of {path} ---", err=True)
    for line in tail:
        click.echo(f"  {line}", err=True)


@click.command()
@click.argument("target", metavar="MODEL|JOB")
@catalog_option
@click.option("--now", "immediate", is_flag=True, help="Cancel at once; do not wait for requests in flight.")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True,
              help="Seconds to let in-flight requests finish before cancelling.")
@click.pass_obj
def down(ctx: CliContext, target: str, catalog_path: str | None, immediate: bool, timeout_s: float) -> None:
    """Stop routing to MODEL (all its jobs) or one JOB, drain, then scancel; lowers desired replicas."""
    with cli_errors(*ADMIN_ERRORS), ctx.session() as session:
        rows, model, delta = _targets(ctx, session, catalog_path, target)
        desired = change_target(session, model, now=utcnow(), delta=delta or 0,
                                absolute=0 if delta is None else None)
        if not rows:
            click.echo(f"{target}: nothing running; {model}: {desired} replica(s) desired")
            return
        stopped = stop_deployments(session, open_slurm(), [r.id for r in rows], now=utcnow(),
                                   immediate=immediate, timeout_s=timeout_s, progress=click.echo)
    for record in stopped:
        click.echo(f"stopped deployment {record.id} (job {record.job_id}): {record.reason}")
    click.echo(f"{model}: {desired} replica(s) desired")


def _targets(ctx: CliContext, session: Any, catalog_path: str | None,
             target: str) -> tuple[list[Deployment], str, int | None]:
    """Rows to stop, the model whose target changes, and by how much (None: to zero)."""
    if target.isdigit():
        row = find_by_job(session, target)
        if row is None or row.state == "gone":
            raise click.ClickException(f"no running deployment with Slurm job id {target}")
        return [row], row.model, -1
    entry = _entry(ctx, catalog_path, target)
    return live_deployments(session, entry.name), entry.name, None


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("-n", "--lines", default=0, help="Only the last N lines.")
@click.pass_obj
def logs(ctx: CliContext, job_id: str, follow_: bool, lines: int) -> None:
    """Print the output of Slurm job JOB (server log and the job's own lines)."""
    path = _log_path(ctx, job_id)
    with open(path, errors="replace") as f:
        text = f.read()
        if lines:
            text = "".join(line + "\n" for line in text.splitlines()[-lines:])
        click.echo(text, nl=False)
        while follow_:
            chunk = f.read()
            if chunk:
                click.echo(chunk, nl=False)
            elif not _job_alive(job_id):
                return
            else:
                time.sleep(0.5)


def _log_path(ctx: CliContext, job_id: str) -> Path:
    log_dir = Path(prepare_log_dir(ctx.settings.cluster))
    with ctx.session() as session:
        row = find_by_job(session, job_id)
    candidates = [log_dir / f"{row.model}-{job_id}.out"] if row else []
    candidates += sorted(log_dir.glob(f"*-{job_id}.out"))
    for path in candidates:
        if path.exists():
            return path
    raise click.ClickException(f"no log for job {job_id} in {log_dir}")


def _job_alive(job_id: str) -> bool:
    try:
        info = open_slurm().job(job_id)
    except SlurmError:
        return False
    return info is not None and not info.finished
