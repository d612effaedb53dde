"""The model catalog (TOML): loaded and validated once, into frozen records.

Errors name the file, the entry and the field, e.g.
`catalog.toml: [models.qwen3-5-122b] gpus: expected a positive whole number, got "four"`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from launcher.core import catalog_fields as cf
from launcher.core.catalog_fields import CatalogError, PublicName
from launcher.core.settings import read_toml
from launcher.engines.table import ENGINES, KINDS, command_engines

__all__ = ["Catalog", "CatalogEntry", "CatalogError", "PublicName", "load_catalog",
           "packaged_catalog", "resolve_catalog_path", "time_limit_seconds"]

PACKAGED = ("production", "demo")
_ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass(frozen=True)
class CatalogEntry:
    """One deployable model: how to start its server and what it offers."""

    name: str
    engine: str
    kind: str
    weights: str
    served_name: str
    names: tuple[PublicName, ...]
    gpus: int = 1
    nodes: int = 1
    time: str | None = None
    replicas: int = 1
    start_deadline: int | None = None
    context_length: int | None = None
    max_tokens: int | None = None
    capabilities: tuple[str, ...] = ()
    dimensions: int | None = None
    base_model: str = ""
    best_for: str = ""
    engine_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    command: tuple[str, ...] = ()
    on_demand: bool = False
    cpus: int = 0
    mem: str = ""
    # ${VAR}s in weights/command that were unset at load: starting a server needs them.
    missing_env: tuple[str, ...] = ()

    @property
    def public_names(self) -> tuple[str, ...]:
        """The public names, in catalog order."""
        return tuple(n.name for n in self.names)


@dataclass(frozen=True)
class Catalog:
    """All entries of one catalog file, in file order."""

    source: str
    entries: Mapping[str, CatalogEntry]

    def entry(self, name: str) -> CatalogEntry:
        """The entry named NAME, or the entry serving public name NAME."""
        found = self.entries.get(name) or self.by_public_name(name)
        if found is None:
            known = ", ".join(self.entries) or "none"
            raise CatalogError(f"unknown model {name!r} in {self.source} (known: {known})")
        return found

    def by_public_name(self, name: str) -> CatalogEntry | None:
        """The entry that serves public name NAME, if any."""
        return next((e for e in self.entries.values() if name in e.public_names), None)

    def public_name(self, name: str) -> PublicName | None:
        """The public name record for NAME (its defaults), if any entry serves it."""
        entry = self.by_public_name(name)
        return next(n for n in entry.names if n.name == name) if entry else None


def packaged_catalog(name: str) -> Path:
    """Path of a catalog shipped with llm-launch (`production` or `demo`)."""
    return Path(__file__).resolve().parents[1] / "catalogs" / f"{name}.toml"


def resolve_catalog_path(cli_value: str | None, settings_value: str = "") -> Path:
    """--catalog, else LLM_LAUNCH_CATALOG, else settings, else the packaged production catalog."""
    chosen = cli_value or os.environ.get("LLM_LAUNCH_CATALOG") or settings_value or "production"
    if chosen in PACKAGED:
        return packaged_catalog(chosen)
    return Path(chosen).expanduser()


def load_catalog(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None,
                 strict_env: bool = False) -> Catalog:
    """Read and validate PATH; `${VAR}` in weights/command is expanded from ENVIRON.

    An unset VAR is an error with strict_env; otherwise it stays as written, is listed in the
    entry's missing_env, and rendering that entry's job fails naming it (so `models` and `down`
    work without the variables of models they do not start).
    """
    file = Path(path)
    data = read_toml(file, "catalog file", CatalogError)
    env = os.environ if environ is None else environ
    return catalog_from_dict(data, str(file), env, strict_env)


def catalog_from_dict(data: Mapping[str, Any], source: str, environ: Mapping[str, str],
                      strict_env: bool = False) -> Catalog:
    """Validate parsed TOML into a Catalog (pure)."""
    unknown = set(data) - {"models"}
    if unknown:
        raise CatalogError(f"{source}: unknown top-level table(s): {', '.join(sorted(unknown))}")
    models = data.get("models", {})
    if not isinstance(models, dict) or not models:
        raise CatalogError(f"{source}: no [models.NAME] tables")
    entries: dict[str, CatalogEntry] = {}
    for name, table in models.items():
        ctx = cf.Ctx(source, name, environ, strict_env)
        if not _ENTRY_NAME.match(name):
            raise ctx.error("name", "use letters, digits, '.', '_' and '-' only", name)
        entries[name] = _entry(ctx, table)
    _check_unique_names(source, entries)
    return Catalog(source=source, entries=MappingProxyType(entries))


def _entry(ctx: cf.Ctx, table: Any) -> CatalogEntry:
    if not isinstance(table, dict):
        raise CatalogError(f"{ctx.source}: [models.{ctx.entry}] must be a table")
    t = dict(table)
    cf.reject_unknown(ctx, t, CatalogEntry.__dataclass_fields__)
    engine = cf.choice(ctx, t, "engine", tuple(ENGINES), None)
    kind = cf.choice(ctx, t, "kind", KINDS, ENGINES[engine].default_kind)
    names = cf.public_names(ctx, t.get("names"))
    entry = CatalogEntry(
        name=ctx.entry, engine=engine, kind=kind,
        weights=cf.expand(ctx, "weights", cf.text(ctx, t, "weights", None)),
        served_name=cf.text(ctx, t, "served_name", names[0].name), names=names,
        gpus=cf.positive(ctx, t, "gpus", 1), nodes=cf.positive(ctx, t, "nodes", 1),
        time=cf.slurm_time(ctx, t, "time"), replicas=cf.whole(ctx, t, "replicas", 1),
        start_deadline=cf.optional_positive(ctx, t, "start_deadline"),
        context_length=cf.optional_positive(ctx, t, "context_length"),
        max_tokens=cf.optional_positive(ctx, t, "max_tokens"),
        capabilities=cf.capabilities(ctx, t, kind), dimensions=cf.optional_positive(ctx, t, "dimensions"),
        base_model=cf.text(ctx, t, "base_model", ""), best_for=cf.text(ctx, t, "best_for", ""),
        engine_args=cf.strings(ctx, t, "engine_args"), env=cf.environment(ctx, t),
        command=tuple(cf.expand(ctx, "command", c) for c in cf.strings(ctx, t, "command")),
        on_demand=cf.flag(ctx, t, "on_demand", False), cpus=cf.whole(ctx, t, "cpus", 0),
        mem=cf.slurm_memory(ctx, t, "mem"),
    )
    entry = dataclasses.replace(entry, missing_env=cf.unset_vars(entry.weights, *entry.command))
    _check_engine(ctx, entry)
    return entry


def _check_engine(ctx: cf.Ctx, entry: CatalogEntry) -> None:
    spec = ENGINES[entry.engine]
    if spec.needs_command and not entry.command:
        raise ctx.error("command", f"engine \"{spec.name}\" needs the server's argv", None)
    if not spec.needs_command and entry.command:
        takers = " or ".join(f"engine = \"{name}\"" for name in command_engines())
        raise ctx.error("command", f"only used with {takers}", list(entry.command))
    if entry.kind not in spec.kinds:
        raise ctx.error("kind", f"the {spec.name} engine serves {' and '.join(spec.kinds)} only", entry.kind)
    if entry.nodes > 1:
        raise ctx.error("nodes", "multi-node jobs are not supported by the job templates yet",
                        entry.nodes)


def _check_unique_names(source: str, entries: Mapping[str, CatalogEntry]) -> None:
    owner: dict[str, str] = {}
    for entry in entries.values():
        for name in entry.public_names:
            other = owner.get(name) or (name if name in entries and name != entry.name else None)
            if other:
                raise CatalogError(f"{source}: [models.{entry.name}] names: public name {name!r} "
                                   f"is already used by [models.{other}]")
            owner[name] = entry.name


def time_limit_seconds(text: str) -> int:
    """Seconds in a Slurm time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    match = _TIME.match(text.strip())
    if not match:
        raise ValueError(f"not a Slurm time limit: {text!r} (e.g. 04:00:00 or 1-00:00:00)")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 86400 + (a or 0) * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return (a or 0) * 3600 + (b or 0) * 60 + c
    return (a or 0) * 60 + (b or 0)
