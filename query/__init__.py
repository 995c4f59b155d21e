"""Python query API over the analytics store, returning pandas DataFrames (see query/usage.py)."""

from query.usage import (
    GRANULARITIES,
    GROUP_BY,
    MEASURES,
    QueryError,
    choose_table,
    usage,
)

__all__ = ["GRANULARITIES", "GROUP_BY", "MEASURES", "QueryError", "choose_table", "usage"]
