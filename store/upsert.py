"""One dialect-aware additive upsert for every aggregate table.

``insert ... on conflict (key) do update set m = m + excluded.m`` on both
SQLite and PostgreSQL. Identifiers come only from table metadata, never from
input, and values are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, DateTime, Table, bindparam, case, func
from sqlalchemy.dialects import postgresql, sqlite


def _insert_for(conn: Connection):
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
    return merge_columns(conn, table, _as_columns(rows), key=key, sums=measures, chunk=chunk)


def replace_upsert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *, key: Sequence[str],
                   chunk: int = 2000) -> int:
    """Insert ``rows``, overwriting every non-key column of rows that already exist."""
    if not rows:
        return 0
    return merge_columns(conn, table, _as_columns(rows), key=key, replace=[c for c in rows[0] if c not in key],
                         chunk=chunk)


def _as_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Rows (dicts with the same keys) as columns."""
    if not rows:
        return {}
    return {c: [r[c] for r in rows] for c in rows[0]}


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
    return merge_columns(conn, table, _as_columns(rows), key=key, sums=sums, mins=mins, maxs=maxs, latest=latest,
                         latest_by=latest_by, chunk=chunk)


_STATEMENTS: dict[tuple, tuple[str, list[str]]] = {}


def _positional_dialect(conn: Connection):
    """The connection's dialect, compiling positional parameters (tuples go straight to the driver)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

        return PGDialect_psycopg(paramstyle="format")
    return conn.dialect


def merge_columns(
    conn: Connection,
    table: Table,
    columns: Mapping[str, Sequence[Any]],
    *,
    key: Sequence[str],
    sums: Sequence[str] = (),
    mins: Sequence[str] = (),
    maxs: Sequence[str] = (),
    latest: Sequence[str] = (),
    latest_by: str = "last_seen",
    replace: Sequence[str] = (),
    chunk: int = 5000,
) -> int:
    """:func:`merge_upsert` for column-shaped data, at bulk speed (``replace`` columns take the new value).

    The statement is compiled once per table and column set; rows go to the
    driver as plain tuples (``executemany``), skipping SQLAlchemy's per-row
    parameter processing, which costs more than the database's own work for
    wide fact rows. Values must already be plain Python values; datetimes are
    converted with the column type's own bind processor, so stored keys are
    byte-identical to those other writers produce.
    """
    names = list(columns)
    n = len(columns[names[0]]) if names else 0
    if n == 0:
        return 0
    cache_key = (conn.dialect.name, table.name, tuple(names), tuple(key), tuple(sums), tuple(mins), tuple(maxs),
                 tuple(latest), latest_by, tuple(replace))
    compiled = _STATEMENTS.get(cache_key)
    if compiled is None:
        insert_fn = _insert_for(conn)
        stmt = insert_fn(table).values({c: bindparam(c) for c in names})
        ex = stmt.excluded
        pg = conn.dialect.name == "postgresql"
        least = func.least if pg else func.min
        greatest = func.greatest if pg else func.max
        set_: dict[str, Any] = {m: table.c[m] + ex[m] for m in sums}
        set_.update({m: least(table.c[m], ex[m]) for m in mins})
        set_.update({m: greatest(table.c[m], ex[m]) for m in maxs})
        if latest:
            newer = ex[latest_by] >= table.c[latest_by]
            set_.update({m: case((newer, ex[m]), else_=table.c[m]) for m in latest})
        set_.update({m: ex[m] for m in replace})
        stmt = stmt.on_conflict_do_update(index_elements=[table.c[k] for k in key], set_=set_)
        c = stmt.compile(dialect=_positional_dialect(conn))
        compiled = (c.string, list(c.positiontup or []))
        _STATEMENTS[cache_key] = compiled
    sql, order = compiled
    ordered = []
    for name in order:
        values = columns[name]
        # the dialect's own type (generic DateTime has no processor; SQLite's DATETIME formats the string)
        process = table.c[name].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        if process is not None:
            if isinstance(table.c[name].type, DateTime):  # few distinct values (buckets): convert each once
                memo: dict[Any, Any] = {}
                values = [memo[v] if v in memo else memo.setdefault(v, process(v)) for v in values]
            else:
                values = [process(v) for v in values]
        ordered.append(values)
    rows = list(zip(*ordered))
    for start in range(0, n, chunk):
        conn.exec_driver_sql(sql, rows[start:start + chunk])
    return n
