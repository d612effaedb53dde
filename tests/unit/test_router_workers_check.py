"""Which `--workers` counts a router accepts: limits must hold and the ledger must have one home."""

from __future__ import annotations

import dataclasses
from typing import Any

import click
import pytest

from launcher.cli.router_workers import check_workers
from launcher.core.settings import RouterSettings, Settings

PG = "postgresql+psycopg://u@db/llm"
SQLITE = "sqlite:////var/lib/llm-launch/registry.db"


def settings(**router: Any) -> Settings:
    return dataclasses.replace(Settings(), router=dataclasses.replace(RouterSettings(), **router))


@pytest.mark.parametrize(("router", "db"), [
    ({"workers": 1}, SQLITE),  # today's single process, any mode
    ({"workers": 4, "redis_url": "redis://r:6379/0"}, PG),  # shared mode
    ({"workers": 2, "accounting": False}, SQLITE),  # no limits to split, registry only read
    ({"workers": 2, "accounting": False}, PG),
])
def test_accepted(router: dict[str, Any], db: str) -> None:
    check_workers(settings(**router), db)


@pytest.mark.parametrize(("router", "db", "says"), [
    ({"workers": 0}, PG, "at least 1"),
    ({"workers": 2}, PG, "shared mode"),  # embedded: each worker would enforce every limit alone
    ({"workers": 2}, SQLITE, "shared mode"),
    ({"workers": 2, "redis_url": "redis://r:6379/0"}, SQLITE, "PostgreSQL registry"),
])
def test_refused_in_one_line(router: dict[str, Any], db: str, says: str) -> None:
    with pytest.raises(click.ClickException) as refused:
        check_workers(settings(**router), db)
    assert says in refused.value.message and "\n" not in refused.value.message
