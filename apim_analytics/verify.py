"""Comparing the analytics store with the simulator's ground truth, key by key.

Used by the demo, the integration tests and the fault harness: "exact" means
every (minute, API, version, application, tier) cell has the same requests per
status class and the same byte counts, not just the same grand total.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select

from simulator.ground_truth import GroundTruth
from store.engine import make_engine
from store.tables import usage_minute

Key = tuple[int, str, str, str, str]
# count_2xx, count_3xx, count_4xx, count_5xx, request_bytes, response_bytes
Cell = tuple[int, int, int, int, int, int]
_CLASSES = {"2xx": 0, "3xx": 1, "4xx": 2, "5xx": 3}
_EPOCH = dt.datetime(1970, 1, 1)


def stored_cells(store_url: str) -> dict[Key, Cell]:
    """Every usage_minute row as {key: cell}; bucket starts in epoch ms."""
    engine = make_engine(store_url)
    t = usage_minute.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(t.bucket_start, t.api_name, t.api_version, t.application_id, t.tier,
                                       t.count_2xx, t.count_3xx, t.count_4xx, t.count_5xx,
                                       t.request_bytes, t.response_bytes))
            return {
                (int((r[0] - _EPOCH).total_seconds() * 1000), r[1], r[2], r[3], r[4]):
                    tuple(int(x) for x in r[5:])  # type: ignore[misc]
                for r in rows
            }
    finally:
        engine.dispose()


def truth_cells(truth: GroundTruth) -> dict[Key, Cell]:
    """The ground truth folded to the store's key: status classes become columns."""
    acc: dict[Key, list[int]] = defaultdict(lambda: [0] * 6)
    for bucket_ms, api, version, app, tier, status_class, requests, rq_bytes, rs_bytes in truth.rows():
        cell = acc[(bucket_ms, api, version, app, tier)]
        cell[_CLASSES[status_class]] += requests
        cell[4] += rq_bytes
        cell[5] += rs_bytes
    return {k: tuple(v) for k, v in acc.items()}  # type: ignore[misc]


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
            return f"exact: {self.stored_requests} requests in every (minute, API, version, application, tier) cell"
        return (f"NOT exact: expected {self.expected_requests} requests, stored {self.stored_requests}; "
                f"{len(self.missing)} cells missing, {len(self.unexpected)} unexpected, "
                f"{len(self.different)} different (first: {(self.missing + self.unexpected + self.different)[:1]})")


def compare(store_url: str, truth: GroundTruth) -> Comparison:
    """Key-by-key comparison of the store with the ground truth."""
    stored, expected = stored_cells(store_url), truth_cells(truth)
    result = Comparison(expected_requests=sum(sum(c[:4]) for c in expected.values()),
                        stored_requests=sum(sum(c[:4]) for c in stored.values()))
    result.missing = sorted(k for k in expected if k not in stored)
    result.unexpected = sorted(k for k in stored if k not in expected)
    result.different = sorted((k, expected[k], stored[k]) for k in expected if k in stored and expected[k] != stored[k])
    return result
