"""Rendering of job scripts: catalog entry + cluster settings + secrets -> sbatch script text."""

from __future__ import annotations

import re
import secrets as _secrets
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

import slurm_templates
from launcher.core.catalog import CatalogEntry, time_limit_seconds
from launcher.core.settings import ClusterSettings, EngineEnv
from launcher.engines.table import ENGINES, EngineSpec

MASK = "****"
# Seconds a draining job keeps serving after it deregistered: the router refreshes every second,
# so requests it sent just before it noticed still arrive.
DRAIN_SETTLE_S = 3
# What the supervisor and `llm-launch down` send a serving job to drain it; USR1 is Slurm's warning.
DRAIN_SIGNAL = "USR2"
_PLACEHOLDER = re.compile(r"\{(port|host|weights|served_name)\}")


class RenderError(Exception):
    """A job script that cannot be rendered from this entry and these settings."""


@dataclass(frozen=True)
class JobSecrets:
    """Created at submit time: the router's proof of the job, and the server's API key."""

    registration_token: str
    backend_secret: str

    @staticmethod
    def new() -> JobSecrets:
        """Fresh random secrets for one job."""
        return JobSecrets(_secrets.token_urlsafe(32), _secrets.token_urlsafe(32))


@dataclass(frozen=True)
class JobSpec:
    """What one submission adds to the entry and the settings."""

    log_dir: str
    time_limit: str | None = None
    python: str = "python3"  # interpreter for the whisper server when no engine setup is given


def job_name(entry: CatalogEntry) -> str:
    """The Slurm job name of ENTRY's jobs."""
    return f"llm-{entry.name}"


def log_file(log_dir: str, entry: CatalogEntry, job_id: str = "%j") -> str:
    """Path of a job's output file (`%j` lets Slurm fill in the job id)."""
    return f"{log_dir.rstrip('/')}/{entry.name}-{job_id}.out"


def job_time(entry: CatalogEntry, cluster: ClusterSettings, override: str | None = None) -> str:
    """The time limit a job gets: --time, else the catalog's, else the cluster default."""
    chosen = override or entry.time or cluster.default_time
    try:
        time_limit_seconds(chosen)
    except ValueError as exc:
        raise RenderError(str(exc)) from None
    return chosen


def render_script(entry: CatalogEntry, cluster: ClusterSettings, secrets: JobSecrets, spec: JobSpec,
                  *, mask: bool = False) -> str:
    """The exact sbatch script for one job of ENTRY; mask=True shows secrets as ****."""
    if entry.missing_env:
        name = entry.missing_env[0]
        raise RenderError(f"[models.{entry.name}] weights: environment variable {name} is not set "
                          f"(the catalog uses ${{{name}}})")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(slurm_templates.__file__).parent),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    engine = ENGINES.get(entry.engine)
    if engine is None:  # only a hand-made entry: the catalog accepts table engines only
        raise RenderError(f"template for engine {entry.engine!r}: {entry.engine}.sbatch.j2")
    try:
        template = env.get_template(engine.template)
        return template.render(**_context(entry, cluster, secrets, spec, mask, engine))
    except jinja2.TemplateError as exc:
        raise RenderError(f"template for engine {entry.engine!r}: {exc}") from None


def _context(entry: CatalogEntry, cluster: ClusterSettings, secrets: JobSecrets, spec: JobSpec,
             mask: bool, engine: EngineSpec) -> dict[str, Any]:
    engine_env = cluster.engines.get(entry.engine, EngineEnv())
    lo, hi = cluster.port_range
    if not 1024 <= lo <= hi <= 65535:
        raise RenderError(f"cluster port_range must be two ports 1024..65535, low first; got {lo}-{hi}")
    return {
        "entry": entry, "job_name": job_name(entry), "resources": _resources(entry, cluster),
        "time": job_time(entry, cluster, spec.time_limit), "signal_lead_s": cluster.signal_lead_s,
        "log_file": log_file(spec.log_dir, entry), "site_options": _site_options(cluster),
        "setup": engine_env.setup, "prefix": f"{engine_env.prefix} " if engine_env.prefix else "",
        "secret_env": engine.secret_env,
        "backend_secret": MASK if mask else secrets.backend_secret,
        "registration_token": MASK if mask else secrets.registration_token,
        "router_url": cluster.router_url.rstrip("/"),
        "env": sorted(entry.env.items()), "port_range": (lo, hi),
        "start_deadline": entry.start_deadline or cluster.start_deadline_s,
        "drain_settle_s": DRAIN_SETTLE_S, "drain_signal": DRAIN_SIGNAL, "served_names": _served_names(entry),
        "python": "python" if engine_env.setup or engine_env.prefix else spec.python,
        "command_line": _command_line(entry),
    }


def _resources(entry: CatalogEntry, cluster: ClusterSettings) -> list[str]:
    cpus = f"--cpus-per-task={entry.cpus}" if entry.cpus else f"--cpus-per-gpu={cluster.cpus_per_gpu}"
    mem = f"--mem={entry.mem}" if entry.mem else f"--mem-per-gpu={cluster.mem_per_gpu}"
    return [cpus, mem]


def _site_options(cluster: ClusterSettings) -> list[str]:
    named = [("partition", cluster.partition), ("account", cluster.account), ("qos", cluster.qos)]
    options = [f"--{name}={value}" for name, value in named if value]
    return options + list(cluster.extra_sbatch_args)


def _served_names(entry: CatalogEntry) -> list[str]:
    # vLLM answers to every name given; the first is the one it reports.
    return [entry.served_name] + [n for n in entry.public_names if n != entry.served_name]


def _command_line(entry: CatalogEntry) -> str:
    """The catalog's argv for engine "command", quoted, with {port} and {host} left to bash."""
    fixed = {"weights": entry.weights, "served_name": entry.served_name}

    def word(arg: str) -> str:
        parts = _PLACEHOLDER.split(arg)
        out = []
        for index, part in enumerate(parts):
            if index % 2 == 0:
                out.append(shlex.quote(part) if part else "")
            elif part in fixed:
                out.append(shlex.quote(fixed[part]))
            else:
                out.append('"$port"' if part == "port" else "0.0.0.0")
        return "".join(out) or "''"

    return " ".join(word(arg) for arg in entry.command)
