"""``apim-analytics store ...``: schema migrations from the command line.

    apim-analytics store migrate --store URL [--revision REV]   upgrade the schema (default: to head)
    apim-analytics store revision --store URL                   print the store's current revision

``revision`` only reads: it never creates a SQLite file.
"""

from __future__ import annotations

import argparse

from apim_analytics.common import add_store_flags, store_url


def _migrate(args: argparse.Namespace) -> int:
    from store import migrate
    from store.engine import make_engine

    engine = make_engine(store_url(args))
    try:
        before = migrate.current_revision(engine)
        migrate.upgrade(engine, args.revision)
        after = migrate.current_revision(engine)
    finally:
        engine.dispose()
    print(f"store: {before or '<empty>'} -> {after or '<empty>'}")
    return 0


def _revision(args: argparse.Namespace) -> int:
    from store import migrate
    from store.engine import make_engine

    engine = make_engine(store_url(args), readonly=True)
    try:
        current = migrate.current_revision(engine)
    finally:
        engine.dispose()
    print(current or "<empty>")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``store`` command and its actions to the top-level subparsers."""
    store = sub.add_parser("store", help="the analytics store's schema (Alembic migrations)").add_subparsers(
        dest="action", required=True, metavar="ACTION")

    mig = store.add_parser("migrate", help="upgrade the store's schema (creates it when the store is empty)")
    add_store_flags(mig)
    mig.add_argument("--revision", default="head", help="target revision (default: head)")
    mig.set_defaults(func=_migrate)

    rev = store.add_parser("revision", help="print the store's current schema revision")
    add_store_flags(rev)
    rev.set_defaults(func=_revision)
