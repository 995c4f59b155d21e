"""The query package's errors."""

from __future__ import annotations

from core.errors import ApimError, InputError


class QueryError(ApimError):
    """Root of the query package's errors."""


class QueryArgumentError(QueryError, InputError, ValueError):
    """The query's arguments are invalid; the message says which and why."""
