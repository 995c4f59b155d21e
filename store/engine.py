"""Engine set-up for the two supported stores.

SQLite gets WAL and a busy timeout so the pipeline's writer and readers
(analysts, dashboards) do not block each other; PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_STORE_URL = "sqlite:///apim-analytics.db"


class StoreError(RuntimeError):
    """The store cannot be used; the message says why."""


def _redacted(url: str) -> str:
    """A URL that did not parse, with anything between '://user:' and '@' hidden (it may be a password)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """Create an engine for ``url`` (``sqlite:///file.db`` or ``postgresql+psycopg://...``).

    On SQLite a writer's transaction takes the write lock at its start
    (``BEGIN IMMEDIATE``), so two writers queue instead of failing mid-way;
    a ``readonly`` engine (analysts, dashboards, checks) begins deferred and
    refuses writes, so readers never wait for the pipeline's commit (WAL).

    Raises:
        StoreError: the URL is malformed or names an unsupported database.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreError(f"store URL {_redacted(url)!r} is not a SQLAlchemy URL") from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"store URL {parsed.render_as_string(hide_password=True)!r}: only sqlite and postgresql "
                         f"are supported, not {backend}")
    if backend == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; issue it ourselves so
        # a write transaction takes SQLite's write lock at its start (BEGIN IMMEDIATE).
        begin = "BEGIN" if readonly else "BEGIN IMMEDIATE"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        if readonly:
            event.listen(engine, "connect", lambda dbapi_conn, _r: dbapi_conn.execute("PRAGMA query_only=ON"))
        return engine
    if readonly:
        return create_engine(parsed, pool_pre_ping=True, execution_options={"postgresql_readonly": True})
    return create_engine(parsed, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_conn.isolation_level = None  # let the "begin" listener own BEGIN
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def create_schema(engine: Engine) -> None:
    """Bring the store's schema to the newest migration (idempotent, safe to call concurrently).

    Kept under its old name because every process calls it on start; it now
    runs the Alembic migrations (store/migrate.py) instead of create_all, so
    existing stores get schema changes too.

    Raises:
        StoreError: the store was created before migrations existed and must be recreated.
    """
    from store import migrate  # store.migrate imports this module (StoreError)

    migrate.upgrade(engine)
