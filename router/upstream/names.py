"""Public model names: what each name the client sends means to the router, from the catalog.

A catalog entry is one deployment (registry rows carry the entry name as `model`) that serves
one or more public names, each with its own request defaults. Without a catalog, a public name
is the deployment's model name and carries nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from launcher.core.catalog import PACKAGED, Catalog, CatalogEntry, load_catalog, packaged_catalog

NO_DEFAULTS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class Route:
    """A public name of a catalog entry: its pool, the backend's name for it, its defaults and limit."""

    name: str
    pool: str  # the entry name: registry rows and pools are keyed by it
    served_name: str
    defaults: Mapping[str, Any]
    max_tokens: int | None
    entry: CatalogEntry


class Names:
    """Public names -> routes; empty without a catalog (then a name is its deployment's model)."""

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog = catalog
        self.routes: dict[str, Route] = {}
        self.entries: Mapping[str, CatalogEntry] = catalog.entries if catalog else {}
        for entry in self.entries.values():
            for public in entry.names:
                self.routes[public.name] = Route(
                    public.name, entry.name, entry.served_name, public.defaults, entry.max_tokens, entry,
                )

    def pool_key(self, model: str) -> str:
        """The pool a registry row with MODEL joins: its entry's, also when registered by public name."""
        route = self.routes.get(model)
        return route.pool if route is not None else model

    def served_name(self, pool: str) -> str:
        """The model name the servers of POOL answer to (what their /v1/models lists)."""
        entry = self.entries.get(pool)
        return entry.served_name if entry is not None else pool

    def hidden(self, model: str) -> bool:
        """Whether MODEL is a catalog entry name that is not also one of its public names."""
        return model in self.entries and model not in self.routes

    def known(self, model: str) -> bool:
        """Whether MODEL is a public name of the catalog."""
        return model in self.routes


def catalog_path(value: str) -> Path | None:
    """The router's catalog file: `production`/`demo` are the packaged ones, "" means none."""
    if not value:
        return None
    if value in PACKAGED:
        return packaged_catalog(value)
    return Path(value).expanduser()


def load_names(value: str) -> Names:
    """Names from the catalog setting VALUE (read once, at start); no catalog gives empty Names."""
    path = catalog_path(value)
    return Names(load_catalog(path) if path is not None else None)
