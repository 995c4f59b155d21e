"""One dialect-aware additive upsert for every aggregate table.

``insert ... on conflict (key) do update set m = m + excluded.m`` on both
SQLite and PostgreSQL. Identifiers come only from table metadata, never from
input, and values are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def additive_upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    measures: Sequence[str],
    chunk: int = 2000,
) -> int:
    """Add ``rows``' measures into ``table``, inserting missing keys.

    Args:
        conn: a connection inside the caller's transaction (the caller commits).
        table: the aggregate table.
        rows: dicts with every key and measure column.
        key: the primary-key columns (the conflict target).
        measures: the additive columns.
        chunk: rows per statement, to bound statement size.

    Returns:
        The number of rows written.
    """
    if not rows:
        return 0
    dialect = conn.dialect.name
    insert_fn = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert_fn is None:
        raise NotImplementedError(f"additive upsert is not implemented for {dialect}")
    for start in range(0, len(rows), chunk):
        stmt = insert_fn(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c[k] for k in key],
            set_={m: table.c[m] + stmt.excluded[m] for m in measures},
        )
        conn.execute(stmt, list(rows[start:start + chunk]))
    return len(rows)


def replace_upsert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str],
                   chunk: int = 2000) -> int:
    """Insert ``rows``, overwriting every non-key column of rows that already exist."""
    if not rows:
        return 0
    insert_fn = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[conn.dialect.name]
    columns = [c for c in rows[0] if c not in key]
    for start in range(0, len(rows), chunk):
        stmt = insert_fn(table)
        stmt = stmt.on_conflict_do_update(index_elements=[table.c[k] for k in key],
                                          set_={c: stmt.excluded[c] for c in columns})
        conn.execute(stmt, list(rows[start:start + chunk]))
    return len(rows)
