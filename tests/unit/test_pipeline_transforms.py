"""The pipeline's composite transform on plain data, concat_chunks against per-chunk aggregation, and the
streaming job's commit-group keys."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from apache_beam import Create, Map
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.columns import build_columns
from core.record_format import USAGE_RECORD_SCHEMA
from pipeline.aggregate import (
    APP_ATTRS,
    DESTINATION_KEY,
    THROTTLE_KEY,
    USAGE_KEY,
    USER_DAY_KEY,
    Partial,
    aggregate_chunk,
    aggregate_chunks,
    merge,
)
from pipeline.decode import Chunk, ChunkBuilder, concat_chunks
from pipeline.elements import ChunkSummary, DeadLettersWritten, RecordBatch, SourceRecord
from pipeline.errors import DeadLetterCode
from pipeline.streaming import KeyByCommitGroup
from pipeline.transforms import DEAD_LETTERS, DecodeAndPreAggregate, DecodedBatch, DecodeRecords, PreAggregate

T0 = 1_700_000_040_000  # 2023-11-14 22:14 UTC, a whole minute
GOOD_SCHEMA = [("schema", USAGE_RECORD_SCHEMA)]
BAD_SCHEMA = [("schema", b"apim.Other;format=9")]
UNDECODABLE = b"\xff\xff"
UNDECODABLE_REASON = "not a UsageEventColumns batch: Error parsing message with type 'apim.usage.v1.UsageEventColumns'"
UNKNOWN_SCHEMA_REASON = "unknown schema b'apim.Other;format=9'; expected apim.usage.v1.UsageEventColumns;format=2"


def event(app: str, code: int, *, ts: int = T0, rq: int = 10, rs: int = 100) -> dict:
    return {"call_index": 0, "request_timestamp_ms": ts, "api_name": "PizzaAPI", "api_version": "1.0.0",
            "api_context": "/pizza/1.0.0", "application_id": app, "subscription_tier": "Gold",
            "application_tier": "50PerMin", "user_name": "alice", "api_resource_template": "/menu",
            "api_method": "GET", "destination": "pizza.default.svc", "response_code": code,
            "request_size_bytes": rq, "response_size_bytes": rs}


def value_of(events: list[dict], call: str, event_ids: list[str] | None = None) -> bytes:
    batch = build_columns(events, call_id=call, producer_id="p", produced_ms=0)
    if event_ids is not None:  # producers other than the collector may set event ids
        distinct = list(dict.fromkeys(event_ids))
        batch.event_id.values.extend(distinct)
        batch.event_id.codes.extend(distinct.index(i) for i in event_ids)
    return batch.SerializeToString()


def rec(offset: int, value: bytes | None, key: bytes | None, headers: list | None = None) -> SourceRecord:
    return SourceRecord(offset, key, value, headers)


POISON_VALUE = value_of([event("z", 200)] * 4, "call-d")


def batches() -> list[RecordBatch]:
    """Partition 0: a good record, an undecodable one, one keyed only by its call id, one with a foreign schema.
    Partition 1: a record already counted (the reader marked it) and one whose two events share an event id.
    Partition 2: a heartbeat."""
    p0 = RecordBatch("t", 0, 10, 14, [
        rec(10, value_of([event("x", 200), event("x", 404)], "call-a"), b"call-a", GOOD_SCHEMA),
        rec(11, UNDECODABLE, b"call-b", GOOD_SCHEMA),
        rec(12, value_of([event("y", 503)], "call-c"), None),
        rec(13, POISON_VALUE, b"call-d", BAD_SCHEMA),
    ])
    p1 = RecordBatch("t", 1, 0, 3, [
        rec(0, value_of([event("x", 200, rs=7)], "call-e"), b"call-e"),
        rec(1, value_of([event("x", 200)] * 2, "call-a"), b"call-a"),
        rec(2, value_of([event("y", 201, rq=3), event("y", 500, rq=4)], "call-f", ["e1", "e1"]), b"call-f"),
    ], counted=frozenset({1}))
    heartbeat = RecordBatch("t", 2, 7, 7)
    return [p0, p1, heartbeat]


# what each batch's summary must say: (partition, start, end, records, duplicates, dead_letters, events, new_calls)
EXPECTED_FIELDS = [
    (0, 10, 14, 4, 0, 2, 3, [("t", 0, "call-a", 10), ("t", 0, "call-c", 12)]),
    (1, 0, 3, 3, 3, 0, 2, [("t", 1, "call-e", 0), ("t", 1, "call-f", 2)]),  # 2 counted + 1 repeated event id
    (2, 7, 7, 0, 0, 0, 0, []),
]
# usage cells per (bucket, application): requests, 2xx, 3xx, 4xx, 5xx, request bytes, response bytes
EXPECTED_CELLS = {
    0: {(T0, "x"): (2, 1, 0, 1, 0, 20, 200), (T0, "y"): (1, 0, 0, 0, 1, 10, 100)},
    1: {(T0, "x"): (1, 1, 0, 0, 0, 10, 7), (T0, "y"): (1, 1, 0, 0, 0, 3, 100)},  # the first e1 event is kept
    2: {},
}
EXPECTED_DEAD = [(0, 10, 14, [
    (11, DeadLetterCode.UNDECODABLE_RECORD, UNDECODABLE_REASON, b"call-b", UNDECODABLE),
    (13, DeadLetterCode.UNKNOWN_SCHEMA, UNKNOWN_SCHEMA_REASON, b"call-d", POISON_VALUE),
])]


def cells(partial: Partial) -> dict:
    cols = ["bucket_ms", "application_id", "requests", "count_2xx", "count_3xx", "count_4xx", "count_5xx",
            "request_bytes", "response_bytes"]
    return {(int(r[0]), r[1]): tuple(int(v) for v in r[2:]) for r in partial.usage[cols].itertuples(index=False)}


def summary_view(s: ChunkSummary) -> tuple:
    """A summary as plain values; its facts as usage cells, whether it carries a partial or decoded chunks."""
    if s.partial is not None:
        assert s.chunks == []
        facts = s.partial
    else:
        facts = aggregate_chunks(s.chunks)
    return (s.topic, s.partition, s.start, s.end, s.records, s.duplicates, s.dead_letters, s.events, s.new_calls,
            s.partial is None, len(s.chunks), cells(facts))


def dead_view(d) -> tuple:
    assert all((r.topic, r.partition) == (d.topic, d.partition) for r in d.records)
    return d.partition, d.start, d.end, [(r.offset, r.code, r.reason, r.key, r.value) for r in d.records]


@pytest.mark.parametrize(("pre_aggregate", "chunk_events", "chunks"), [
    (True, 200_000, [0, 0, 0]),
    (False, 200_000, [1, 1, 0]),
    (False, 1, [2, 2, 0]),  # one chunk per accepted record: aggregate_chunks concatenates them
])
def test_decode_and_pre_aggregate_on_the_fn_api_runner(pre_aggregate: bool, chunk_events: int,
                                                       chunks: list[int]) -> None:
    expected = [("t", p, start, end, records, dups, dead, events, calls, not pre_aggregate, n_chunks,
                 EXPECTED_CELLS[p])
                for (p, start, end, records, dups, dead, events, calls), n_chunks in zip(EXPECTED_FIELDS, chunks)]
    with TestPipeline(runner=FnApiRunner()) as p:
        out = p | Create(batches()) | DecodeAndPreAggregate(chunk_events, pre_aggregate=pre_aggregate)
        assert_that(out["summaries"] | "ViewSummaries" >> Map(summary_view), equal_to(expected), label="Summaries")
        assert_that(out[DEAD_LETTERS] | "ViewDead" >> Map(dead_view), equal_to(EXPECTED_DEAD), label="Dead")


def _decode(batch: RecordBatch, chunk_events: int = 200_000) -> tuple[list, DecodedBatch]:
    outputs = list(DecodeRecords(chunk_events).process(batch))
    decoded = [o for o in outputs if isinstance(o, DecodedBatch)]
    assert len(decoded) == 1
    return [o for o in outputs if not isinstance(o, DecodedBatch)], decoded[0]


def test_a_heartbeat_gives_an_empty_summary_and_no_dead_letters() -> None:
    dead, decoded = _decode(RecordBatch("t", 4, 9, 9, read_at=12.5))
    assert dead == []
    (summary,) = PreAggregate(aggregate=True).process(decoded)
    assert (summary.partition, summary.start, summary.end, summary.records, summary.duplicates,
            summary.dead_letters, summary.events, summary.new_calls, summary.chunks, summary.read_at) == (
        4, 9, 9, 0, 0, 0, 0, [], [], 12.5)
    assert summary.partial is not None
    assert len(summary.partial.usage) == 0
    (lazy,) = PreAggregate(aggregate=False).process(decoded)
    assert (lazy.partial, lazy.chunks, lazy.events) == (None, [], 0)


def test_a_counted_record_is_only_counted_as_duplicates() -> None:
    records = [rec(5, value_of([event("x", 200)] * 3, "call-a"), b"call-a"),
               rec(6, value_of([event("y", 200)], "call-b"), b"call-b")]
    _, decoded = _decode(RecordBatch("t", 0, 5, 7, records, counted=frozenset({5})))
    (summary,) = PreAggregate().process(decoded)
    assert (summary.records, summary.duplicates, summary.events, summary.new_calls) == (
        2, 3, 1, [("t", 0, "call-b", 6)])
    assert summary.partial is not None
    assert cells(summary.partial) == {(T0, "y"): (1, 1, 0, 0, 0, 10, 100)}


def test_an_empty_value_is_a_dead_letter() -> None:
    dead, decoded = _decode(RecordBatch("t", 3, 0, 1, [rec(0, None, b"k")]))
    assert [dead_view(d.value) for d in dead] == [
        (3, 0, 1, [(0, DeadLetterCode.UNDECODABLE_RECORD, "empty record", b"k", None)])]
    assert dead[0].tag == DEAD_LETTERS
    (summary,) = PreAggregate().process(decoded)
    assert (summary.records, summary.dead_letters, summary.events, summary.new_calls) == (1, 1, 0, [])


FRAMES: dict[str, tuple[str, ...]] = {
    "usage": USAGE_KEY, "user_day": USER_DAY_KEY, "destination": DESTINATION_KEY, "throttle": THROTTLE_KEY,
    "apis": ("api_name", "api_version"), "applications": ("application_id", *APP_ATTRS),
}


def frame_rows(frame: pd.DataFrame, key: tuple[str, ...]) -> list[tuple]:
    """A frame as rows of plain values in a fixed column order, sorted by key (row order is not part of a
    partial's meaning; an empty frame may have other dtypes)."""
    if not len(frame):
        return []
    cols = [*key, *sorted(c for c in frame.columns if c not in key)]
    rows = [tuple(v.item() if isinstance(v, np.generic) else v for v in r)
            for r in frame[cols].itertuples(index=False)]
    return sorted(rows, key=lambda r: tuple(str(v) for v in r[:len(key)]))


def assert_same_partial(got: Partial, want: Partial) -> None:
    assert got.events == want.events
    for name, key in FRAMES.items():
        g, w = getattr(got, name), getattr(want, name)
        if len(g) or len(w):
            assert sorted(g.columns) == sorted(w.columns), name
        assert frame_rows(g, key) == frame_rows(w, key), name


def chunk_of(events: list[dict], event_ids: list[str] | None = None) -> Chunk:
    builder = ChunkBuilder()
    builder.add(value_of(events, "c", event_ids))
    builder.accept()
    return builder.take()


def test_concat_with_keep_masks_aggregates_like_each_chunk_alone() -> None:
    a = chunk_of([event("x", 200), event("y", 404, rq=5), event("x", 503, ts=T0 + 60_000)])
    b = chunk_of([event("y", 200, rs=9), event("w", 302), event("x", 200)])
    c = chunk_of([event("x", 200)])
    parts = [(a, np.array([True, False, True])), (b, None), (c, np.array([False]))]
    got = aggregate_chunks(parts)
    assert got.events == 5
    assert cells(got) == {(T0, "x"): (2, 2, 0, 0, 0, 20, 200), (T0 + 60_000, "x"): (1, 0, 0, 0, 1, 10, 100),
                          (T0, "y"): (1, 1, 0, 0, 0, 10, 9), (T0, "w"): (1, 0, 1, 0, 0, 10, 100)}
    assert_same_partial(got, merge([aggregate_chunk(ch, keep) for ch, keep in parts]))
    joined = concat_chunks(parts)
    assert joined.n == 5
    assert joined.string("application_id").tolist() == ["x", "x", "y", "w", "x"]
    assert joined.numbers["request_timestamp_ms"].tolist() == [T0, T0 + 60_000, T0, T0, T0]


# --- hypothesis: any chunks, any keep masks ------------------------------------------------------

OFFSETS_MS = [0, 1, 59_999, 60_000, 3_599_999, 3_600_000, 86_400_000, 40 * 86_400_000]
EVENT = st.fixed_dictionaries({
    "call_index": st.integers(0, 3),
    "request_timestamp_ms": st.sampled_from(OFFSETS_MS).map(lambda o: T0 + o),
}, optional={
    "api_name": st.sampled_from(["A", "B"]), "api_version": st.sampled_from(["1", "2"]),
    "api_context": st.sampled_from(["/a", "/b"]), "api_id": st.sampled_from(["id1", "id2"]),
    "api_creator": st.sampled_from(["admin", "bob"]),
    "api_resource_template": st.sampled_from(["", "/r/{id}"]),
    "api_resource_path": st.sampled_from(["", "/r/1", "/r/2", "/q"]), "api_method": st.sampled_from(["GET", "PUT"]),
    "application_id": st.sampled_from(["", "x", "y"]), "application_name": st.sampled_from(["nx", "ny"]),
    "application_owner": st.sampled_from(["o1", "o2"]), "key_type": st.integers(-1, 3),
    "subscription_tier": st.sampled_from(["", "Gold", "Bronze"]),
    "application_tier": st.sampled_from(["", "10PerMin"]), "user_name": st.sampled_from(["", "u", "v"]),
    "destination": st.sampled_from(["d1", "d2"]), "response_code": st.sampled_from([0, 200, 302, 404, 503, 600]),
    "throttled_out": st.booleans(), "fault": st.booleans(),
    "response_latency_ms": st.sampled_from([0.0, 0.4, 12.5, 250.0, 9e9]),
    "backend_latency_ms": st.sampled_from([0.0, 3.25, 100.0]),
    "request_size_bytes": st.integers(0, 5000), "response_size_bytes": st.integers(0, 5000),
})


@st.composite
def parts_with_masks(draw) -> list[tuple[Chunk, np.ndarray | None]]:
    out = []
    for events in draw(st.lists(st.lists(EVENT, min_size=0, max_size=6), min_size=1, max_size=3)):
        ids = draw(st.none() | st.lists(st.sampled_from(["", "e1", "e2"]), min_size=len(events),
                                        max_size=len(events))) if events else None
        chunk = chunk_of(events, ids)
        mask = draw(st.none() | st.lists(st.booleans(), min_size=chunk.n, max_size=chunk.n))
        out.append((chunk, None if mask is None else np.array(mask, dtype=bool)))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts_with_masks())
def test_aggregating_concatenated_chunks_equals_merging_each_chunk(parts: list) -> None:
    want = merge([aggregate_chunk(chunk, keep) for chunk, keep in parts])
    assert_same_partial(aggregate_chunks(parts), want)
    assert want.events == sum(c.n if k is None else int(k.sum()) for c, k in parts)
    joined = concat_chunks(parts)
    kept = [c.string("application_id")[slice(None) if k is None else k] for c, k in parts]
    assert joined.string("application_id").tolist() == np.concatenate(kept).tolist()


# --- KeyByCommitGroup -----------------------------------------------------------------------------

@pytest.mark.parametrize(("groups", "partition", "key"), [(1, 0, "t/0"), (1, 5, "t/0"), (3, 0, "t/0"), (3, 4, "t/1"),
                                                         (3, 8, "t/2"), (4, 7, "t/3")])
def test_key_by_commit_group_keys_partition_modulo_groups(groups: int, partition: int, key: str) -> None:
    summary = ChunkSummary("t", partition, 0, 1)
    ack = DeadLettersWritten("t", partition, 0, 1, 1)
    fn = KeyByCommitGroup(groups)
    assert list(fn.process(summary)) == [(key, summary)]
    assert list(fn.process(ack)) == [(key, ack)]
