"""`llm-launch db copy`: move a registry, every table of the schema, into another database.

Made for moving an embedded SQLite installation to PostgreSQL: the target is migrated first and
must be empty; every row of every table the schema has is copied in one transaction, ids kept,
and PostgreSQL's id sequences are moved past the copied ids so new rows do not collide.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, Integer, Table, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from launcher.core.migrate import current_revision, head_revision, upgrade_if_needed
from launcher.core.schema import Base

CHUNK_ROWS = 2000  # rows per INSERT: large tables (usage_requests) stream, never load whole


class CopyError(Exception):
    """The copy cannot be done; the message says why, in one line."""


def schema_tables() -> list[Table]:
    """Every table of the schema, parents before children."""
    return list(Base.metadata.sorted_tables)


def copy_registry(source: Engine, target: Engine,
                  progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every row of SOURCE into the empty TARGET; returns rows copied per table."""
    where = target.url.render_as_string(hide_password=True)
    try:
        if current_revision(source) != head_revision(source):
            raise CopyError(f"the source registry is not at revision {head_revision(source)}: "
                            "run `llm-launch db upgrade` on it first")
        upgrade_if_needed(target)
        with source.connect() as src, target.begin() as dst:
            full = [t.name for t in schema_tables() if dst.scalar(select(func.count()).select_from(t))]
            if full:
                raise CopyError(f"{where} already holds rows (in {', '.join(full)}); "
                                "copy only into an empty database")
            counts = {t.name: _copy_table(src, dst, t) for t in schema_tables()}
            if dst.dialect.name == "postgresql":
                for table in schema_tables():
                    _move_sequence(dst, table)
            if progress is not None:
                for name, rows in counts.items():
                    progress(name, rows)
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise CopyError(f"copying to {where} failed: {first[0] if first else type(exc).__name__}") from exc
    return counts


def _copy_table(src: Connection, dst: Connection, table: Table) -> int:
    copied = 0
    result = src.execution_options(stream_results=True).execute(select(table).order_by(*table.primary_key))
    for chunk in result.mappings().partitions(CHUNK_ROWS):
        dst.execute(insert(table), [dict(row) for row in chunk])
        copied += len(chunk)
    return copied


def _move_sequence(conn: Connection, table: Table) -> None:
    """Set a serial id's sequence past the copied ids (next id = max + 1, or 1 when empty)."""
    key = list(table.primary_key)
    if len(key) != 1 or not isinstance(key[0].type, Integer) or key[0].autoincrement is False:
        return
    column = key[0].name
    sequence = conn.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column})
    if sequence is None:
        return
    top = conn.scalar(select(func.max(key[0])))
    conn.execute(text("SELECT setval(:s, :v, :called)"),
                 {"s": sequence, "v": top or 1, "called": top is not None})
