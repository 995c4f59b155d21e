"""Aggregation: event columns -> additive measures per (minute, API, version,
application, tier). No I/O here, so tests can feed it ``beam.Create``.

Each chunk is pre-aggregated in a plain dict before the shuffle: the keys per
chunk are far fewer than the events, which is where Beam's per-element cost
is saved (engineering.md b).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import apache_beam as beam

from pipeline.kafka_source import EventColumns

# (bucket_start_ms, api_name, api_version, application_id, tier)
UsageKey = tuple[int, str, str, str, str]
# requests, 2xx, 3xx, 4xx, 5xx, request_bytes, response_bytes
Measures = tuple[int, int, int, int, int, int, int]
MEASURE_NAMES = ("requests", "count_2xx", "count_3xx", "count_4xx", "count_5xx", "request_bytes", "response_bytes")
_ZERO = (0,) * len(MEASURE_NAMES)


def preaggregate(cols: EventColumns) -> dict[UsageKey, list[int]]:
    """One chunk -> {key: measures}; a response code outside 200-599 counts only in ``requests``."""
    acc: dict[UsageKey, list[int]] = {}
    for bucket, api, ver, app, tier, code, rq, rs in zip(
        cols.bucket_ms, cols.api_name, cols.api_version, cols.application_id, cols.tier,
        cols.response_code, cols.request_bytes, cols.response_bytes,
    ):
        key = (bucket, api, ver, app, tier)
        m = acc.get(key)
        if m is None:
            m = acc[key] = [0, 0, 0, 0, 0, 0, 0]
        m[0] += 1
        cls = code // 100
        if 2 <= cls <= 5:
            m[cls - 1] += 1
        m[5] += rq
        m[6] += rs
    return acc


class SumMeasures(beam.CombineFn):
    """Element-wise sum of measure tuples."""

    def create_accumulator(self) -> list[int]:
        return list(_ZERO)

    def add_input(self, acc: list[int], value: Iterable[int]) -> list[int]:
        for i, v in enumerate(value):
            acc[i] += v
        return acc

    def merge_accumulators(self, accs: Iterable[list[int]]) -> list[int]:
        out = list(_ZERO)
        for acc in accs:
            for i, v in enumerate(acc):
                out[i] += v
        return out

    def extract_output(self, acc: list[int]) -> Measures:
        return tuple(acc)  # type: ignore[return-value]


def _explode(cols: EventColumns) -> Iterator[tuple[UsageKey, tuple[int, ...]]]:
    for key, m in preaggregate(cols).items():
        yield key, tuple(m)


class AggregateUsage(beam.PTransform):
    """PCollection[EventColumns] -> PCollection[(UsageKey, Measures)], one element per key."""

    def expand(self, chunks: beam.PCollection) -> beam.PCollection:
        return (
            chunks
            | "PreaggregateChunk" >> beam.FlatMap(_explode)
            | "SumPerKey" >> beam.CombinePerKey(SumMeasures())
        )
