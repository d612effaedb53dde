"""Field validators for the catalog: each names file, entry and field in its error."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

CAPABILITIES = ("chat", "vision", "reasoning", "embeddings", "transcription", "tools", "rerank")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PUBLIC_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
_TIME = re.compile(r"^(?:\d+-)?\d+(?::\d+){0,2}$")
_MEMORY = re.compile(r"^[1-9]\d*[KMGT]?$")  # Slurm's --mem: a whole number, megabytes unless K/M/G/T


class CatalogError(Exception):
    """A catalog that cannot be used; the message names the file, the entry and the field."""


@dataclass(frozen=True)
class PublicName:
    """A name clients send as `model`, with defaults that fill only fields they left out."""

    name: str
    defaults: Mapping[str, Any]


@dataclass(frozen=True)
class Ctx:
    """Where a value comes from, for error messages; and the environment for ${VAR}."""

    source: str
    entry: str
    environ: Mapping[str, str]
    strict_env: bool = True

    def error(self, field: str, expected: str, got: Any) -> CatalogError:
        """An error naming file, entry and field."""
        shown = "" if got is None else f", got {json.dumps(got, default=str)}"
        return CatalogError(f"{self.source}: [models.{self.entry}] {field}: {expected}{shown}")


def reject_unknown(ctx: Ctx, table: Mapping[str, Any], known: Collection[str]) -> None:
    """Typos become errors instead of silently ignored settings."""
    for key in table:
        if key not in known or key == "name":
            raise ctx.error(key, "unknown field", None)


def text(ctx: Ctx, t: Mapping[str, Any], key: str, default: str | None) -> str:
    """A string field; required when DEFAULT is None."""
    value = t.get(key, default)
    if value is None:
        raise ctx.error(key, "required", None)
    if not isinstance(value, str) or (default is None and not value.strip()):
        raise ctx.error(key, "expected a non-empty string" if default is None else "expected a string", value)
    return value


def choice(ctx: Ctx, t: Mapping[str, Any], key: str, options: tuple[str, ...], default: str | None) -> str:
    """A string from OPTIONS."""
    value = text(ctx, t, key, default)
    if value not in options:
        raise ctx.error(key, f"expected one of {', '.join(options)}", value)
    return value


def whole(ctx: Ctx, t: Mapping[str, Any], key: str, default: int) -> int:
    """A whole number >= 0."""
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ctx.error(key, "expected a whole number >= 0", value)
    return value


def positive(ctx: Ctx, t: Mapping[str, Any], key: str, default: int) -> int:
    """A whole number >= 1."""
    value = t.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ctx.error(key, "expected a positive whole number", value)
    return value


def optional_positive(ctx: Ctx, t: Mapping[str, Any], key: str) -> int | None:
    """A whole number >= 1, or absent."""
    return positive(ctx, t, key, 1) if key in t else None


def flag(ctx: Ctx, t: Mapping[str, Any], key: str, default: bool) -> bool:
    """true or false."""
    value = t.get(key, default)
    if not isinstance(value, bool):
        raise ctx.error(key, "expected true or false", value)
    return value


def strings(ctx: Ctx, t: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """A list of strings (numbers are accepted and written as text)."""
    value = t.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        raise ctx.error(key, "expected a list of strings", value)
    return tuple(str(v) for v in value)


def slurm_time(ctx: Ctx, t: Mapping[str, Any], key: str) -> str | None:
    """A Slurm time limit such as 04:00:00 or 1-00:00:00, or absent."""
    if key not in t:
        return None
    value = t[key]
    if not isinstance(value, str) or not _TIME.match(value):
        raise ctx.error(key, "expected a Slurm time limit like \"04:00:00\" or \"1-00:00:00\"", value)
    return value


def slurm_memory(ctx: Ctx, t: Mapping[str, Any], key: str) -> str:
    """A Slurm memory size such as "64G" or "512M", or "" (absent: the settings decide)."""
    value = text(ctx, t, key, "")
    if value and not _MEMORY.match(value):
        raise ctx.error(key, "expected a Slurm memory size like \"64G\" or \"512M\"", value)
    return value


def capabilities(ctx: Ctx, t: Mapping[str, Any], kind: str) -> tuple[str, ...]:
    """Known capability words; defaults to the entry's kind."""
    values = strings(ctx, t, "capabilities") or (kind,)
    for value in values:
        if value not in CAPABILITIES:
            raise ctx.error("capabilities", f"expected words from {', '.join(CAPABILITIES)}", value)
    return values


def environment(ctx: Ctx, t: Mapping[str, Any]) -> Mapping[str, str]:
    """Environment variables for the server: names to strings (numbers allowed)."""
    value = t.get("env", {})
    if not isinstance(value, dict):
        raise ctx.error("env", "expected a table of NAME = \"value\"", value)
    out: dict[str, str] = {}
    for name, item in value.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ctx.error(f"env.{name}", "not a valid environment variable name", None)
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ctx.error(f"env.{name}", "expected a string", item)
        out[name] = str(item)
    return MappingProxyType(out)


def public_names(ctx: Ctx, value: Any) -> tuple[PublicName, ...]:
    """The `names` table; without one, the entry serves its own name."""
    if value is None:
        return (PublicName(ctx.entry, MappingProxyType({})),)
    if not isinstance(value, dict) or not value:
        raise ctx.error("names", "expected tables [models.NAME.names.\"public-name\"]", None)
    out = []
    for name, table in value.items():
        if not _PUBLIC_NAME.match(name):
            raise ctx.error(f"names.{name}", "public names use letters, digits, '.', '_', ':', '/', '-'", None)
        if not isinstance(table, dict) or set(table) - {"defaults"}:
            raise ctx.error(f"names.{name}", "expected a table with only `defaults`", None)
        defaults = table.get("defaults", {})
        if not isinstance(defaults, dict):
            raise ctx.error(f"names.{name}.defaults", "expected a table of request fields", defaults)
        out.append(PublicName(name, MappingProxyType(dict(defaults))))
    return tuple(out)


def expand(ctx: Ctx, field: str, value: str) -> str:
    """Replace ${VAR} with its value; an unset VAR is an error naming it (unless not strict)."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in ctx.environ:
            return ctx.environ[name]
        if not ctx.strict_env:
            return match.group(0)
        raise ctx.error(field, f"environment variable {name} is not set (it is used as ${{{name}}})", None)

    return _VAR.sub(lookup, value)


def unset_vars(*values: str) -> tuple[str, ...]:
    """Names of ${VAR}s still present in VALUES after expansion."""
    return tuple(dict.fromkeys(m.group(1) for v in values for m in _VAR.finditer(v)))
