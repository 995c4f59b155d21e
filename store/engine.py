"""Engine set-up for the two supported stores.

SQLite gets WAL and a busy timeout so the pipeline's writer and readers
(analysts, dashboards) do not block each other; PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError

from store import migrate
from store.errors import StoreError, StoreNotFound, StoreUrlError, about_the_store, translate
from store.settings import DEFAULT_STORE_URL

__all__ = ["DEFAULT_STORE_URL", "StoreError", "create_schema", "describe_url", "make_engine", "open_reader"]


def _redacted(url: str) -> str:
    """A URL that did not parse, with anything between '://user:' and '@' hidden (it may be a password)."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    """Create an engine for ``url`` (``sqlite:///file.db`` or ``postgresql+psycopg://...``).

    On SQLite a writer's transaction takes the write lock at its start
    (``BEGIN IMMEDIATE``), so two writers queue instead of failing mid-way;
    a ``readonly`` engine (analysts, dashboards, checks) begins deferred and
    refuses writes, so readers never wait for the pipeline's commit (WAL).

    Driver errors raised through the engine arrive as :mod:`store.errors`
    types (the engine's ``handle_error`` hook), so no caller sees SQLAlchemy's.

    Raises:
        StoreUrlError: the URL is malformed or names an unsupported database.
        StoreNotFound: a ``readonly`` engine for a SQLite file that does not exist
            (a reader never creates one).
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise StoreUrlError(f"store URL {_redacted(url)!r} is not a SQLAlchemy URL",
                            hint="expected sqlite:///FILE or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
                            ) from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    shown = parsed.render_as_string(hide_password=True)
    if backend not in ("sqlite", "postgresql"):
        raise StoreUrlError(f"store URL {shown!r}: only sqlite and postgresql are supported, not {backend}")
    if backend == "sqlite":
        database = parsed.database or ""
        if readonly and (database in ("", ":memory:") or not Path(database).is_file()):
            raise StoreNotFound(f"store {shown!r} does not exist",
                                hint="check --store / APIM_STORE_URL, or fill it with 'apim-analytics pipeline run'")
        engine = create_engine(parsed, connect_args={"timeout": 30})
        _translate_errors(engine, shown)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; issue it ourselves so
        # a write transaction takes SQLite's write lock at its start (BEGIN IMMEDIATE).
        begin = "BEGIN" if readonly else "BEGIN IMMEDIATE"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        if readonly:
            event.listen(engine, "connect", lambda dbapi_conn, _r: dbapi_conn.execute("PRAGMA query_only=ON"))
        return engine
    if readonly:
        engine = create_engine(parsed, pool_pre_ping=True, execution_options={"postgresql_readonly": True})
    else:
        engine = create_engine(parsed, pool_pre_ping=True)
    _translate_errors(engine, shown)
    return engine


def open_reader(url: str) -> Engine:
    """A read-only engine on a store that exists and has this version's schema.

    Analysts' and billing's commands use this: they never create a file or a
    table, and a store that is missing or unmigrated is named in one line.

    Raises:
        StoreError: see :func:`make_engine` and :func:`store.migrate.require_current`.
    """
    engine = make_engine(url, readonly=True)
    try:
        migrate.require_current(engine, f"store {describe_url(url)!r}")
    except BaseException:
        engine.dispose()
        raise
    return engine


def describe_url(url: str) -> str:
    """The URL as it may be shown: password hidden, even when it does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _redacted(url)


def _translate_errors(engine: Engine, shown: str) -> None:
    """Raise :mod:`store.errors` types instead of SQLAlchemy's for every error this engine meets."""

    def handle(context: ExceptionContext) -> Any:
        if context.is_pre_ping:  # SQLAlchemy recycles the connection itself
            return None
        orig = context.original_exception
        operational = isinstance(orig, context.dialect.loaded_dbapi.OperationalError)
        if not (context.is_disconnect or operational or about_the_store(orig)):
            return None  # the statement's fault (syntax, a bad bind value): a defect, left as it is
        # psycopg reports a connection lost mid-transaction (a server restart) as an OperationalError
        # without SQLSTATE, which SQLAlchemy does not always flag as a disconnect: retriable too
        lost = operational and not getattr(orig, "sqlstate", None) and not getattr(orig, "sqlite_errorname", None)
        return translate(orig, where=f"store {shown!r}", connecting=context.connection is None or bool(lost))

    event.listen(engine, "handle_error", handle)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
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
    migrate.upgrade(engine)
