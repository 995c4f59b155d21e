"""Comparing the analytics store with the simulator's ground truth, key by key (read-only).

Used by the demo, the integration tests and the fault harness: "exact" means
every (bucket, API, version, application, tier) cell has the same requests per
status class and the same byte counts, not just the same grand total. The
store's finer dimensions (context, key type, resource, method) are summed
away; each granularity's table is compared with the ground truth rolled up
to that granularity, so the rollups are checked too.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func, select

from simulator.ground_truth import GroundTruth
from store.engine import make_engine
from store.tables import USAGE_TABLES, usage_app_day

#: The tables compared, by name: each usage granularity, and the day rollup without resource and method
#: (read by analysts' day questions), each with the granularity its buckets have.
CHECKED_TABLES = {**{g: (table, g) for g, table in USAGE_TABLES.items()}, "app_day": (usage_app_day, "day")}

Key = tuple[int, str, str, str, str]
# count_2xx, count_3xx, count_4xx, count_5xx, request_bytes, response_bytes
Cell = tuple[int, int, int, int, int, int]
_CLASSES = {"2xx": 0, "3xx": 1, "4xx": 2, "5xx": 3}
_EPOCH = dt.datetime(1970, 1, 1)


def stored_cells(store_url: str, granularity: str = "minute") -> dict[Key, Cell]:
    """The granularity's usage table (or ``app_day``) summed to {(bucket, api, version, app, tier): cell};
    buckets in epoch ms."""
    engine = make_engine(store_url, readonly=True)
    t = CHECKED_TABLES[granularity][0].c
    keys = (t.bucket_start, t.api_name, t.api_version, t.application_id, t.tier)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(*keys, *(func.sum(c) for c in (
                t.count_2xx, t.count_3xx, t.count_4xx, t.count_5xx, t.request_bytes, t.response_bytes)))
                .group_by(*keys))
            return {
                (int((r[0] - _EPOCH).total_seconds() * 1000), r[1], r[2], r[3], r[4]):
                    tuple(int(x) for x in r[5:])  # type: ignore[misc]  # a 6-tuple by construction; mypy sees tuple[int, ...]
                for r in rows
            }
    finally:
        engine.dispose()


def _floor(ms: int, granularity: str) -> int:
    if granularity == "month":
        d = _EPOCH + dt.timedelta(milliseconds=ms)
        return int((dt.datetime(d.year, d.month, 1) - _EPOCH).total_seconds() * 1000)
    unit = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}[granularity]
    return ms - ms % unit


def truth_cells(truth: GroundTruth, granularity: str = "minute") -> dict[Key, Cell]:
    """The ground truth folded to the store's key at a granularity (or a table of ``CHECKED_TABLES``, at its
    granularity): status classes become columns."""
    granularity = CHECKED_TABLES[granularity][1] if granularity in CHECKED_TABLES else granularity
    acc: dict[Key, list[int]] = defaultdict(lambda: [0] * 6)
    for bucket_ms, api, version, app, tier, status_class, requests, rq_bytes, rs_bytes in truth.rows():
        cell = acc[(_floor(bucket_ms, granularity), api, version, app, tier)]
        cell[_CLASSES[status_class]] += requests
        cell[4] += rq_bytes
        cell[5] += rs_bytes
    return {k: tuple(v) for k, v in acc.items()}  # type: ignore[misc]  # six sums per cell; mypy sees tuple[int, ...]


@dataclass
class Comparison:
    expected_requests: int
    stored_requests: int
    missing: list[Key] = field(default_factory=list)
    unexpected: list[Key] = field(default_factory=list)
    different: list[tuple[Key, Cell, Cell]] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.different)

    def describe(self) -> str:
        if self.exact:
            return f"exact: {self.stored_requests} requests in every (bucket, API, version, application, tier) cell"
        return (f"NOT exact: expected {self.expected_requests} requests, stored {self.stored_requests}; "
                f"{len(self.missing)} cells missing, {len(self.unexpected)} unexpected, "
                f"{len(self.different)} different (first: {(self.missing + self.unexpected + self.different)[:1]})")


def compare(store_url: str, truth: GroundTruth, granularity: str = "minute") -> Comparison:
    """Key-by-key comparison of one granularity's table with the ground truth."""
    stored, expected = stored_cells(store_url, granularity), truth_cells(truth, granularity)
    result = Comparison(expected_requests=sum(sum(c[:4]) for c in expected.values()),
                        stored_requests=sum(sum(c[:4]) for c in stored.values()))
    result.missing = sorted(k for k in expected if k not in stored)
    result.unexpected = sorted(k for k in stored if k not in expected)
    result.different = sorted((k, expected[k], stored[k]) for k in expected if k in stored and expected[k] != stored[k])
    return result


def compare_all(store_url: str, truth: GroundTruth) -> dict[str, Comparison]:
    """Every granularity's table, and the day rollup without resource and method, against the ground truth."""
    return {g: compare(store_url, truth, g) for g in CHECKED_TABLES}
