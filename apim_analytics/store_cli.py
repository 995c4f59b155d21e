"""``apim-analytics store ...``: schema migrations from the command line.

    apim-analytics store migrate --store URL [--revision REV]   upgrade the schema (default: to head)
    apim-analytics store revision --store URL                   print the store's current revision

Kept out of apim_analytics/cli.py so the store's commands live next to each
other; cli.py only calls :func:`add_parser`. Any failure is one line on
stderr and exit status 2, like the rest of the CLI.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from store.engine import DEFAULT_STORE_URL


def _store_default() -> str:
    return os.environ.get("APIM_STORE_URL", DEFAULT_STORE_URL)


def _fail(message: str) -> int:
    first = (message.strip().splitlines() or ["unknown error"])[0]
    print(f"apim-analytics: store: {first}", file=sys.stderr)
    return 2


def _guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn store and database errors into one stderr line and exit status 2.

    The actions import store.migrate before anything else of Alembic's: it quiets
    Alembic's import-time logging, which would otherwise land on stderr too.
    """
    def run(args: argparse.Namespace) -> int:
        from sqlalchemy.exc import SQLAlchemyError

        from store.engine import StoreError

        try:
            return action(args)
        except StoreError as exc:
            return _fail(str(exc))
        except SQLAlchemyError as exc:
            # str() of a DBAPI error spans lines (SQL, parameters, help link); the
            # original driver message is the useful part.
            return _fail(f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}")
    return run


def _migrate(args: argparse.Namespace) -> int:
    from store import migrate
    from store.engine import make_engine

    engine = make_engine(args.store)
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

    engine = make_engine(args.store)
    try:
        current = migrate.current_revision(engine)
    finally:
        engine.dispose()
    print(current or "<empty>")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``store`` command and its actions to the top-level subparsers."""
    store = sub.add_parser("store", help="the analytics store's schema (Alembic migrations)").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    store_help = f"SQLAlchemy URL [env: APIM_STORE_URL; default: {DEFAULT_STORE_URL}]"

    mig = store.add_parser("migrate", help="upgrade the store's schema (creates it when the store is empty)")
    mig.add_argument("--store", default=_store_default(), help=store_help)
    mig.add_argument("--revision", default="head", help="target revision (default: head)")
    mig.set_defaults(func=_guarded(_migrate))

    rev = store.add_parser("revision", help="print the store's current schema revision")
    rev.add_argument("--store", default=_store_default(), help=store_help)
    rev.set_defaults(func=_guarded(_revision))
