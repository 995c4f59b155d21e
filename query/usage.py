"""Usage queries: group the fact tables by any dimensions, over any time range, as a DataFrame.

    usage("sqlite:///apim-analytics.db", group_by=["api", "application"],
          start=datetime(2024, 5, 1), end=datetime(2024, 6, 1), top=10)

Group-by names and the output columns they produce (in the order requested):

    api -> api_name          version -> api_version      application -> application_id
    tier -> tier             resource -> resource_template  method -> method
    context -> api_context   key_type -> key_type        status_class -> status_class (2xx..5xx)
    bucket -> bucket_start (the time bucket at ``granularity``)
    user -> user_name (table usage_user_day)   destination -> destination (usage_destination_hour/day)

The measures follow the group columns, always all of them, in the order of ``MEASURES``:
requests, errors_4xx, errors_5xx, throttled_out, request_bytes, response_bytes, latency_p50_ms,
latency_p95_ms, latency_p99_ms, latency_mean_ms, latency_max_ms, faults.

- p50/p95/p99 are nearest-rank percentiles of the summed fixed-boundary histograms
  (store.latency.percentile), so they are exact for any rollup up to the histogram's 10% bucket error.
- latency_mean_ms = latency_sum_us / requests / 1000 (as the usage tables define it).
- With ``status_class``, one row per class with traffic: requests is that class's count
  (count_2xx .. count_5xx) and errors_4xx/errors_5xx the class's errors (0 for other classes).
  Measures the store does not split by status class (throttled_out, bytes, latencies, faults)
  are NaN on those rows. Requests without a 2xx-5xx response code (e.g. gateway faults with no
  response) belong to no class, so the classes' requests may add up to less than the total.
- ``user`` reads usage_user_day (daily; allowed only with api, version, application and bucket;
  granularity day or month; a range must be whole days) which stores requests, 4xx, 5xx,
  throttled_out and response_bytes; the other measures are NaN.
- ``destination`` reads usage_destination_hour/day (allowed only with api, version and bucket;
  granularity hour, day or month; a range must be whole hours) which stores requests, 5xx,
  faults and latency sums; the other measures are NaN.

Table choice (``choose_table``): the coarsest table that answers exactly. A table is usable when
its granularity is not coarser than the ``granularity`` asked for, and when ``start`` and ``end``
fall on its bucket boundaries (first of the month at midnight for usage_month, midnight for
usage_day, whole hours for usage_hour, whole minutes for usage_minute). Where that is usage_day and
the question groups by neither resource nor method, usage_app_day answers instead: the same sums
without those two dimensions, about a sixth of the rows. A range that is not even
minute-aligned is read from usage_minute, selecting the minutes that *start* in [start, end).
Without start/end every stored bucket is read.

Times are UTC: naive datetimes are taken as UTC, aware ones converted. Every value reaches the
database as a bound parameter (SQLAlchemy Core). Bad arguments raise ``query.errors.QueryArgumentError``.
"""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, Engine, Table, cast, func, select

from query.errors import QueryArgumentError
from query.names import GRANULARITIES, GROUP_BY, MEASURES, STATUS_CLASSES
from store import tables as t
from store.engine import open_reader
from store.latency import BUCKET_COUNT, histogram_column, percentiles_at

__all__ = ["GRANULARITIES", "GROUP_BY", "MEASURES", "STATUS_CLASSES", "QueryArgumentError", "choose_table", "usage"]
_RANK = {g: i for i, g in enumerate(GRANULARITIES)}
#: Up to this many stored rows in the asked range, ``usage`` reads them as they are and groups them with
#: pandas; beyond it, PostgreSQL or SQLite groups them. Why: the database sums BIGINT columns into NUMERIC
#: and converts every sum back, 67 per group; where the rows are barely more than the groups (a month of
#: one API by application and day: 4,440 rows, 4,080 groups), that cost 50-90 ms of the query on
#: PostgreSQL, while reading the rows as they are took 7 ms of server time (bench/query_latency.py). Where
#: rows are many times the groups, the database's grouping sends far less (the top 10 applications of a
#: month: 3,324 rows, 201 groups, 42 ms grouped by PostgreSQL, 87 ms here), so the cap stays near the
#: size where reading every row costs what the database's grouping does. One COUNT(*) over the same index
#: range decides.
FOLD_ROWS_UP_TO = 10_000
_HIST = tuple(histogram_column(i) for i in range(BUCKET_COUNT))


class _Family:
    """A family of fact tables (one per granularity) and what it can answer."""

    def __init__(self, name: str, tables: dict[str, Table], groups: frozenset[str], sums: Sequence[str],
                 maxes: Sequence[str] = ()) -> None:
        self.name, self.tables, self.groups, self.sums, self.maxes = name, tables, groups, tuple(sums), tuple(maxes)


_USAGE = _Family("usage", t.USAGE_TABLES,
                 frozenset(GROUP_BY) - {"user", "destination"},
                 ("requests", "count_2xx", "count_3xx", "count_4xx", "count_5xx", "faults", "throttled_out",
                  "request_bytes", "response_bytes", "latency_sum_us", *_HIST), ("latency_max_us",))
_USER = _Family("user", {"day": t.usage_user_day}, frozenset({"api", "version", "application", "bucket", "user"}),
                t.USER_DAY_SUM_COLUMNS)
_DESTINATION = _Family("destination", t.DESTINATION_TABLES,
                       frozenset({"api", "version", "bucket", "destination"}), t.DESTINATION_SUM_COLUMNS)


def _family(group_by: Sequence[str]) -> _Family:
    unknown = [g for g in group_by if g not in GROUP_BY]
    if unknown:
        raise QueryArgumentError(f"unknown group-by name(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(GROUP_BY)}")
    if len(set(group_by)) != len(group_by):
        raise QueryArgumentError(f"group-by names repeat: {', '.join(group_by)}")
    family = _USER if "user" in group_by else _DESTINATION if "destination" in group_by else _USAGE
    if "user" in group_by and "destination" in group_by:
        raise QueryArgumentError("'user' and 'destination' cannot be grouped together (they live in different tables)")
    extra = [g for g in group_by if g not in family.groups]
    if extra:
        raise QueryArgumentError(f"group-by {', '.join(map(repr, extra))} cannot be combined with {family.name!r} "
                         f"(allowed with it: {', '.join(sorted(family.groups))})")
    return family


def _utc(value: dt.datetime | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise QueryArgumentError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def _aligned(value: dt.datetime, granularity: str) -> bool:
    if value.second or value.microsecond:
        return False
    if granularity == "minute":
        return True
    if value.minute:
        return False
    if granularity == "hour":
        return True
    if value.hour:
        return False
    return granularity == "day" or value.day == 1


def _check(start: dt.datetime | None, end: dt.datetime | None, granularity: str | None) -> None:
    if granularity is not None and granularity not in _RANK:
        raise QueryArgumentError(f"unknown granularity {granularity!r}; choose from {', '.join(GRANULARITIES)}")
    if start is not None and end is not None and start >= end:
        raise QueryArgumentError(f"empty or inverted time range: start {start.isoformat()} is not before "
                         f"end {end.isoformat()}")


#: Group-by names that usage_app_day, the daily rollup without resource and method, cannot answer.
_NOT_IN_APP_DAY = frozenset({"resource", "method"})


def _choose(family: _Family, start: dt.datetime | None, end: dt.datetime | None,
            granularity: str | None, group_by: Sequence[str] = ()) -> str:
    for gran in sorted(family.tables, key=_RANK.__getitem__, reverse=True):  # coarsest first
        if granularity is not None and _RANK[gran] > _RANK[granularity]:
            continue
        if all(v is None or _aligned(v, gran) for v in (start, end)):
            if family is _USAGE and gran == "day" and not _NOT_IN_APP_DAY & set(group_by):
                return t.usage_app_day.name  # the same sums in about a sixth of the rows
            return family.tables[gran].name
    if family is _USAGE:  # not even minute-aligned: the minutes that start inside the range
        return t.usage_minute.name
    finest = min(family.tables, key=_RANK.__getitem__)
    if granularity is not None and _RANK[granularity] < _RANK[finest]:
        raise QueryArgumentError(f"grouping by {family.name!r} needs granularity {finest} or coarser, "
                                 f"not {granularity}")
    raise QueryArgumentError(f"grouping by {family.name!r} reads per-{finest} data: the time range must start and end "
                     f"on whole {finest}s")


def choose_table(group_by: Sequence[str] = (), start: dt.datetime | None = None, end: dt.datetime | None = None,
                 granularity: str | None = None) -> str:
    """The name of the table ``usage`` would read for these arguments (see the module docstring)."""
    group_by = list(group_by)
    family = _family(group_by)
    start, end = _utc(start, "start"), _utc(end, "end")
    _check(start, end, granularity)
    return _choose(family, start, end, granularity, group_by)


def _names(values: str | Iterable[str] | None, what: str) -> list[str] | None:
    if values is None:
        return None
    names = [values] if isinstance(values, str) else list(values)
    if not names:
        raise QueryArgumentError(f"an empty list of {what}s selects nothing; pass None for all")
    return names


def _check_apis(conn, table: Table, apis: list[str]) -> None:
    known = set(conn.execute(select(t.api_catalog.c.api_name).where(t.api_catalog.c.api_name.in_(apis))
                             .distinct()).scalars())
    missing = [a for a in apis if a not in known]
    if missing:
        known |= set(conn.execute(select(table.c.api_name).where(table.c.api_name.in_(missing))
                                  .distinct()).scalars())
    missing = [a for a in apis if a not in known]
    if missing:
        raise QueryArgumentError(f"unknown API name(s): {', '.join(map(repr, missing))}")


def _truncate(col: pd.Series, granularity: str) -> pd.Series:
    stamps = pd.to_datetime(col)
    if granularity == "month":
        return stamps.dt.to_period("M").dt.to_timestamp()  # type: ignore[return-value]  # stubs say DatetimeArray
    return stamps.dt.floor({"minute": "min", "hour": "h", "day": "D"}[granularity])


def usage(store: str | Engine, *, group_by: Sequence[str], start: dt.datetime | None = None,
          end: dt.datetime | None = None, granularity: str | None = None,
          apis: str | Iterable[str] | None = None, applications: str | Iterable[str] | None = None,
          top: int | None = None, measures: Sequence[str] | None = None,
          fold_rows_up_to: int = FOLD_ROWS_UP_TO) -> pd.DataFrame:
    """Usage measures grouped by ``group_by`` over ``[start, end)``, one row per group.

    Args:
        store: a store URL (opened read-only) or an Engine.
        group_by: names from ``GROUP_BY`` (``bucket`` needs ``granularity``).
        start, end: UTC; ``None`` for unbounded.
        granularity: minute, hour, day or month: the size of ``bucket_start``, and the finest table usable.
        apis: API name(s) to keep (each must exist in the store); applications: application id(s) to keep.
        top: keep the N rows with most requests (ordered by requests, descending).
        measures: compute only these (names from ``MEASURES``; ``requests`` always); the others are NaN.
            Why: the latency histogram is 57 columns, so a caller that needs counts only (a top-N, a
            breakdown by tier) reads a fraction of the data. Default: all.
        fold_rows_up_to: when the range holds at most this many rows of the table, they are read as they
            are and grouped here rather than by the database (see ``FOLD_ROWS_UP_TO``); 0 never.

    Raises:
        QueryArgumentError: an unknown name, granularity or API, an empty/inverted range, top < 1.
    """
    group_by = list(group_by)
    family = _family(group_by)
    start, end = _utc(start, "start"), _utc(end, "end")
    _check(start, end, granularity)
    if "bucket" in group_by and granularity is None:
        raise QueryArgumentError(f"grouping by bucket needs a granularity ({', '.join(GRANULARITIES)})")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise QueryArgumentError(f"top must be a positive integer, not {top!r}")
    api_names = _names(apis, "API")
    app_ids = _names(applications, "application")
    if app_ids is not None and "application_id" not in {c.name for c in family.tables[next(iter(family.tables))].c}:
        raise QueryArgumentError(f"grouping by {family.name!r}: the table has no application to filter on")
    table = t.metadata.tables[_choose(family, start, end, granularity, group_by)]

    keys = [GROUP_BY[g] for g in group_by if g != "status_class"]
    sum_cols, max_cols = _sources(family, measures, "status_class" in group_by)
    conditions = []
    if start is not None:
        conditions.append(table.c.bucket_start >= start)
    if end is not None:
        conditions.append(table.c.bucket_start < end)
    if api_names is not None:
        conditions.append(table.c.api_name.in_(api_names))
    if app_ids is not None:
        conditions.append(table.c.application_id.in_(app_ids))
    query = select(*(table.c[k] for k in keys),
                   *(cast(func.sum(table.c[s]), BigInteger).label(s) for s in sum_cols),
                   *(func.max(table.c[m]).label(m) for m in max_cols)).where(*conditions)
    if keys:
        query = query.group_by(*(table.c[k] for k in keys))

    engine = store if isinstance(store, Engine) else _open(store)
    try:
        with engine.connect() as conn:
            if api_names is not None:
                _check_apis(conn, table, api_names)
            folded_here = bool(keys) and fold_rows_up_to > 0 and conn.execute(
                select(func.count()).select_from(table).where(*conditions)).scalar_one() <= fold_rows_up_to
            if folded_here:
                query = select(*(table.c[k] for k in keys), *(table.c[c] for c in sum_cols + max_cols)).where(
                    *conditions)
            with _collector_paused():
                rows = conn.execute(query).all()
                raw = _frame(rows, keys, sum_cols + max_cols)
            del rows
    finally:
        if engine is not store:
            engine.dispose()

    regroup = folded_here
    if "bucket_start" in keys:
        raw["bucket_start"] = pd.to_datetime(raw["bucket_start"])
        # Only a table finer than the granularity asked for (the hours or minutes of an unaligned range)
        # has buckets to fold into coarser ones here.
        if granularity is not None and _granularity_of(family, table) != granularity:  # not None: checked above
            raw["bucket_start"] = _truncate(raw["bucket_start"], granularity)
            regroup = True
    if regroup:
        raw = _regroup(raw, keys, sum_cols, max_cols)

    out = _measures(raw, keys)
    if "status_class" in group_by:
        out = _split_status(raw, out)
    group_cols = [GROUP_BY[g] for g in group_by]
    out = out[group_cols + list(MEASURES)]
    if top is not None:
        out = out.sort_values(["requests", *group_cols], ascending=[False] + [True] * len(group_cols),
                              kind="stable").head(top)
    elif group_cols:
        out = out.sort_values(group_cols, kind="stable")
    return out.reset_index(drop=True)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while the rows arrive and become a frame.

    Why: a month of the busiest API is 4,440 rows of 69 values, about 300,000 new objects, none of them
    in a cycle; every 700 allocations the collector walks the young ones, and some passes reach the
    oldest generation, whose walks were the slowest calls' extra 50-100 ms (the same query: max 112-152
    ms with collection paused, 194-223 ms without). Reference counting still frees everything.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _regroup(raw: pd.DataFrame, keys: list[str], sum_cols: list[str], max_cols: list[str]) -> pd.DataFrame:
    """Rows to one per key: sums and maxima, each as one block operation (a dict of per-column
    aggregations costs a groupby pass per column: 60 ms for 67 columns of 4,440 rows)."""
    grouped = raw.groupby(keys, sort=False, dropna=False)
    parts = [grouped[sum_cols].sum()] + ([grouped[max_cols].max()] if max_cols else [])
    return pd.concat(parts, axis=1).reset_index()


def _frame(rows: Sequence[Sequence], keys: list[str], values: list[str]) -> pd.DataFrame:
    """The query's rows as a frame: the key columns as returned, the sums and maxima as one int64 block.

    Why one block: a frame built from row tuples holds every column as Python objects and needs a
    conversion per column; a month of one API by application and day is 70 columns by thousands of
    rows, where those conversions took a third of the 200 ms budget (bench/query_latency.py). The block
    is filled in one pass of C iteration over every value (zip(*rows) into tuples, then an array per
    column, cost 3x as much).
    """
    if not keys:  # an aggregate without GROUP BY returns one row even over no data
        rows = [r for r in rows if r[0] is not None]
    k, n = len(keys), len(rows)
    block = np.fromiter(chain.from_iterable(r[k:] for r in rows), dtype=np.int64,
                        count=n * len(values)).reshape(n, len(values))
    frame = pd.DataFrame(block, columns=values)
    for i, key in enumerate(keys):
        frame.insert(i, key, pd.Series([r[i] for r in rows], dtype=object))
    return frame


def _granularity_of(family: _Family, table: Table) -> str:
    if table is t.usage_app_day:
        return "day"
    return next(g for g, tb in family.tables.items() if tb is table)


_SOURCES: dict[str, tuple[str, ...]] = {
    "requests": ("requests",), "errors_4xx": ("count_4xx",), "errors_5xx": ("count_5xx",),
    "throttled_out": ("throttled_out",), "request_bytes": ("request_bytes",), "response_bytes": ("response_bytes",),
    "latency_p50_ms": _HIST, "latency_p95_ms": _HIST, "latency_p99_ms": _HIST,
    "latency_mean_ms": ("latency_sum_us",), "latency_max_ms": ("latency_max_us",), "faults": ("faults",),
}


def _sources(family: _Family, measures: Sequence[str] | None, by_status: bool) -> tuple[list[str], list[str]]:
    """The stored columns to sum and to max for ``measures`` (all of the family's when None)."""
    if measures is None:
        return list(family.sums), list(family.maxes)
    unknown = [m for m in measures if m not in _SOURCES]
    if unknown:
        raise QueryArgumentError(f"unknown measure(s) {', '.join(map(repr, unknown))}; "
                                 f"choose from {', '.join(MEASURES)}")
    wanted = {"requests"} | {c for m in measures for c in _SOURCES[m]}
    if by_status:
        wanted |= {f"count_{cls}" for cls in STATUS_CLASSES}
    return [c for c in family.sums if c in wanted], [c for c in family.maxes if c in wanted]


def _open(url: str) -> Engine:
    return open_reader(url)


def _measures(raw: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The group columns and every measure (NaN where the table does not store it), as a new frame:
    copying the 70 raw columns to add 12 cost more than computing the measures."""
    n = len(raw)
    nan = np.full(n, np.nan)

    def col(name: str) -> np.ndarray | pd.Series:
        return raw.get(name, nan)

    out: dict[str, object] = {k: raw[k] for k in keys}
    for measure, stored in (("requests", "requests"), ("errors_4xx", "count_4xx"), ("errors_5xx", "count_5xx"),
                            ("throttled_out", "throttled_out"), ("request_bytes", "request_bytes"),
                            ("response_bytes", "response_bytes"), ("faults", "faults")):
        out[measure] = col(stored)
    names = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
    if all(h in raw for h in _HIST):
        hist = raw[list(_HIST)].to_numpy(dtype=np.int64)
        values = percentiles_at(hist, (0.50, 0.95, 0.99)) if n else [np.empty(0)] * 3
        out.update(zip(names, values, strict=True))
    else:
        out.update(dict.fromkeys(names, nan))
    if "latency_sum_us" in raw:
        req = raw["requests"].where(raw["requests"] > 0)
        out["latency_mean_ms"] = (raw["latency_sum_us"] / req / 1000.0).astype("float64")
    else:
        out["latency_mean_ms"] = nan
    out["latency_max_ms"] = (raw["latency_max_us"] / 1000.0).astype("float64") if "latency_max_us" in raw else nan
    return pd.DataFrame(out, index=raw.index)


def _split_status(raw: pd.DataFrame, out: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for cls in STATUS_CLASSES:
        part = out.copy()
        part["status_class"] = cls
        part["requests"] = raw[f"count_{cls}"]
        part["errors_4xx"] = raw["count_4xx"] if cls == "4xx" else 0
        part["errors_5xx"] = raw["count_5xx"] if cls == "5xx" else 0
        for name in MEASURES:
            if name not in ("requests", "errors_4xx", "errors_5xx"):
                part[name] = np.nan
        parts.append(part[part["requests"] > 0])
    if not parts:
        return out.assign(status_class=pd.Series(dtype="object"))
    result = pd.concat(parts, ignore_index=True)
    for name in ("requests", "errors_4xx", "errors_5xx"):
        result[name] = result[name].astype("int64")
    return result
