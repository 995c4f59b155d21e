"""Pipeline logic without I/O: range planning, pre-aggregation, the Beam transform."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from kafka import TopicPartition

from collector.columns import build_columns
from pipeline.aggregate import aggregate_chunk
from pipeline.bounded import MergeSummaries, RunTotals
from pipeline.decode import Chunk, ChunkBuilder
from pipeline.offsets import OffsetRange
from tests.support.planning import plan_ranges


class FakeConsumer:
    """Answers the three metadata calls plan_ranges makes."""

    def __init__(self, begins: dict[int, int], ends: dict[int, int]) -> None:
        self.begins, self.ends = begins, ends

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.ends)

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp.partition] for tp in tps}

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.begins[tp.partition] for tp in tps}


def test_plan_reads_from_stored_offsets_to_high_water_marks() -> None:
    consumer = FakeConsumer(begins={0: 0, 1: 0, 2: 5}, ends={0: 100, 1: 40, 2: 5})
    plan = plan_ranges(consumer, "t", stored={0: 60}, max_records=1000)
    assert plan == [OffsetRange("t", 0, 60, 100), OffsetRange("t", 1, 0, 40)]


def test_plan_starts_at_earliest_retained_offset() -> None:
    consumer = FakeConsumer(begins={0: 50}, ends={0: 80})
    assert plan_ranges(consumer, "t", stored={0: 10}, max_records=1000) == [
        OffsetRange("t", 0, 50, 80)]


def test_plan_shares_the_budget_and_gives_leftovers_to_big_partitions() -> None:
    consumer = FakeConsumer(begins={0: 0, 1: 0, 2: 0}, ends={0: 10, 1: 1000, 2: 1000})
    plan = plan_ranges(consumer, "t", stored={}, max_records=300)
    assert [(r.partition, r.size) for r in plan] == [(0, 10), (1, 145), (2, 145)]
    assert sum(r.size for r in plan) == 300


def test_plan_is_empty_without_backlog() -> None:
    consumer = FakeConsumer(begins={0: 0}, ends={0: 7})
    assert plan_ranges(consumer, "t", stored={0: 7}, max_records=10) == []


def _chunk(events: list[dict]) -> Chunk:
    builder = ChunkBuilder()
    builder.add(build_columns(events, call_id="c", producer_id="p").SerializeToString())
    builder.accept()
    return builder.take()


def _event(ts: int, api: str, app: str, tier: str, code: int, rq: int = 10, rs: int = 100) -> dict:
    return {"call_index": 0, "request_timestamp_ms": ts, "api_name": api, "api_version": "1", "application_id": app,
            "subscription_tier": tier, "response_code": code, "request_size_bytes": rq, "response_size_bytes": rs}


def _cells(partial) -> dict:
    cols = ["bucket_ms", "api_name", "application_id", "tier", "requests", "count_2xx", "count_3xx", "count_4xx",
            "count_5xx", "request_bytes", "response_bytes"]
    return {tuple(r[:4]): tuple(r[4:]) for r in partial.usage[cols].itertuples(index=False)}


def test_chunk_aggregates_by_minute_and_status_class() -> None:
    partial = aggregate_chunk(_chunk([
        _event(60_000, "A", "x", "Gold", 200), _event(119_999, "A", "x", "Gold", 404),
        _event(120_000, "A", "x", "Gold", 503), _event(61_000, "B", "y", "Bronze", 302),
        _event(62_000, "B", "y", "Bronze", 0),
    ]))
    assert _cells(partial) == {
        (60_000, "A", "x", "Gold"): (2, 1, 0, 1, 0, 20, 200),
        (120_000, "A", "x", "Gold"): (1, 0, 0, 0, 1, 10, 100),
        (60_000, "B", "y", "Bronze"): (2, 0, 1, 0, 0, 20, 200),
    }


def test_beam_combine_merges_partials_like_merge() -> None:
    a = aggregate_chunk(_chunk([_event(60_000, "A", "x", "Gold", 200)] * 3))
    b = aggregate_chunk(_chunk([_event(60_500, "A", "x", "Gold", 201), _event(0, "A", "x", "Gold", 500)]))
    with TestPipeline(runner=FnApiRunner()) as p:
        out = (p | beam.Create([a, b]) | "Wrap" >> beam.Map(lambda part: RunTotals(partial=part))
               | beam.CombineGlobally(MergeSummaries()) | "Cells" >> beam.Map(lambda r: _cells(r.partial)))
        assert_that(out, equal_to([{
            (60_000, "A", "x", "Gold"): (4, 4, 0, 0, 0, 40, 400),
            (0, "A", "x", "Gold"): (1, 0, 0, 0, 1, 10, 100),
        }]))
