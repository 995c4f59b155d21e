"""Analyst query latency on a production-sized PostgreSQL store (issue 6).

``python -m bench.query_latency [--url URL] [--schema NAME] [--seed 7] [--days 30] [--rate 2000] [--repeat 50]``

1. Fill (once; reused by later runs): a private schema of a dedicated database
   (default ``apim_bench``, created when missing) is migrated with the
   project's own ``store.engine.create_schema`` and filled with ``--days`` days
   of usage for the simulator's catalog (``build_catalog(seed)``: 20 APIs, 200
   applications) at the simulator's default rate (2000 requests/s, with a
   daily and weekly rhythm): every (API, version, context, application, tier,
   key type, resource, method) combination the simulator's traffic model can
   produce, each with its exact share of the traffic (API popularity x the
   subscriber's activity x the route's method weight, 3% anonymous calls).
   Per bucket, a combination's requests are Poisson-drawn; response classes,
   the 57-bucket latency histogram (from the simulator's latency model per
   class), throttled-out (429s), faults (5xx), bytes and latency sums follow
   from them, so every row is consistent (histogram sum == requests, classes
   sum to requests). ``usage_minute`` holds the last ``--minute-days`` days
   (the store's retention, 72 hours), rolled up exactly into ``usage_hour``;
   older hours are drawn per hour; ``usage_day``, ``usage_app_day`` and ``usage_month`` are exact
   rollups of the hours. Rows go in with binary COPY (the pipeline's upsert
   would take hours for this volume), ``api_catalog`` and
   ``application_catalog`` through the store's own ``merge_columns``. The
   fill's parameters are kept as the schema's comment; a rerun with the same
   parameters skips the fill (``--refill`` forces it) but still migrates the
   schema to head, as every process opening a store does.
2. ``ANALYZE``, then each query ``--warmup`` times unmeasured and ``--repeat``
   times measured (wall time, end to end from Python: connection, SQL, rows,
   DataFrame). The target: "a month of one API's usage by application and
   day" with ``query.usage.usage`` under 200 ms, for the busiest, a median
   and the quietest API; for reference the same question as direct SQL and
   through the view ``v_usage_by_api_tier_day``, and other typical analyst
   queries (top 10 applications of a month, one API's hourly traffic for a
   day, latency percentiles per resource for a week, one API's minutes for
   an hour). The load average is printed with every result: the machine is
   shared.
3. Results go to bench/results/query_latency.json (``--out``), with the
   ``EXPLAIN (ANALYZE, BUFFERS)`` of the target's SQL for the busiest API.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from simulator.catalog import ANONYMOUS, UNAUTHENTICATED_TIER, Catalog, build_catalog
from simulator.config import DEFAULT_PROFILE, SimulationProfile
from store import tables as t
from store.latency import BUCKET_COUNT, bucket_bounds, bucket_of

DEFAULT_URL = os.environ.get("APIM_BENCH_QUERY_PG_URL", "postgresql+psycopg://apim:apim@127.0.0.1:55432/apim_bench")
DEFAULT_SCHEMA = "query_latency"
TARGET_MS = 200.0
#: Bump when the generator changes what it writes: a stored fill of another version is refilled.
GENERATOR_VERSION = 1

#: Measure columns of the usage tables, in the generator's matrix order: the sums, then min and max.
MEASURES: tuple[str, ...] = (*t.USAGE_SUM_COLUMNS, *t.USAGE_MIN_COLUMNS, *t.USAGE_MAX_COLUMNS)
_M = {c: i for i, c in enumerate(MEASURES)}
_N_SUMS = len(t.USAGE_SUM_COLUMNS)
_HIST0 = _M["lat_b00"]
_PG_EPOCH = dt.datetime(2000, 1, 1)
FILLED_TABLES: tuple[str, ...] = (*(f"usage_{g}" for g in t.GRANULARITIES), "usage_app_day", "api_catalog",
                                  "application_catalog")
_US = {"minute": 60_000_000, "hour": 3_600_000_000, "day": 86_400_000_000}


# --- the fill's parameters ------------------------------------------------------------------------

@dataclass(frozen=True)
class FillSpec:
    """What a fill holds; equal specs give byte-identical tables."""

    seed: int = 7
    days: int = 30
    end: str = ""  # ISO date, exclusive; the data covers the `days` days before it
    rate: float = 2000.0  # mean requests per second over a week
    minute_days: float = 3.0
    apis: int = 20
    applications: int = 200
    users: int = 500
    generator: int = GENERATOR_VERSION

    @property
    def end_dt(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.end)

    @property
    def start_dt(self) -> dt.datetime:
        return self.end_dt - dt.timedelta(days=self.days)


def default_end(now: dt.datetime | None = None) -> str:
    """The first of the current UTC month: the measured month (the one before it) is complete."""
    now = now or dt.datetime.now(dt.UTC)
    return dt.date(now.year, now.month, 1).isoformat()


# --- the traffic model: combinations and their shares ------------------------------------------------

@dataclass(frozen=True)
class Combinations:
    """Every usage-table dimension combination the traffic model produces, with its share of requests."""

    dims: dict[str, list[str]]  # USAGE_DIMENSIONS -> one value per combination
    share: np.ndarray  # probability that a request falls in the combination (sums to 1)
    request_bytes_mean: np.ndarray  # mean request body per request (by method)

    def __len__(self) -> int:
        return len(self.share)


def combinations(catalog: Catalog, profile: SimulationProfile = DEFAULT_PROFILE) -> Combinations:
    """The traffic model's combinations (simulator/traffic.py TrafficModel.requests, in closed form).

    A request is anonymous with probability ``anonymous_share`` (API by popularity among all APIs,
    application ``anonymous``, tier Unauthenticated, PRODUCTION); otherwise the API is drawn by
    popularity among subscribed APIs, the subscriber by activity, the tier is the subscription's and
    the key type the application's. The route is drawn by method weight in both cases.
    """
    method_weight = dict(profile.method_weights)
    body_mean = profile.request_size_median * math.exp(profile.request_size_sigma ** 2 / 2)
    bodyless_mean = (profile.bodyless_method_body_share * profile.bodyless_method_body_median
                     * math.exp(profile.request_size_sigma ** 2 / 2))
    popularity = sum(a.popularity for a in catalog.apis)
    subscribed = [a for a in catalog.apis if catalog.subscribers(a)]
    sub_popularity = sum(a.popularity for a in subscribed)
    dims: dict[str, list[str]] = {d: [] for d in t.USAGE_DIMENSIONS}
    share: list[float] = []
    req_mean: list[float] = []

    def add(api, app_id: str, tier: str, key_type: str, p: float) -> None:
        weights = np.array([method_weight.get(m, 1.0) for m, _ in api.resources])
        weights = weights / weights.sum()
        for (method, template), w in zip(api.resources, weights, strict=True):
            for d, v in zip(t.USAGE_DIMENSIONS, (api.name, api.version, api.context, app_id, tier, key_type,
                                                 template, method), strict=True):
                dims[d].append(v)
            share.append(p * w)
            req_mean.append(body_mean if method in profile.body_methods else bodyless_mean)

    for api in catalog.apis:
        add(api, ANONYMOUS, UNAUTHENTICATED_TIER, "PRODUCTION",
            profile.anonymous_share * api.popularity / popularity)
        subs = catalog.subscribers(api)
        if subs:
            activity = sum(app.activity for app, _ in subs)
            p_api = (1 - profile.anonymous_share) * api.popularity / sub_popularity
            for app, tier in subs:
                add(api, app.id, tier, app.key_type, p_api * app.activity / activity)
    return Combinations(dims, np.array(share), np.array(req_mean))


def latency_shares(profile: SimulationProfile = DEFAULT_PROFILE, samples: int = 200_000,
                   seed: int = 0) -> np.ndarray:
    """Histogram-bucket probabilities per response class (rows: 2xx/3xx, 4xx, 5xx), from the
    simulator's latency model: backend (log-normal; 0 for gateway-rejected codes; fast failures;
    the route timeout) plus the gateway's own log-normal time, in whole milliseconds."""
    rng = np.random.default_rng(seed)

    def lognormal(median: float, sigma: float, n: int) -> np.ndarray:
        return np.rint(median * np.exp(sigma * rng.standard_normal(n)))

    def backend(code: int, n: int) -> np.ndarray:
        if code in profile.gateway_rejected_codes:
            return np.zeros(n)
        if code in profile.upstream_timeout_codes:
            return np.full(n, float(profile.upstream_timeout_ms))
        if code in profile.fast_failure_codes:
            return lognormal(profile.fast_failure_latency_median_ms, profile.fast_failure_latency_sigma, n)
        return lognormal(profile.backend_latency_median_ms, profile.backend_latency_sigma, n)

    rows = []
    for codes in (((200, 1.0),), profile.client_error_codes, profile.server_error_codes):
        total = sum(w for _, w in codes)
        hist = np.zeros(BUCKET_COUNT)
        for code, w in codes:
            n = max(1, int(samples * w / total))
            ms = backend(code, n) + lognormal(profile.gateway_latency_median_ms, profile.gateway_latency_sigma, n)
            hist += np.bincount(bucket_of(ms), minlength=BUCKET_COUNT) * (w / total / n)
        rows.append(hist / hist.sum())
    return np.array(rows)


def _bucket_us() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per histogram bucket: a typical latency, the smallest and the largest whole-ms latency it holds (us)."""
    typical, low, high = [], [], []
    for i in range(BUCKET_COUNT):
        lower, upper = bucket_bounds(i)
        lo = math.ceil(lower)
        hi = max(lo, math.ceil(upper) - 1) if upper is not None else max(lo, 15_002)
        typical.append((lo + hi) // 2 * 1000)
        low.append(lo * 1000)
        high.append(hi * 1000)
    return np.array(typical, np.int64), np.array(low, np.int64), np.array(high, np.int64)


_TYPICAL_US, _LOW_US, _HIGH_US = _bucket_us()


def traffic_factor(bucket_us: np.ndarray) -> np.ndarray:
    """Relative traffic at bucket starts (us since 2000-01-01, a Saturday): a daily wave peaking at
    15:00 UTC (x1.6) with its trough at 03:00 (x0.4), weekends at 60% of weekdays; mean 1 over a week."""
    hours = bucket_us / 3_600_000_000
    daily = 1.0 + 0.6 * np.sin(2 * np.pi * (hours % 24 - 9) / 24)
    weekday = (np.floor(hours / 24) % 7)  # 0 = Saturday
    weekly = np.where(weekday < 2, 0.6, 1.0)
    return daily * weekly / (5 * 1.0 + 2 * 0.6) * 7


# --- fact blocks ----------------------------------------------------------------------------------

@dataclass
class Block:
    """Usage rows: bucket start (us since 2000-01-01), combination index, measures (``MEASURES`` order)."""

    bucket: np.ndarray
    combo: np.ndarray
    m: np.ndarray

    def __len__(self) -> int:
        return len(self.bucket)

    @staticmethod
    def concat(blocks: list[Block]) -> Block:
        return Block(np.concatenate([b.bucket for b in blocks]), np.concatenate([b.combo for b in blocks]),
                     np.concatenate([b.m for b in blocks]))


def generate(rng: np.random.Generator, combos: Combinations, lat: np.ndarray, buckets: np.ndarray,
             seconds: int, rate: float, profile: SimulationProfile = DEFAULT_PROFILE) -> Block:
    """Rows for every combination with traffic in ``buckets`` (us since 2000-01-01, each ``seconds`` long)."""
    lam = (rate * seconds * traffic_factor(buckets))[:, None] * combos.share[None, :]
    counts = rng.poisson(lam)
    b_idx, c_idx = np.nonzero(counts)
    n = counts[b_idx, c_idx]
    classes = dict(profile.status_class_shares)
    cls = rng.multinomial(n, [classes[c] for c in ("2xx", "3xx", "4xx", "5xx")])
    hist = rng.multinomial(cls[:, 0] + cls[:, 1], lat[0])
    hist += rng.multinomial(cls[:, 2], lat[1])
    hist += rng.multinomial(cls[:, 3], lat[2])
    client = dict(profile.client_error_codes)
    throttled = rng.binomial(cls[:, 2], client.get(429, 0.0) / sum(client.values()))
    m = np.zeros((len(n), len(MEASURES)), np.int64)
    m[:, _M["requests"]] = n
    for k, c in enumerate(("count_2xx", "count_3xx", "count_4xx", "count_5xx")):
        m[:, _M[c]] = cls[:, k]
    m[:, _M["faults"]] = cls[:, 3]  # the collector marks every 5xx a fault
    m[:, _M["throttled_out"]] = throttled  # and every 429 throttled out
    m[:, _M["request_bytes"]] = rng.poisson(n * combos.request_bytes_mean[c_idx])
    body = profile.response_size_median * math.exp(profile.response_size_sigma ** 2 / 2)
    error_body = profile.error_response_size_median * math.exp(profile.error_response_size_sigma ** 2 / 2)
    m[:, _M["response_bytes"]] = rng.poisson(cls[:, 0] * 0.95 * body + (cls[:, 1] * 0.4 + cls[:, 2] + cls[:, 3])
                                             * error_body)
    m[:, _HIST0:_HIST0 + BUCKET_COUNT] = hist
    latency = hist @ _TYPICAL_US
    gateway_us = int(profile.gateway_latency_median_ms * math.exp(profile.gateway_latency_sigma ** 2 / 2) * 1000)
    m[:, _M["latency_sum_us"]] = latency
    m[:, _M["backend_latency_sum_us"]] = np.clip(latency - n * gateway_us, 0, None)
    nonzero = hist > 0
    first = nonzero.argmax(axis=1)
    last = BUCKET_COUNT - 1 - nonzero[:, ::-1].argmax(axis=1)
    m[:, _M["latency_min_us"]] = _LOW_US[first]
    m[:, _M["latency_max_us"]] = _HIGH_US[last]
    return Block(buckets[b_idx], c_idx.astype(np.int64), m)


def floor_bucket(bucket_us: np.ndarray, granularity: str) -> np.ndarray:
    """Bucket starts truncated to ``granularity`` (minute, hour, day or month)."""
    if granularity != "month":
        return bucket_us - bucket_us % _US[granularity]
    days = (bucket_us // _US["day"]).astype("timedelta64[D]") + np.datetime64("2000-01-01")
    months = days.astype("datetime64[M]").astype("datetime64[D]")
    return (months - np.datetime64("2000-01-01")).astype(np.int64) * _US["day"]


def rollup(block: Block, granularity: str) -> Block:
    """Exact rollup: sums added, min of minima, max of maxima, per (coarser bucket, combination)."""
    if not len(block):
        return block
    coarse = floor_bucket(block.bucket, granularity)
    order = np.lexsort((block.combo, coarse))
    b, c = coarse[order], block.combo[order]
    starts = np.flatnonzero(np.r_[True, (b[1:] != b[:-1]) | (c[1:] != c[:-1])])
    m = block.m[order]
    out = np.empty((len(starts), m.shape[1]), np.int64)
    out[:, :_N_SUMS] = np.add.reduceat(m[:, :_N_SUMS], starts, axis=0)
    out[:, _M["latency_min_us"]] = np.minimum.reduceat(m[:, _M["latency_min_us"]], starts)
    out[:, _M["latency_max_us"]] = np.maximum.reduceat(m[:, _M["latency_max_us"]], starts)
    return Block(b[starts], c[starts], out)


# --- writing: binary COPY -------------------------------------------------------------------------

_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def _dims_prefixes(combos: Combinations) -> list[bytes]:
    """Per combination, its dimension fields in COPY BINARY form (length, UTF-8 bytes)."""
    out = []
    for i in range(len(combos)):
        parts = []
        for d in t.USAGE_DIMENSIONS:
            raw = combos.dims[d][i].encode()
            parts.append(len(raw).to_bytes(4, "big") + raw)
        out.append(b"".join(parts))
    return out


def copy_payload(block: Block, prefixes: list[bytes]) -> bytes:
    """``block`` as one COPY BINARY stream (signature, tuples, trailer), built with numpy.

    A tuple is: field count; bucket_start (timestamp: int64 us since 2000-01-01); the dimension
    fields (one fixed byte string per combination); the measures (length 8 + big-endian int64 each).
    Rows are grouped by the length of their dimension prefix, which fixes the tuple layout.
    """
    lengths = np.array([len(p) for p in prefixes])
    table = np.array(prefixes, dtype=f"S{lengths.max()}")  # byte strings; exact up to their own length
    row_len = lengths[block.combo]
    chunks = [_COPY_SIGNATURE]
    n_fields = 1 + len(t.USAGE_DIMENSIONS) + len(MEASURES)
    for length in np.unique(row_len):
        rows = np.flatnonzero(row_len == length)
        dtype = np.dtype([("nf", ">i2"), ("bl", ">i4"), ("b", ">i8"), ("dims", f"S{length}"),
                          ("m", np.dtype([("l", ">i4"), ("v", ">i8")]), (len(MEASURES),))])
        arr = np.empty(len(rows), dtype)
        arr["nf"] = n_fields
        arr["bl"] = 8
        arr["b"] = block.bucket[rows]
        arr["dims"] = table[block.combo[rows]].astype(f"S{length}")
        arr["m"]["l"] = 8
        arr["m"]["v"] = block.m[rows]
        chunks.append(arr.tobytes())
    chunks.append(_COPY_TRAILER)
    return b"".join(chunks)


def copy_block(conn, table_name: str, block: Block, prefixes: list[bytes]) -> int:
    """COPY ``block`` into ``table_name`` in the connection's transaction; returns rows written."""
    if not len(block):
        return 0
    columns = ", ".join(f'"{c}"' for c in ("bucket_start", *t.USAGE_DIMENSIONS, *MEASURES))
    payload = copy_payload(block, prefixes)
    sql = f'COPY "{table_name}" ({columns}) FROM STDIN (FORMAT BINARY)'
    with conn.connection.driver_connection.cursor() as cur, cur.copy(sql) as copy:
        for start in range(0, len(payload), 1 << 24):
            copy.write(payload[start:start + (1 << 24)])
    return len(block)


# --- the store ------------------------------------------------------------------------------------

def schema_url(url: str, schema: str) -> str:
    """``url`` with its search_path set to ``schema`` (how the tests and benches use private schemas)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def ensure_database(url: str) -> None:
    """Create the URL's database when it does not exist (through the server's ``postgres`` database)."""
    from store.engine import make_engine

    parsed = make_url(url)
    admin = make_engine(parsed.set(database="postgres").render_as_string(hide_password=False))
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"),
                                  {"d": parsed.database}).first()
        if exists is None:
            with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{parsed.database}"')
    finally:
        admin.dispose()


def stored_spec(engine: Engine, schema: str) -> dict[str, Any] | None:
    """The fill recorded as ``schema``'s comment, or None (no schema, no comment, not ours)."""
    with engine.connect() as conn:
        comment = conn.execute(text("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace "
                                    "WHERE nspname = :s"), {"s": schema}).scalar()
    try:
        stored = json.loads(comment) if comment else None
    except json.JSONDecodeError:
        return None
    return stored if isinstance(stored, dict) and stored.get("bench") == "query_latency" else None


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows per filled table (exact counts)."""
    with engine.connect() as conn:
        return {n: int(conn.execute(text(f'SELECT count(*) FROM "{n}"')).scalar_one()) for n in FILLED_TABLES}


def table_sizes(engine: Engine) -> dict[str, str]:
    """Total size (heap + indexes + TOAST) per usage table, as pg_size_pretty gives it."""
    with engine.connect() as conn:
        return {f"usage_{g}": conn.execute(text("SELECT pg_size_pretty(pg_total_relation_size(CAST(:t AS regclass)))"),
                                           {"t": f"usage_{g}"}).scalar_one() for g in t.GRANULARITIES}


def _days(spec: FillSpec) -> Iterator[dt.datetime]:
    day = spec.start_dt
    while day < spec.end_dt:
        yield day
        day += dt.timedelta(days=1)


def _us(value: dt.datetime) -> int:
    return (value - _PG_EPOCH) // dt.timedelta(microseconds=1)


def _catalog_columns(catalog: Catalog, spec: FillSpec) -> tuple[dict[str, list], dict[str, list]]:
    first, last = spec.start_dt, spec.end_dt - dt.timedelta(seconds=1)
    apis = {"api_name": [a.name for a in catalog.apis], "api_version": [a.version for a in catalog.apis],
            "api_context": [a.context for a in catalog.apis], "api_id": [a.api_id for a in catalog.apis],
            "api_creator": [a.creator for a in catalog.apis],
            "api_creator_tenant_domain": [a.creator_tenant_domain for a in catalog.apis],
            "first_seen": [first] * len(catalog.apis), "last_seen": [last] * len(catalog.apis)}
    apps = [(a.id, a.name, a.owner, a.tier) for a in catalog.applications] + [(ANONYMOUS, ANONYMOUS, "", "")]
    applications = {"application_id": [a[0] for a in apps], "application_name": [a[1] for a in apps],
                    "application_owner": [a[2] for a in apps], "application_tier": [a[3] for a in apps],
                    "first_seen": [first] * len(apps), "last_seen": [last] * len(apps)}
    return apis, applications


def fill(url: str, schema: str, spec: FillSpec, *, refill: bool = False,
         progress: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Make ``schema`` of ``url``'s database hold ``spec``'s data, migrated to head.

    Returns the stored fill record: the spec, ``rows`` per table, ``fill_s``, and ``reused`` (True
    when the schema already held this spec and nothing was written).
    """
    from store.engine import create_schema, make_engine
    from store.upsert import merge_columns

    admin = make_engine(url)
    engine = make_engine(schema_url(url, schema))
    try:
        stored = stored_spec(admin, schema)
        if not refill and stored is not None and stored.get("spec") == asdict(spec):
            create_schema(engine)  # a newer revision (an index, say) applies to the kept data
            return stored | {"reused": True}
        t0 = time.perf_counter()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        create_schema(engine)
        catalog = build_catalog(spec.seed, spec.apis, spec.applications, spec.users)
        combos = combinations(catalog)
        prefixes = _dims_prefixes(combos)
        lat = latency_shares(seed=spec.seed)
        minute_from = _us(spec.end_dt - dt.timedelta(days=spec.minute_days))
        rows = dict.fromkeys((f"usage_{g}" for g in t.GRANULARITIES), 0)
        day_blocks = []
        for i, day in enumerate(_days(spec)):
            rng = np.random.default_rng([spec.seed, i])
            day_us = _us(day)
            hour_starts = day_us + np.arange(24, dtype=np.int64) * _US["hour"]
            with engine.begin() as conn:
                hours = []
                for h0 in hour_starts:
                    if h0 >= minute_from:  # minutes kept: draw them, the hour is their rollup
                        minutes = generate(rng, combos, lat, h0 + np.arange(60, dtype=np.int64) * _US["minute"],
                                           60, spec.rate)
                        rows["usage_minute"] += copy_block(conn, "usage_minute", minutes, prefixes)
                        hours.append(rollup(minutes, "hour"))
                    else:
                        hours.append(generate(rng, combos, lat, np.array([h0]), 3600, spec.rate))
                hour_block = Block.concat(hours)
                rows["usage_hour"] += copy_block(conn, "usage_hour", hour_block, prefixes)
                day_block = rollup(hour_block, "day")
                rows["usage_day"] += copy_block(conn, "usage_day", day_block, prefixes)
                day_blocks.append(day_block)
            progress(f"{day:%Y-%m-%d}: {rows}")
        apis, applications = _catalog_columns(catalog, spec)
        with engine.begin() as conn:
            rows["usage_month"] = copy_block(conn, "usage_month", rollup(Block.concat(day_blocks), "month"),
                                             prefixes)
            rows["usage_app_day"] = conn.execute(text(app_day_rollup_sql())).rowcount
            rows["api_catalog"] = merge_columns(conn, t.api_catalog, apis, key=("api_name", "api_version"),
                                                replace=[c for c in apis if c not in ("api_name", "api_version")])
            rows["application_catalog"] = merge_columns(
                conn, t.application_catalog, applications, key=("application_id",),
                replace=[c for c in applications if c != "application_id"])
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) " + ", ".join(f'"{n}"' for n in FILLED_TABLES))
        record = {"bench": "query_latency", "spec": asdict(spec), "rows": rows,
                  "fill_s": round(time.perf_counter() - t0, 1), "filled_at": _now()}
        with admin.begin() as conn:
            comment = json.dumps(record).replace("'", "''")
            conn.exec_driver_sql(f"COMMENT ON SCHEMA \"{schema}\" IS '{comment}'")
        return record | {"reused": False}
    finally:
        engine.dispose()
        admin.dispose()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- measuring ------------------------------------------------------------------------------------

def summary(times_s: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in ms (nearest rank, so p99 of 50 runs is the slowest) and the mean."""
    ms = sorted(x * 1000.0 for x in times_s)

    def rank(q: float) -> float:
        return round(ms[max(1, math.ceil(q * len(ms))) - 1], 1)

    return {"n": len(ms), "p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99),
            "max_ms": round(ms[-1], 1), "mean_ms": round(sum(ms) / len(ms), 1)}


def measure(fn: Callable[[], Any], repeat: int, warmup: int) -> tuple[dict[str, Any], Any]:
    """Run ``fn`` ``warmup`` times unmeasured, then ``repeat`` times; timings, load average and the
    last result's size."""
    result = None
    for _ in range(warmup):
        result = fn()
    load0 = os.getloadavg()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    load1 = os.getloadavg()
    return summary(times) | {"rows": len(result) if result is not None else 0,
                             "load_before": [round(x, 2) for x in load0],
                             "load_after": [round(x, 2) for x in load1]}, result


def month_of(spec: FillSpec) -> tuple[dt.datetime, dt.datetime]:
    """The calendar month holding the data's last day: [first of it, first of the next)."""
    last = spec.end_dt - dt.timedelta(days=1)
    start = dt.datetime(last.year, last.month, 1)
    end = dt.datetime(start.year + start.month // 12, start.month % 12 + 1, 1)
    return start, end


def pick_apis(engine: Engine, start: dt.datetime, end: dt.datetime) -> dict[str, str]:
    """The busiest, the median and the quietest API name by requests in [start, end)."""
    with engine.connect() as conn:
        ranked = [r[0] for r in conn.execute(text(
            "SELECT api_name FROM usage_month WHERE bucket_start >= :s AND bucket_start < :e "
            "GROUP BY api_name ORDER BY sum(requests) DESC, api_name"), {"s": start, "e": end})]
    return {"busy": ranked[0], "median": ranked[len(ranked) // 2], "quiet": ranked[-1]}


def app_day_rollup_sql() -> str:
    """usage_app_day as the exact rollup of usage_day (what the pipeline writes beside it)."""
    key = ", ".join(t.USAGE_APP_KEY_COLUMNS)
    sums = ", ".join(f"sum({c})" for c in t.USAGE_SUM_COLUMNS)
    return (f"INSERT INTO usage_app_day ({key}, {', '.join(t.USAGE_SUM_COLUMNS)}, latency_min_us, latency_max_us) "
            f"SELECT {key}, {sums}, min(latency_min_us), max(latency_max_us) FROM usage_day GROUP BY {key}")


_TARGET_SQL = ("SELECT application_id, bucket_start, {sums} FROM usage_app_day "
               "WHERE bucket_start >= :s AND bucket_start < :e AND api_name = :api "
               "GROUP BY application_id, bucket_start")
_VIEW_SQL = ("SELECT day, api_version, tier, requests, count_2xx, count_4xx, count_5xx, throttled_out "
             "FROM v_usage_by_api_tier_day WHERE api_name = :api AND day >= :s AND day < :e")


def target_sql() -> str:
    """The SQL query.usage sends for the target (every measure): sums of 67 columns and a max."""
    sums = ", ".join(f"CAST(sum({c}) AS BIGINT) AS {c}" for c in t.USAGE_SUM_COLUMNS if c != "backend_latency_sum_us")
    return _TARGET_SQL.format(sums=sums + ", max(latency_max_us) AS latency_max_us")


def explain(engine: Engine, sql: str, params: dict[str, Any]) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {sql}"), params)]


def run_queries(url: str, engine: Engine, spec: FillSpec, repeat: int, warmup: int,
                apis: dict[str, str] | None = None, report: Callable[[str, dict], None] = lambda *_: None
                ) -> dict[str, Any]:
    """Every measured query; ``report`` is called with each result as it comes."""
    from query.usage import usage

    m0, m1 = month_of(spec)
    apis = apis or pick_apis(engine, m0, m1)
    last_day = spec.end_dt - dt.timedelta(days=1)
    week0 = spec.end_dt - dt.timedelta(days=7)
    last_hour = spec.end_dt - dt.timedelta(hours=1)
    busy = apis["busy"]
    queries: dict[str, Callable[[], Any]] = {}
    for kind, api in apis.items():
        queries[f"target usage(url) {kind} {api}"] = (
            lambda api=api: usage(url, group_by=["application", "bucket"], granularity="day", apis=api,
                                  start=m0, end=m1))
        queries[f"target usage(engine) {kind} {api}"] = (
            lambda api=api: usage(engine, group_by=["application", "bucket"], granularity="day", apis=api,
                                  start=m0, end=m1))
        queries[f"target counts only (measures=) {kind} {api}"] = (
            lambda api=api: usage(engine, group_by=["application", "bucket"], granularity="day", apis=api,
                                  start=m0, end=m1, measures=["requests", "errors_4xx", "errors_5xx",
                                                              "throttled_out"]))
        queries[f"target direct SQL {kind} {api}"] = (
            lambda api=api: _fetch(engine, target_sql(), {"s": m0, "e": m1, "api": api}))
        queries[f"view v_usage_by_api_tier_day {kind} {api}"] = (
            lambda api=api: _fetch(engine, _VIEW_SQL, {"s": m0, "e": m1, "api": api}))
    queries["top 10 applications, month"] = lambda: usage(engine, group_by=["application"], start=m0, end=m1,
                                                           top=10)
    queries[f"hourly traffic, one day, {busy}"] = lambda: usage(engine, group_by=["bucket"], granularity="hour",
                                                                apis=busy, start=last_day, end=spec.end_dt)
    queries["latency percentiles per resource, week"] = lambda: usage(
        engine, group_by=["api", "resource", "method"], start=week0, end=spec.end_dt,
        measures=["latency_p50_ms", "latency_p95_ms", "latency_p99_ms"])
    queries[f"per-minute traffic, last hour, {busy}"] = lambda: usage(
        engine, group_by=["bucket"], granularity="minute", apis=busy, start=last_hour, end=spec.end_dt)

    results: dict[str, Any] = {}
    for name, fn in queries.items():
        stats, _ = measure(fn, repeat, warmup)
        results[name] = stats
        report(name, stats)
    return {"month": [m0.isoformat(), m1.isoformat()], "apis": apis, "queries": results,
            "explain_target_busy": explain(engine, target_sql(), {"s": m0, "e": m1, "api": busy})}


def _fetch(engine: Engine, sql: str, params: dict[str, Any]) -> list:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="PostgreSQL database to fill (created when missing; env APIM_BENCH_QUERY_PG_URL)")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA, help="schema of that database holding the store")
    parser.add_argument("--seed", type=int, default=7, help="catalog and traffic seed (the simulator's default)")
    parser.add_argument("--days", type=int, default=30, help="days of data")
    parser.add_argument("--end", default=None,
                        help="ISO date the data ends before (default: the first of the current UTC month)")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="mean requests/s over a week (the simulator's default rate)")
    parser.add_argument("--minute-days", type=float, default=3.0, help="days of usage_minute (retention: 72 h)")
    parser.add_argument("--catalog-apis", type=int, default=20, help="APIs in the catalog")
    parser.add_argument("--catalog-applications", type=int, default=200, help="applications in the catalog")
    parser.add_argument("--refill", action="store_true", help="fill even when the schema holds this fill")
    parser.add_argument("--fill-only", action="store_true", help="fill, print the row counts, measure nothing")
    parser.add_argument("--repeat", type=int, default=50, help="measured runs per query")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured runs per query first")
    parser.add_argument("--out", type=Path, default=Path("bench/results/query_latency.json"))
    args = parser.parse_args(argv)

    from store.engine import make_engine

    spec = FillSpec(seed=args.seed, days=args.days, end=args.end or default_end(), rate=args.rate,
                    minute_days=args.minute_days, apis=args.catalog_apis, applications=args.catalog_applications)
    ensure_database(args.url)
    print(f"query latency benchmark, {os.cpu_count()} cores, load {os.getloadavg()}; store "
          f"{make_url(args.url).render_as_string(hide_password=True)} schema {args.schema}")
    record = fill(args.url, args.schema, spec, refill=args.refill, progress=lambda msg: print("  fill", msg))
    store_url = schema_url(args.url, args.schema)
    engine = make_engine(store_url, readonly=True)
    try:
        rows = row_counts(engine)
        sizes = table_sizes(engine)
        how = "reused" if record["reused"] else "filled"
        print(f"store {how}: {spec.days} days to {spec.end}, seed {spec.seed}, {spec.rate:g} req/s; fill took "
              f"{record['fill_s']} s (at {record['filled_at']})")
        for name, count in rows.items():
            print(f"  {name:<22}{count:>12,} rows  {sizes.get(name, '')}")
        if args.fill_only:
            return 0
        writer = make_engine(store_url)
        with writer.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE " + ", ".join(f'"{n}"' for n in FILLED_TABLES))
        writer.dispose()
        from store import migrate

        revision = migrate.current_revision(engine)
        print(f"schema revision {revision}; {args.repeat} runs after {args.warmup} warm-ups; target "
              f"< {TARGET_MS:g} ms")
        print(f"{'query':<62}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'rows':>7}  load (1/5/15 min)")

        def report(name: str, s: dict) -> None:
            flag = ""
            if name.startswith("target usage"):
                flag = "  OK" if s["p95_ms"] < TARGET_MS else "  OVER TARGET"
            print(f"{name:<62}{s['p50_ms']:>8}{s['p95_ms']:>8}{s['p99_ms']:>8}{s['max_ms']:>8}{s['rows']:>7}  "
                  f"{' '.join(str(x) for x in s['load_after'])}{flag}")

        measured = run_queries(store_url, engine, spec, args.repeat, args.warmup, report=report)
    finally:
        engine.dispose()
    results = {
        "benchmark": "query_latency", "date": _now(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_at_end": [round(x, 2) for x in os.getloadavg()]},
        "store": {"postgresql": _server_version(store_url), "schema_revision": revision, "fill": spec.__dict__,
                  "fill_s": record["fill_s"], "fill_reused": record["reused"], "rows": rows, "sizes": sizes},
        "target_ms": TARGET_MS, "repeat": args.repeat, "warmup": args.warmup, **measured,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("plan of the target's SQL (busiest API):")
    for line in measured["explain_target_busy"]:
        print("  " + line)
    print(f"results in {args.out}")
    return 0


def _server_version(url: str) -> str:
    from store.engine import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar_one())
    finally:
        engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
