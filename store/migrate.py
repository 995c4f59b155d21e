"""Schema migrations: Alembic, configured in code, over the store's own engine.

Why Alembic rather than ``metadata.create_all``: create_all only ever adds
missing tables, so a changed column would silently stay as it was in every
existing store. Each schema change is now a revision in store/migrations/versions,
and every process that opens the store (pipeline, subscriptions loader, CLI)
upgrades it to head first through :func:`upgrade`.

Concurrency: two processes may start at once against an empty store. The
whole upgrade runs in one transaction that first takes a lock, so the second
process waits, then finds the store at head and does nothing:

- PostgreSQL: ``pg_advisory_xact_lock`` on a key derived from the current
  schema (released by the commit or rollback, even if the process dies);
  PostgreSQL runs DDL transactionally, so a failed upgrade leaves nothing behind.
- SQLite: the engine's "begin" listener (store/engine.py) opens every
  transaction with ``BEGIN IMMEDIATE``, which takes the database's write lock
  up front; Alembic sees the connection already in a transaction and leaves
  transaction control to us.
- Threads of one process are also serialised, by a process-wide lock: Alembic's
  ``op`` and ``context`` are module-level proxies to the one running migration,
  so two upgrades in two threads (say, two stores) would send each other's DDL
  down the wrong connection.

Stores created before migrations existed (by ``metadata.create_all``) have
the tables but no ``alembic_version`` table. They are not adopted: guessing
whether such a store matches revision 0001 exactly is not worth the risk
while the project is pre-release, so :func:`upgrade` refuses with a
:class:`~store.errors.StoreError` saying to recreate the store.

New revisions are written by hand (autogenerate does not see views, and a
revision must keep creating the schema it was written for, so each one spells
out its DDL): change store/tables.py, add store/migrations/versions/<id>.py
whose file name is its revision id and whose ``down_revision`` is the current
head (see 0004_usage_api_index.py), and run tests/integration/test_migrations.py;
its ``compare_metadata`` check fails on SQLite and PostgreSQL until a store
upgraded to head has exactly the tables of store/tables.py.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

# Before Alembic is imported: it registers its built-in autogenerate plugins at
# import time, logging "setup plugin ..." at INFO for each, which would be
# seven lines of noise on stderr for every command that touches the store.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

import re
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from store.errors import StoreError, StoreNotMigrated, StoreRevisionUnknown
from store.tables import metadata

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
# First argument of the two-key pg_advisory_xact_lock ("APIM" in ASCII); the
# second is a hash of the schema, so stores in different schemas of one
# database (the tests' private schemas) do not wait for each other.
_PG_LOCK_NAMESPACE = 0x4150494D
_IN_PROCESS = threading.Lock()  # taken before the database lock, always: no lock-order cycle


class _DropContextChatter(logging.Filter):
    """Alembic logs "Context impl X" and "Will assume ... DDL" at INFO for every
    MigrationContext, i.e. on every current_revision() and every start; only its
    "Running upgrade a -> b" lines say something happened, so only those are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Context impl", "Will assume"))


logging.getLogger("alembic.runtime.migration").addFilter(_DropContextChatter())


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config pointing at the packaged scripts; no alembic.ini is read.

    ``connection`` reaches store/migrations/env.py through ``config.attributes``.
    """
    from alembic.config import Config

    config = Config()
    # Config values go through configparser interpolation: a '%' in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("file_template", "%%(rev)s")  # versions/0001_initial.py: the id is the file name
    config.attributes["connection"] = connection
    return config


@functools.cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


_REVISION_LINE = re.compile(r"""^(down_revision|revision)\b[^=\n]*=\s*(?:["']([^"'\n]*)["']|None)""", re.MULTILINE)


@functools.cache
def shipped_head() -> str:
    """The newest revision shipped, read from the scripts' ``revision`` and ``down_revision`` lines.

    Why not Alembic's: importing Alembic and loading every script costs about 0.4 CPU-s, paid by
    every process that opens the store only to find it already at head (an idle ``pipeline run
    --once`` is budgeted 1 CPU-s in all). tests/unit/test_migrate_head.py holds the two equal;
    anything this reading cannot settle (a branch, an odd line) is left to Alembic.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(_REVISION_LINE.findall(script.read_text(encoding="utf-8")))
        if "revision" not in found:
            return head_revision()
        revisions.add(found["revision"])
        if found.get("down_revision"):
            parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else head_revision()


def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001_initial
        raise StoreError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _current(conn: Connection) -> str | None:
    """The store's revision, read with plain SQL (no Alembic import); None when it has none."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def current_revision(engine: Engine) -> str | None:
    """The store's revision; None for an empty store (or one from before migrations)."""
    with engine.connect() as conn:
        return _current(conn)


def require_current(engine: Engine, where: str) -> None:
    """Refuse to read a store whose schema is not the one this code reads.

    Readers never migrate (they may hold read-only credentials, and reading must
    not change anything), so they say what to run instead.

    Raises:
        StoreNotMigrated: the store has no schema, or another revision than head.
    """
    current = current_revision(engine)
    if current == shipped_head():
        return
    head = head_revision()
    if current is None:
        raise StoreNotMigrated(f"{where} has no analytics tables",
                               hint="create them with 'apim-analytics store migrate --store URL'")
    from alembic.util import CommandError

    try:
        known = _script().get_revision(current) is not None
    except CommandError:  # alembic's one error type: a revision its scripts do not have
        known = False
    if not known:
        raise StoreNotMigrated(f"{where} is at schema revision {current!r}, newer than this version's {head!r}",
                               hint="upgrade istio-apim-analytics to read it")
    raise StoreNotMigrated(f"{where} is at schema revision {current!r}; this version reads {head!r}",
                           hint="upgrade it with 'apim-analytics store migrate --store URL'")


def _lock(conn: Connection) -> None:
    """Serialise upgraders of this store until the transaction ends (see the module docstring)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:ns, hashtext(coalesce(current_schema(), '')))"),
                     {"ns": _PG_LOCK_NAMESPACE})
    # SQLite: the transaction already began with BEGIN IMMEDIATE (store/engine.py).


def _refuse_pre_alembic(conn: Connection) -> None:
    """Raise when the store has our tables but no version table (made by the old create_all)."""
    existing = set(inspect(conn).get_table_names())
    if VERSION_TABLE in existing:
        return
    ours = sorted(existing & set(metadata.tables))
    if ours:
        url = conn.engine.url.render_as_string(hide_password=True)
        raise StoreError(
            f"store {url} has analytics tables ({', '.join(ours[:3])}{', ...' if len(ours) > 3 else ''}) "
            f"but no {VERSION_TABLE} table: it was created before schema migrations existed and cannot be "
            "upgraded in place; recreate it (a new SQLite file, or drop those tables / use a new PostgreSQL "
            "schema), then run `apim-analytics store migrate --store URL`")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the store to ``revision`` (default: head) in one locked transaction.

    Idempotent: a store already there is left untouched. Creates the schema in
    an empty store.

    Raises:
        StoreError: the store predates migrations (see the module docstring), or
            ``revision`` is unknown or behind the store.
    """
    if revision != "head":
        from alembic.util import CommandError

        try:
            known = _script().get_revision(revision) is not None
        except CommandError:  # alembic's one error type: an unknown or ambiguous identifier
            known = False
        if not known:
            newest = head_revision()
            raise StoreRevisionUnknown(f"no schema revision {revision!r}",
                                       hint=f"name one of store/migrations/versions (the newest is {newest!r})")
    with _IN_PROCESS, engine.begin() as conn:
        _lock(conn)
        _refuse_pre_alembic(conn)
        if revision == "head" and _current(conn) == shipped_head():
            return  # the common case on every start: no Alembic import, no scripts loaded
        from alembic import command
        from alembic.util import CommandError

        try:
            command.upgrade(alembic_config(conn), revision)
        except CommandError as exc:  # one error type for callers; the transaction rolls back
            raise StoreError(f"cannot upgrade the store to {revision!r}: {exc}") from exc
