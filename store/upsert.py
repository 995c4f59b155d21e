"""One dialect-aware additive upsert for every aggregate table.

``insert ... on conflict (key) do update set m = m + excluded.m`` on both
SQLite and PostgreSQL. Identifiers come only from table metadata, never from
input, and values are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Table, case, func
from sqlalchemy.dialects import postgresql, sqlite


def _insert_for(conn: Connection):  # type: ignore[no-untyped-def]
    """The dialect's INSERT with ON CONFLICT support."""
    insert_fn = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(conn.dialect.name)
    if insert_fn is None:
        raise NotImplementedError(f"upserts are not implemented for {conn.dialect.name}")
    return insert_fn


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
    insert_fn = _insert_for(conn)
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
    insert_fn = _insert_for(conn)
    columns = [c for c in rows[0] if c not in key]
    for start in range(0, len(rows), chunk):
        stmt = insert_fn(table)
        stmt = stmt.on_conflict_do_update(index_elements=[table.c[k] for k in key],
                                          set_={c: stmt.excluded[c] for c in columns})
        conn.execute(stmt, list(rows[start:start + chunk]))
    return len(rows)


def merge_upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    sums: Sequence[str] = (),
    mins: Sequence[str] = (),
    maxs: Sequence[str] = (),
    latest: Sequence[str] = (),
    latest_by: str = "last_seen",
    chunk: int = 2000,
) -> int:
    """Merge ``rows`` into ``table`` with order-free rules, inserting missing keys.

    ``sums`` are added, ``mins``/``maxs`` keep the smaller/larger value, and
    ``latest`` columns take the incoming value only when the incoming
    ``latest_by`` is not older than the stored one (so a late event cannot
    overwrite a newer name). Every rule gives the same result whatever order
    runs are applied in, which is what lets a replayed run be harmless.
    """
    if not rows:
        return 0
    insert_fn = _insert_for(conn)
    pg = conn.dialect.name == "postgresql"
    least = func.least if pg else func.min
    greatest = func.greatest if pg else func.max
    for start in range(0, len(rows), chunk):
        stmt = insert_fn(table)
        ex = stmt.excluded
        set_: dict[str, Any] = {m: table.c[m] + ex[m] for m in sums}
        set_.update({m: least(table.c[m], ex[m]) for m in mins})
        set_.update({m: greatest(table.c[m], ex[m]) for m in maxs})
        if latest:
            newer = ex[latest_by] >= table.c[latest_by]
            set_.update({m: case((newer, ex[m]), else_=table.c[m]) for m in latest})
        stmt = stmt.on_conflict_do_update(index_elements=[table.c[k] for k in key], set_=set_)
        conn.execute(stmt, list(rows[start:start + chunk]))
    return len(rows)
