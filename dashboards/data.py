"""The dashboard's data: one JSON-ready document per page, read from the store.

Why one document with per-bucket rows (rather than a query per chart): the page must work as a
single self-contained file, so its time-range and API filters run in the browser over the rows
embedded here. Every number is summed in the browser from these rows, so the rows are the finest
the filters need: per (bucket, API) for traffic and errors, per (bucket, API, application) and
(bucket, API, tier) for the breakdowns, per (bucket, subscription) for quota use. Latency
percentiles do not add, so they are computed here from the summed histograms (``query.usage``)
per (bucket, API) and per bucket over all APIs.

The time range: ``[start, end)`` when given, aligned outward to the chosen granularity; else from
the first event the store has seen (``api_catalog.first_seen``) to the last. Granularity ``auto``
is the finest one whose table still holds the range's start (retention purges minutes first) and
that gives at most ``max_buckets`` buckets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, TypeVar, overload

import pandas as pd
from sqlalchemy import Connection, Engine, String, and_, case, func, literal, select, tuple_

from query.errors import QueryArgumentError
from query.usage import GRANULARITIES, usage
from store import tables as t

FORMAT_VERSION = 1
"""Bumped when the document's shape changes (the page checks it)."""

_STEP = {"minute": dt.timedelta(minutes=1), "hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}
_SQLITE_BUCKET = {"minute": "%Y-%m-%d %H:%M:00", "hour": "%Y-%m-%d %H:00:00", "day": "%Y-%m-%d 00:00:00",
                  "month": "%Y-%m-01 00:00:00"}


def floor_to(ts: dt.datetime, granularity: str) -> dt.datetime:
    """The start of the ``granularity`` bucket holding ``ts``."""
    ts = ts.replace(second=0, microsecond=0)
    if granularity == "minute":
        return ts
    ts = ts.replace(minute=0)
    if granularity == "hour":
        return ts
    ts = ts.replace(hour=0)
    return ts if granularity == "day" else ts.replace(day=1)


def next_bucket(ts: dt.datetime, granularity: str) -> dt.datetime:
    """The start of the bucket after the one starting at ``ts``."""
    if granularity == "month":
        return ts.replace(year=ts.year + ts.month // 12, month=ts.month % 12 + 1)
    return ts + _STEP[granularity]


def ceil_to(ts: dt.datetime, granularity: str) -> dt.datetime:
    """The first bucket boundary at or after ``ts``."""
    floor = floor_to(ts, granularity)
    return floor if floor == ts else next_bucket(floor, granularity)


def bucket_count(start: dt.datetime, end: dt.datetime, granularity: str) -> int:
    """Buckets of ``granularity`` in the aligned range ``[start, end)``."""
    if granularity == "month":
        return (end.year - start.year) * 12 + end.month - start.month
    return int((end - start) / _STEP[granularity])


K = TypeVar("K", bound=Hashable)


@overload
def _naive_utc(value: dt.datetime) -> dt.datetime: ...
@overload
def _naive_utc(value: None) -> None: ...
@overload
def _naive_utc(value: dt.datetime | None) -> dt.datetime | None: ...
def _naive_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def stored_span(conn: Connection) -> tuple[dt.datetime, dt.datetime] | None:
    """Event time of the first and last request the store has seen (None for an empty store)."""
    c = t.api_catalog.c
    row = conn.execute(select(func.min(c.first_seen), func.max(c.last_seen))).one()
    if row[0] is None:
        return None
    return _naive_utc(row[0]), _naive_utc(row[1])


def _table_starts(conn: Connection) -> dict[str, dt.datetime | None]:
    return {g: _naive_utc(conn.execute(select(func.min(t.USAGE_TABLES[g].c.bucket_start))).scalar())
            for g in GRANULARITIES}


def choose_granularity(start: dt.datetime, end: dt.datetime, table_starts: dict[str, dt.datetime | None],
                       max_buckets: int) -> str:
    """The finest granularity whose table holds ``start`` and whose bucket count fits (else month)."""
    for g in GRANULARITIES[:-1]:
        first = table_starts.get(g)
        aligned_start, aligned_end = floor_to(start, g), ceil_to(end, g)
        if first is None or first > aligned_start:
            continue  # retention has purged the range's beginning from this table
        if bucket_count(aligned_start, aligned_end, g) <= max_buckets:
            return g
    return "month"


def _iso(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(value: Any) -> float | None:
    """A float for JSON (NaN, the query's "no latency", becomes null)."""
    return None if value is None or pd.isna(value) else float(value)


def _index(values: Sequence[K]) -> dict[K, int]:
    return {v: i for i, v in enumerate(values)}


def _rows(frame: pd.DataFrame) -> Iterator[Any]:
    """A query result's rows as named tuples; their columns are known by name only at run time."""
    return frame.itertuples(index=False)


def dashboard_data(engine: Engine, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
                   api: str | None = None, granularity: str = "auto", max_buckets: int = 400,
                   quota_keys: int = 20, now: dt.datetime | None = None) -> dict[str, Any]:
    """The document one dashboard page shows (see the module docstring).

    Raises:
        QueryArgumentError: an unknown API or granularity, an empty or inverted range.
    """
    start, end = _naive_utc(start), _naive_utc(end)
    if granularity != "auto" and granularity not in GRANULARITIES:
        raise QueryArgumentError(f"unknown granularity {granularity!r}; choose from auto, {', '.join(GRANULARITIES)}")
    if start is not None and end is not None and start >= end:
        raise QueryArgumentError(f"empty or inverted time range: start {start.isoformat()} is not before "
                         f"end {end.isoformat()}")
    generated = _naive_utc(now or dt.datetime.now(dt.UTC))
    with engine.connect() as conn:
        span = stored_span(conn)
        starts = _table_starts(conn)
        if api is not None and conn.execute(select(t.api_catalog.c.api_name)
                                            .where(t.api_catalog.c.api_name == api).limit(1)).first() is None:
            raise QueryArgumentError(f"unknown API name(s): {api!r}")
        app_names = {r.application_id: r.application_name
                     for r in conn.execute(select(t.application_catalog.c.application_id,
                                                  t.application_catalog.c.application_name))}
        contexts = {(r.api_context, r.api_version): r.api_name
                    for r in conn.execute(select(t.api_catalog.c.api_name, t.api_catalog.c.api_version,
                                                 t.api_catalog.c.api_context))}
    doc: dict[str, Any] = {"format": FORMAT_VERSION, "generated_at": _iso(generated), "api_filter": api,
                           "granularity": None, "from": None, "to": None, "buckets": [], "apis": [],
                           "applications": [], "tiers": [], "traffic": [], "latency_all": [],
                           "latency_by_api": [], "application_usage": [], "tier_usage": [],
                           "quota_keys": [], "quota_usage": []}
    lo = start if start is not None else (span[0] if span else None)
    hi = end if end is not None else (span[1] + dt.timedelta(microseconds=1) if span else None)
    if lo is None or hi is None or lo >= hi:
        return doc  # an empty store, or a range on one side of all the data
    g = choose_granularity(lo, hi, starts, max_buckets) if granularity == "auto" else granularity
    lo, hi = floor_to(lo, g), ceil_to(hi, g)
    doc.update(granularity=g, **{"from": _iso(lo), "to": _iso(hi)})
    apis = [api] if api is not None else None

    def grouped(group_by: list[str], measures: Sequence[str]) -> pd.DataFrame:
        return usage(engine, group_by=group_by, start=lo, end=hi, granularity=g, apis=apis, measures=measures)

    latency = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
    traffic = grouped(["bucket", "api"], ("errors_4xx", "errors_5xx", "throttled_out", "faults", *latency))
    if traffic.empty:
        return doc
    buckets = _all_buckets(lo, hi, g) or sorted(set(traffic["bucket_start"]))
    api_names = sorted(set(traffic["api_name"]))
    b_ix, a_ix = _index(buckets), _index(api_names)
    doc["buckets"] = [_iso(b) for b in buckets]
    doc["apis"] = api_names
    doc["traffic"] = [[b_ix[r.bucket_start], a_ix[r.api_name], int(r.requests), int(r.errors_4xx),
                       int(r.errors_5xx), int(r.throttled_out), int(r.faults)]
                      for r in _rows(traffic)]
    doc["latency_by_api"] = [[b_ix[r.bucket_start], a_ix[r.api_name], _num(r.latency_p50_ms),
                              _num(r.latency_p95_ms), _num(r.latency_p99_ms)]
                             for r in _rows(traffic)]
    overall = grouped(["bucket"], latency)
    doc["latency_all"] = [[b_ix[r.bucket_start], _num(r.latency_p50_ms), _num(r.latency_p95_ms),
                           _num(r.latency_p99_ms)] for r in _rows(overall)]

    by_app = grouped(["bucket", "api", "application"], ("requests",))
    app_ids = sorted(set(by_app["application_id"]))
    p_ix = _index(app_ids)
    doc["applications"] = [[a, app_names.get(a, "")] for a in app_ids]
    doc["application_usage"] = [[b_ix[r.bucket_start], a_ix[r.api_name], p_ix[r.application_id], int(r.requests)]
                                for r in _rows(by_app)]
    by_tier = grouped(["bucket", "api", "tier"], ("requests",))
    tiers = sorted(set(by_tier["tier"]))
    t_ix = _index(tiers)
    doc["tiers"] = tiers
    doc["tier_usage"] = [[b_ix[r.bucket_start], a_ix[r.api_name], t_ix[r.tier], int(r.requests)]
                         for r in _rows(by_tier)]
    _add_quota(engine, doc, lo=lo, hi=hi, granularity=g, contexts=contexts, app_names=app_names, api_index=a_ix,
               bucket_index=b_ix, keys_per_api=quota_keys)
    return doc


def _all_buckets(lo: dt.datetime, hi: dt.datetime, granularity: str, limit: int = 10_000) -> list[dt.datetime]:
    """Every bucket start in ``[lo, hi)``, so quiet buckets chart as zero; [] beyond ``limit`` buckets
    (an explicit fine granularity over a long range charts only the buckets with traffic)."""
    if bucket_count(lo, hi, granularity) > limit:
        return []
    out, ts = [], lo
    while ts < hi:
        out.append(ts)
        ts = next_bucket(ts, granularity)
    return out


def _used_column() -> Any:
    """Requests for count policies, bytes for bandwidth policies."""
    c, p = t.throttle_counters.c, t.throttle_policies.c
    return case((p.quota_type == "bandwidthVolume", c.bytes), else_=c.requests)


def _bucket_expression(dialect: str, granularity: str) -> Any:
    c = t.throttle_counters.c
    if dialect == "postgresql":
        return func.date_trunc(granularity, c.window_start)
    return func.strftime(literal(_SQLITE_BUCKET[granularity], String), c.window_start)


def _subscription(key: str, contexts: dict[tuple[str, str], str]) -> tuple[str, str, str] | None:
    """(application id, API name, version) of a subscription throttle key ``application:context:version``."""
    parts = key.split(":")
    for split in range(1, len(parts) - 1):  # application ids hold no ':' in practice; try every split anyway
        found = contexts.get((":".join(parts[split:-1]), parts[-1]))
        if found is not None:
            return ":".join(parts[:split]), found, parts[-1]
    return None


def _add_quota(engine: Engine, doc: dict[str, Any], *, lo: dt.datetime, hi: dt.datetime, granularity: str,
               contexts: dict[tuple[str, str], str], app_names: dict[str, str], api_index: dict[str, int],
               bucket_index: dict[dt.datetime, int], keys_per_api: int) -> None:
    """The busiest subscriptions' peak quota use per bucket (count or bandwidth policies with a quota)."""
    c, p = t.throttle_counters.c, t.throttle_policies.c
    joined = t.throttle_counters.join(t.throttle_policies, and_(p.level == c.level, p.name == c.policy))
    where = (c.level == "subscription", c.window_start >= lo, c.window_start < hi, p.quota.is_not(None),
             p.quota > 0)
    used = _used_column()
    peak = (select(c.throttle_key, c.policy, p.quota, func.max(used).label("peak")).select_from(joined)
            .where(*where).group_by(c.throttle_key, c.policy, p.quota))
    with engine.connect() as conn:
        rows = conn.execute(peak).all()
        ranked: dict[str, list[tuple[float, str, str, int, str]]] = {}
        for r in rows:
            found = _subscription(r.throttle_key, contexts)
            if found is not None and found[1] in api_index:
                app, api, version = found
                label = f"{app_names.get(app) or app} · {api} {version}"
                ranked.setdefault(api, []).append((int(r.peak) / int(r.quota), r.throttle_key, r.policy,
                                                   int(r.quota), label))
        chosen: list[tuple[str, str, int, str, str]] = []
        for api, entries in ranked.items():
            entries.sort(key=lambda e: (-e[0], e[1], e[2]))
            chosen.extend((key, policy, quota, api, label) for _, key, policy, quota, label in entries[:keys_per_api])
        chosen.sort()
        if not chosen:
            return
        k_ix = {(key, policy): i for i, (key, policy, *_) in enumerate(chosen)}
        doc["quota_keys"] = [[key, policy, quota, api_index[api], label] for key, policy, quota, api, label in chosen]
        bucket = _bucket_expression(engine.dialect.name, granularity).label("bucket")
        wanted = list(k_ix)
        out: list[list[int]] = []
        for i in range(0, len(wanted), 500):
            query = (select(c.throttle_key, c.policy, bucket, func.max(used).label("peak")).select_from(joined)
                     .where(*where, tuple_(c.throttle_key, c.policy).in_(wanted[i:i + 500]))
                     .group_by(c.throttle_key, c.policy, bucket))
            for r in conn.execute(query):
                start = _naive_utc(pd.Timestamp(r.bucket).to_pydatetime())
                if start in bucket_index:
                    out.append([bucket_index[start], k_ix[(r.throttle_key, r.policy)], int(r.peak)])
    doc["quota_usage"] = sorted(out)
