"""Alembic environment for the analytics store.

There is no alembic.ini: store/migrate.py builds the Config in code and hands
over an open connection in ``config.attributes["connection"]``, already inside
the transaction that holds the migration lock, so the whole upgrade commits or
rolls back as one (PostgreSQL and SQLite both run DDL transactionally).

SQLite cannot ALTER most things in place; ``render_as_batch`` makes
autogenerate write later revisions as batch operations (copy-and-move), so
the same revision files work on both stores.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from store.tables import metadata

config = context.config
target_metadata = metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_online() -> None:
    """Migrate over the caller's connection; without one, open one from ``sqlalchemy.url``."""
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # Only for running the alembic command-line tool by hand: the store's own
    # callers always go through store.migrate, which passes a connection.
    from store.engine import make_engine

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("store migrations need config.attributes['connection'] or sqlalchemy.url")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    """Write the SQL instead of running it (``upgrade --sql``), for a DBA to review."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
