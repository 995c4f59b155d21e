"""Aggregation: decoded chunks -> partial aggregates -> one run's facts.

No I/O here, so tests can feed it chunks directly. Two steps:

1. :func:`aggregate_chunk` groups one chunk (hundreds of thousands of events)
   with numpy on dictionary codes: a composite integer key per event,
   factorised once per grouping, and every measure a ``bincount`` (exact:
   integer inputs, partial sums far below 2**53). No Python object per event.
2. :func:`merge` adds partials together (pandas groupby over group rows, which
   are far fewer than events), and :func:`finish` applies the run's
   cardinality guard and rolls minutes up into hours, days and months.

Why group in the reader rather than shuffle events: Beam's local runners pay
per element (docs/kafka-and-beam.md section 2); a chunk becomes a handful of small frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.decode import Chunk, concat_chunks
from pipeline.resources import OTHER, admit, normalise_path
from store.latency import BUCKET_COUNT, bucket_of, histogram_column
from store.tables import (
    DESTINATION_DIMENSIONS,
    DESTINATION_SUM_COLUMNS,
    USAGE_APP_DIMENSIONS,
    USAGE_DIMENSIONS,
    USAGE_SUM_COLUMNS,
    USER_DAY_SUM_COLUMNS,
)

MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
KEY_TYPES = np.array(["UNKNOWN", "PRODUCTION", "SANDBOX"], dtype=object)
HIST_COLUMNS = tuple(histogram_column(i) for i in range(BUCKET_COUNT))

USAGE_KEY = ("bucket_ms", *USAGE_DIMENSIONS)
USAGE_APP_KEY = ("bucket_ms", *USAGE_APP_DIMENSIONS)
USER_DAY_KEY = ("bucket_ms", "api_name", "api_version", "application_id", "user_name")
DESTINATION_KEY = ("bucket_ms", *DESTINATION_DIMENSIONS)
THROTTLE_KEY = ("level", "throttle_key", "policy", "bucket_ms")
API_ATTRS = ("api_context", "api_id", "api_creator", "api_creator_tenant_domain")
APP_ATTRS = ("application_name", "application_owner", "application_tier")


@dataclass
class Partial:
    """Aggregates of some events, as small frames (bucket starts in epoch ms, UTC)."""

    usage: pd.DataFrame
    user_day: pd.DataFrame
    destination: pd.DataFrame
    throttle: pd.DataFrame
    apis: pd.DataFrame
    applications: pd.DataFrame
    events: int = 0


@dataclass
class RunFacts:
    """One run's facts, ready to write: every frame keyed as its table."""

    usage: dict[str, pd.DataFrame]          # granularity -> frame
    app_day: pd.DataFrame                   # the day without resource and method (usage_app_day)
    user_day: pd.DataFrame
    destination: dict[str, pd.DataFrame]    # hour/day -> frame
    throttle: pd.DataFrame
    apis: pd.DataFrame
    applications: pd.DataFrame
    last_access: pd.DataFrame
    admitted: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    folds: pd.DataFrame = field(default_factory=pd.DataFrame)
    events: int = 0

    @property
    def folded_requests(self) -> int:
        return int(self.folds["folded_requests"].sum()) if len(self.folds) else 0


# --- step 1: one chunk ------------------------------------------------------------------------

def _group(n: int, parts: Sequence[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int, np.ndarray]:
    """Group ids for the rows of ``parts`` (dense codes with their cardinalities).

    Codes are combined into one int64 key (mixed radix); when the radix would
    overflow, the key built so far is factorised first, so any cardinality
    works. Returns (group id per row, number of groups, a representative row per group).
    """
    key = np.zeros(n, np.int64)
    span = 1
    for codes, card in parts:
        card = max(int(card), 1)
        if span * card >= 1 << 62:
            key, uniques = pd.factorize(key)
            key = key.astype(np.int64)
            span = max(len(uniques), 1)
        key = key * card + codes
        span *= card
    g, uniques = pd.factorize(key)
    ng = len(uniques)
    rep = np.empty(ng, np.int64)
    rep[g] = np.arange(n)
    return g, ng, rep


def _time_codes(ms: np.ndarray, unit: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Dense codes for time buckets: (codes, cardinality, bucket start ms per row)."""
    b = ms - ms % unit
    if not len(b):
        return b, 1, b
    lo, hi = int(b.min()), int(b.max())
    span = (hi - lo) // unit + 1
    if span <= max(len(b), 1024):
        return (b - lo) // unit, span, b
    codes, uniques = pd.factorize(b)
    return codes.astype(np.int64), len(uniques), b


def _isum(g: np.ndarray, ng: int, weights: np.ndarray | None = None) -> np.ndarray:
    if weights is None:
        return np.bincount(g, minlength=ng).astype(np.int64)
    out = np.zeros(ng, np.int64)  # integer adds: a float bincount rounds once a sum passes 2**53
    np.add.at(out, g, np.asarray(weights).astype(np.int64))
    return out


class _Dims:
    """A chunk's string columns as codes, plus derived dimensions (resource, key type)."""

    def __init__(self, chunk: Chunk, keep: np.ndarray | None) -> None:
        self._chunk = chunk
        self._keep = keep
        self.codes: dict[str, np.ndarray] = {}
        self.values: dict[str, np.ndarray] = {}
        for name, (codes, values) in chunk.strings.items():
            self.codes[name] = codes if keep is None else codes[keep]
            self.values[name] = np.asarray(values, dtype=object)
        self._resource()
        kt = self.number("key_type")
        self.codes["key_type"] = np.where((kt >= 0) & (kt < len(KEY_TYPES)), kt, 0)
        self.values["key_type"] = KEY_TYPES
        self.codes["tier"], self.values["tier"] = self.codes["subscription_tier"], self.values["subscription_tier"]
        self.codes["method"], self.values["method"] = self.codes["api_method"], self.values["api_method"]

    def number(self, name: str) -> np.ndarray:
        values = self._chunk.numbers[name]
        return values if self._keep is None else values[self._keep]

    def _resource(self) -> None:
        """Template when the event has one, else the normalised path; equal strings share one code."""
        t_codes, t_values = self.codes["api_resource_template"], self.values["api_resource_template"]
        p_codes, p_values = self.codes["api_resource_path"], self.values["api_resource_path"]
        untemplated = t_codes == 0
        combined = np.where(untemplated, len(t_values) + p_codes, t_codes)
        needed = set(np.unique(p_codes[untemplated]).tolist()) if untemplated.any() else set()
        texts = [*t_values, *(normalise_path(p) if i in needed else "" for i, p in enumerate(p_values))]
        index: dict[str, int] = {}
        lut = np.fromiter((index.setdefault(s, len(index)) for s in texts), np.int64, len(texts))
        self.codes["resource_template"] = lut[combined]
        self.values["resource_template"] = np.asarray(list(index), dtype=object)

    def part(self, name: str) -> tuple[np.ndarray, int]:
        return self.codes[name], len(self.values[name])

    def column(self, name: str, rep: np.ndarray) -> np.ndarray:
        return self.values[name][self.codes[name][rep]]


def aggregate_chunk(chunk: Chunk, keep: np.ndarray | None = None) -> Partial:
    """One chunk's events (those ``keep`` selects) -> a Partial."""
    dims = _Dims(chunk, keep)
    ts = dims.number("request_timestamp_ms")
    n = len(ts)
    code = dims.number("response_code")
    throttled = dims.number("throttled_out").astype(bool)
    fault = dims.number("fault").astype(bool)
    req_b = dims.number("request_size_bytes").astype(np.int64)
    resp_b = dims.number("response_size_bytes").astype(np.int64)
    lat_ms = np.nan_to_num(dims.number("response_latency_ms"), nan=0.0, posinf=0.0, neginf=0.0).clip(0, 1e12)
    lat_us = np.rint(lat_ms * 1000.0).astype(np.int64)
    backend_us = np.rint(np.nan_to_num(dims.number("backend_latency_ms"), nan=0.0, posinf=0.0, neginf=0.0)
                         .clip(0, 1e12) * 1000.0).astype(np.int64)

    # usage facts per minute
    minute, mcard, minute_ms = _time_codes(ts, MINUTE_MS)
    g, ng, rep = _group(n, [(minute, mcard), *(dims.part(d) for d in USAGE_DIMENSIONS)])
    usage = {"bucket_ms": minute_ms[rep]}
    for d in USAGE_DIMENSIONS:
        usage[d] = dims.column(d, rep)
    cls = code // 100
    valid = (cls >= 2) & (cls <= 5)
    classes = np.bincount(g[valid] * 4 + (cls[valid] - 2), minlength=ng * 4).reshape(ng, 4)
    sums = {
        "requests": _isum(g, ng), "count_2xx": classes[:, 0], "count_3xx": classes[:, 1],
        "count_4xx": classes[:, 2], "count_5xx": classes[:, 3], "faults": _isum(g, ng, fault),
        "throttled_out": _isum(g, ng, throttled), "request_bytes": _isum(g, ng, req_b),
        "response_bytes": _isum(g, ng, resp_b), "latency_sum_us": _isum(g, ng, lat_us),
        "backend_latency_sum_us": _isum(g, ng, backend_us),
    }
    hist = np.bincount(g * BUCKET_COUNT + bucket_of(lat_ms), minlength=ng * BUCKET_COUNT).reshape(ng, BUCKET_COUNT)
    for i, name in enumerate(HIST_COLUMNS):
        sums[name] = hist[:, i]
    usage.update(sums)
    lo = np.full(ng, np.iinfo(np.int64).max)
    hi = np.zeros(ng, np.int64)
    np.minimum.at(lo, g, lat_us)
    np.maximum.at(hi, g, lat_us)
    usage["latency_min_us"] = lo
    usage["latency_max_us"] = hi
    usage_g, usage_ng, usage_rep = g, ng, rep

    # per-user daily usage
    day, dcard, day_ms = _time_codes(ts, DAY_MS)
    g, ng, rep = _group(n, [(day, dcard), *(dims.part(d) for d in USER_DAY_KEY[1:])])
    user_day = {"bucket_ms": day_ms[rep], **{d: dims.column(d, rep) for d in USER_DAY_KEY[1:]},
                "requests": _isum(g, ng), "count_4xx": _isum(g, ng, (cls == 4)), "count_5xx": _isum(g, ng, (cls == 5)),
                "throttled_out": _isum(g, ng, throttled), "response_bytes": _isum(g, ng, resp_b)}

    # per destination, hourly
    hour, hcard, hour_ms = _time_codes(ts, HOUR_MS)
    g, ng, rep = _group(n, [(hour, hcard), *(dims.part(d) for d in DESTINATION_DIMENSIONS)])
    destination = {"bucket_ms": hour_ms[rep], **{d: dims.column(d, rep) for d in DESTINATION_DIMENSIONS},
                   "requests": _isum(g, ng), "count_5xx": _isum(g, ng, (cls == 5)), "faults": _isum(g, ng, fault),
                   "latency_sum_us": _isum(g, ng, lat_us), "backend_latency_sum_us": _isum(g, ng, backend_us)}

    # Regrouped here, so that every Partial is fully merged and merge() of one partial is the identity:
    # a chunk's catalogs hold a row per attribute combination, and distinct code combinations can join
    # to the same throttle key string.
    throttle = _regroup(_throttle_counts(dims, minute, mcard, minute_ms, ~throttled, req_b + resp_b,
                                         usage_rep, usage_g, usage_ng), THROTTLE_KEY, _sum_agg(("requests", "bytes")))
    apis = _merge_catalog(_catalog(dims, ("api_name", "api_version", *API_ATTRS), ts), ("api_name", "api_version"),
                          API_ATTRS)
    applications = _merge_catalog(_catalog(dims, ("application_id", *APP_ATTRS), ts), ("application_id",),
                                  APP_ATTRS)
    return Partial(usage=pd.DataFrame(usage), user_day=pd.DataFrame(user_day), destination=pd.DataFrame(destination),
                   throttle=throttle, apis=apis, applications=applications, events=n)


def aggregate_chunks(parts: Sequence[tuple[Chunk, np.ndarray | None]]) -> Partial:
    """Several decoded chunks (with keep masks) -> one Partial, grouped once."""
    if not parts:
        return empty_partial()
    return aggregate_chunk(concat_chunks(parts)) if len(parts) > 1 else aggregate_chunk(*parts[0])


def _throttle_counts(dims: _Dims, minute: np.ndarray, mcard: int, minute_ms: np.ndarray, admitted: np.ndarray,
                     nbytes: np.ndarray, usage_rep: np.ndarray, usage_g: np.ndarray, usage_ng: int) -> pd.DataFrame:
    """Admitted requests and bytes per throttle key, policy and minute (WSO2 keys, docs/wso2-analytics.md section 4.2).

    Throttled-out requests never reached the backend, so they do not use quota. The subscription and
    API keys are coarser than the usage facts' key, so they are summed from the usage groups (far
    fewer than events); the application key needs the user, so it is summed from events.
    """
    group_requests = _isum(usage_g, usage_ng, admitted)
    group_bytes = _isum(usage_g, usage_ng, nbytes * admitted)
    events = np.flatnonzero(admitted)
    levels = (
        ("subscription", ("application_id", "api_context", "api_version"), "subscription_tier",
         usage_rep, group_requests, group_bytes),
        ("application", ("application_id", "user_name"), "application_tier", events, None, nbytes[events]),
        ("api", ("api_context", "api_version"), None, usage_rep, group_requests, group_bytes),
    )
    frames = []
    for level, key_cols, policy_col, units, requests, nbytes_units in levels:
        cols = [*key_cols, policy_col] if policy_col else list(key_cols)
        g, ng, rep = _group(len(units), [(minute[units], mcard), *((dims.codes[c][units], len(dims.values[c]))
                                                                   for c in cols)])
        rows = units[rep]
        key = [":".join(t) for t in zip(*(dims.column(c, rows) for c in key_cols))]
        policy = dims.column(policy_col, rows) if policy_col else np.full(ng, "", dtype=object)
        frame = pd.DataFrame({"level": np.full(ng, level, dtype=object), "throttle_key": np.asarray(key, dtype=object),
                              "policy": policy, "bucket_ms": minute_ms[rows], "requests": _isum(g, ng, requests),
                              "bytes": _isum(g, ng, nbytes_units)})
        keep = frame["requests"] > 0  # keys whose every request was throttled out used no quota
        if level == "application":
            keep &= frame["policy"] != ""  # anonymous calls have no application policy
        frames.append(frame[keep])
    return pd.concat(frames, ignore_index=True)


def _catalog(dims: _Dims, cols: Sequence[str], ts: np.ndarray) -> pd.DataFrame:
    """Distinct attribute combinations with the first and last event time they were seen."""
    g, ng, rep = _group(len(ts), [dims.part(c) for c in cols])
    first = np.full(ng, np.iinfo(np.int64).max)
    last = np.full(ng, np.iinfo(np.int64).min)
    np.minimum.at(first, g, ts)
    np.maximum.at(last, g, ts)
    return pd.DataFrame({**{c: dims.column(c, rep) for c in cols}, "first_ms": first, "last_ms": last})


# --- step 2: merging partials and finishing a run ---------------------------------------------

_USAGE_AGG = {**dict.fromkeys(USAGE_SUM_COLUMNS, "sum"), "latency_min_us": "min", "latency_max_us": "max"}


def _regroup(frame: pd.DataFrame, key: Sequence[str], agg: Mapping[str, str]) -> pd.DataFrame:
    if not len(frame):
        return frame
    return frame.groupby(list(key), sort=False, as_index=False).agg(dict(agg))


def _sum_agg(columns: Iterable[str]) -> dict[str, str]:
    return dict.fromkeys(columns, "sum")


def _merge_catalog(frame: pd.DataFrame, key: Sequence[str], attrs: Sequence[str]) -> pd.DataFrame:
    """One row per key: the attributes of the latest sighting, first/last seen over all."""
    if not len(frame):
        return frame
    # ties on last_ms go to the greatest attributes, so the result does not depend on the order of partials
    latest = frame.sort_values(["last_ms", *attrs], kind="stable").drop_duplicates(list(key), keep="last")
    spans = frame.groupby(list(key), sort=False, as_index=False).agg(first_ms=("first_ms", "min"),
                                                                     last_ms=("last_ms", "max"))
    return latest[[*key, *attrs]].merge(spans, on=list(key))


def merge(partials: Iterable[Partial]) -> Partial:
    """Add partials together (any order, any grouping: the result is the same)."""
    parts = [p for p in partials if p is not None]
    if not parts:
        return empty_partial()
    if len(parts) == 1:  # aggregate_chunk returns fully merged partials
        return parts[0]

    def cat(name: str) -> pd.DataFrame:
        return pd.concat([getattr(p, name) for p in parts], ignore_index=True)

    return Partial(
        usage=_regroup(cat("usage"), USAGE_KEY, _USAGE_AGG),
        user_day=_regroup(cat("user_day"), USER_DAY_KEY, _sum_agg(USER_DAY_SUM_COLUMNS)),
        destination=_regroup(cat("destination"), DESTINATION_KEY, _sum_agg(DESTINATION_SUM_COLUMNS)),
        throttle=_regroup(cat("throttle"), THROTTLE_KEY, _sum_agg(("requests", "bytes"))),
        apis=_merge_catalog(cat("apis"), ("api_name", "api_version"), API_ATTRS),
        applications=_merge_catalog(cat("applications"), ("application_id",), APP_ATTRS),
        events=sum(p.events for p in parts),
    )


def empty_partial() -> Partial:
    def frame(cols: Sequence[str]) -> pd.DataFrame:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    return Partial(usage=frame([*USAGE_KEY, *_USAGE_AGG]), user_day=frame([*USER_DAY_KEY, *USER_DAY_SUM_COLUMNS]),
                   destination=frame([*DESTINATION_KEY, *DESTINATION_SUM_COLUMNS]),
                   throttle=frame([*THROTTLE_KEY, "requests", "bytes"]),
                   apis=frame(["api_name", "api_version", *API_ATTRS, "first_ms", "last_ms"]),
                   applications=frame(["application_id", *APP_ATTRS, "first_ms", "last_ms"]))


def _floor_month(ms: pd.Series) -> np.ndarray:
    months = ms.to_numpy(np.int64).astype("datetime64[ms]").astype("datetime64[M]")
    return months.astype("datetime64[ms]").astype(np.int64)


def finish(total: Partial, admitted: Mapping[tuple[str, str], frozenset[str]], max_resources: int) -> RunFacts:
    """Apply the cardinality guard and roll the run's minutes up to hours, days and months."""
    usage = total.usage
    new = admit(admitted, zip(usage["api_name"], usage["api_version"], usage["resource_template"]), max_resources)
    folds = pd.DataFrame({"bucket_ms": pd.Series(dtype=np.int64), "api_name": pd.Series(dtype=object),
                          "api_version": pd.Series(dtype=object), "folded_requests": pd.Series(dtype=np.int64)})
    if max_resources and len(usage):
        allowed = {k: set(v) | new.get(k, set()) for k, v in admitted.items()}
        for k, v in new.items():
            allowed.setdefault(k, set()).update(v)
        keys = list(zip(usage["api_name"], usage["api_version"], usage["resource_template"]))
        fold = np.fromiter((r != OTHER and r not in allowed.get((a, v), ()) for a, v, r in keys), bool, len(keys))
        if fold.any():
            folded = usage[fold]
            folds = (folded.assign(bucket_ms=folded["bucket_ms"] - folded["bucket_ms"] % DAY_MS)
                     .groupby(["bucket_ms", "api_name", "api_version"], as_index=False, sort=False)["requests"].sum()
                     .rename(columns={"requests": "folded_requests"}))  # type: ignore[call-overload]  # as_index=False makes a DataFrame; the stubs say Series
            usage = usage.copy()
            usage.loc[fold, "resource_template"] = OTHER
            usage = _regroup(usage, USAGE_KEY, _USAGE_AGG)
    rollups = {"minute": usage}
    for name, unit in (("hour", HOUR_MS), ("day", DAY_MS)):
        rollups[name] = _regroup(usage.assign(bucket_ms=usage["bucket_ms"] - usage["bucket_ms"] % unit),
                                 USAGE_KEY, _USAGE_AGG)
    rollups["month"] = _regroup(rollups["day"].assign(bucket_ms=_floor_month(rollups["day"]["bucket_ms"])),
                                USAGE_KEY, _USAGE_AGG)
    dest_hour = total.destination
    dest_day = _regroup(dest_hour.assign(bucket_ms=dest_hour["bucket_ms"] - dest_hour["bucket_ms"] % DAY_MS),
                        DESTINATION_KEY, _sum_agg(DESTINATION_SUM_COLUMNS))
    apis = total.apis
    last_access = apis[["api_name", "api_version", "api_context", "last_ms"]] if len(apis) else apis
    day = rollups["day"]
    app_day = _regroup(day, USAGE_APP_KEY, _USAGE_AGG)[[*USAGE_APP_KEY, *_USAGE_AGG]] if len(day) else day
    return RunFacts(usage=rollups, app_day=app_day, user_day=total.user_day,
                    destination={"hour": dest_hour, "day": dest_day},
                    throttle=total.throttle, apis=apis, applications=total.applications, last_access=last_access,
                    admitted=new, folds=folds, events=total.events)
