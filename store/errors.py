"""The store's errors, and the one place database-driver errors become them.

Every engine made by :func:`store.engine.make_engine` translates the driver's
errors about the store's state as they are raised (SQLAlchemy's ``handle_error``
event); an error that is the statement's fault (SQL syntax, a bad bind value, a
constraint our code broke) is a defect and keeps SQLAlchemy's type.
Classification uses what the drivers expose as data: psycopg's SQLSTATE
class and SQLite's result-code name, never message text. The driver's own
reason is kept in the message, because it is what an operator needs to read
("password authentication failed for user ...", "Connection refused").
"""

from __future__ import annotations

from typing import Any

from core.errors import ApimError, InputError, RetriableError


class StoreError(ApimError):
    """Root of the store's errors: the store cannot be used as asked."""


class StoreUrlError(StoreError, InputError):
    """The store URL is malformed or names a database we do not support."""


class StoreUnavailable(StoreError, RetriableError):
    """The database cannot be reached or is busy; the same call may succeed later."""


class StoreNotFound(StoreError):
    """A reader was pointed at a SQLite file that does not exist (readers never create one)."""


class StoreNotMigrated(StoreError):
    """The store has no schema, or an older one than this version reads."""


class StoreRevisionUnknown(StoreError, InputError):
    """``store migrate --revision`` names no revision this version ships."""


class StoreConflict(StoreError, RetriableError):
    """A concurrent writer got there first (serialization failure, deadlock); plan again."""


# PostgreSQL SQLSTATE classes (first two characters) after which a retry can help:
# 08 connection exception, 40 transaction rollback (serialization, deadlock),
# 53 insufficient resources, 57 operator intervention (shutdown, starting up), 58 system error.
_RETRIABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})
_UNDEFINED_TABLE = "42P01"
_SQLITE_RETRIABLE = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_PROTOCOL"})


def about_the_store(orig: BaseException) -> bool:
    """The server's SQLSTATE says the store's state is at fault (away, busy, no schema, login refused),
    not the statement (DB-API OperationalErrors, SQLite's included, are taken as such by the caller)."""
    sqlstate = getattr(orig, "sqlstate", None)
    if not sqlstate:
        return False
    return sqlstate == _UNDEFINED_TABLE or sqlstate[:2] in _RETRIABLE_SQLSTATE_CLASSES | {"40", "28", "3D"}


def _reason(orig: BaseException) -> str:
    """The driver's own first line of explanation (psycopg adds SQL context and advice on later lines)."""
    lines = str(orig).strip().splitlines() or [type(orig).__name__]
    return " ".join(lines[0].split()).removeprefix("connection failed: ")[:300]


def translate(exc: BaseException, *, where: str = "the store", connecting: bool = False) -> StoreError:
    """A :class:`StoreError` for a driver or SQLAlchemy error (returned, for ``raise ... from exc``).

    Args:
        exc: a ``sqlalchemy.exc.DBAPIError``, or the driver's own exception.
        where: the store, named without its password.
        connecting: the error came while opening a connection (any such
            failure is retriable: a server that is restarting refuses logins).
    """
    if isinstance(exc, StoreError):
        return exc
    orig: Any = getattr(exc, "orig", None) or exc
    reason = _reason(orig)
    sqlstate = getattr(orig, "sqlstate", None)
    sqlite_name = getattr(orig, "sqlite_errorname", None)
    if sqlstate == _UNDEFINED_TABLE:
        return StoreNotMigrated(f"{where} has no analytics tables ({reason})",
                                hint="run 'apim-analytics store migrate' against it first")
    if sqlstate and sqlstate[:2] == "40":
        return StoreConflict(f"{where}: transaction rolled back ({reason})")
    if connecting or getattr(exc, "connection_invalidated", False) or (
            sqlstate and sqlstate[:2] in _RETRIABLE_SQLSTATE_CLASSES):
        return StoreUnavailable(f"cannot connect to {where}: {reason}",
                                hint="check that the database runs and the URL's host, port, user and password")
    if sqlite_name in _SQLITE_RETRIABLE:
        return StoreUnavailable(f"{where} is busy: {reason}")
    return StoreError(f"{where}: {reason}")
