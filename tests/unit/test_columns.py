"""The columnar record format: derived from UsageEvent, and lossless both ways."""

from __future__ import annotations

from collections import Counter

from google.protobuf.descriptor import FieldDescriptor

from collector.columns import build_columns, partition_for, partitioned_records
from schemas.apim.usage.v1 import usage_event_columns_pb2 as cols_pb
from schemas.apim.usage.v1 import usage_event_pb2 as pb
from schemas.codegen import REPO_ROOT, columns_proto_text
from tests.support.columns import rows


def test_columns_proto_is_generated_from_usage_event() -> None:
    assert (REPO_ROOT / "schemas/apim/usage/v1/usage_event_columns.proto").read_text() == columns_proto_text()


def test_every_event_field_is_a_column_with_the_same_number() -> None:
    columns = {f.name: f for f in cols_pb.UsageEventColumns.DESCRIPTOR.fields}
    for f in pb.UsageEvent.DESCRIPTOR.fields:
        name = f"{f.name}_json" if f.type == FieldDescriptor.TYPE_MESSAGE else f.name
        col = columns[name]
        assert col.number == f.number
        if f.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING):
            assert col.message_type is cols_pb.StringColumn.DESCRIPTOR  # dictionary-encoded
        else:
            assert col.label == FieldDescriptor.LABEL_REPEATED and col.type == f.type


def test_string_columns_carry_each_distinct_value_once() -> None:
    events = [dict(EVENTS[i % 2], call_index=i) for i in range(6)]
    batch = build_columns(events, call_id="c", producer_id="p")
    assert list(batch.api_name.values) == ["A", "B"]
    assert list(batch.api_name.codes) == [0, 1, 0, 1, 0, 1]
    assert (len(batch.properties_json.values), list(batch.properties_json.codes)) == (2, [0, 1, 0, 1, 0, 1])


EVENTS = [
    {"call_index": 0, "api_name": "A", "api_version": "1", "application_id": "app-1", "subscription_tier": "Gold",
     "request_timestamp_ms": 1_700_000_000_000, "response_code": 200, "response_latency_ms": 1.5,
     "key_type": pb.SANDBOX, "properties": {"k": "v"}},
    {"call_index": 3, "api_name": "B", "api_version": "2", "application_id": "app-2", "subscription_tier": "Bronze",
     "request_timestamp_ms": 1_700_000_000_001, "response_code": 503, "fault": True},
]


def test_columns_round_trip_to_rows() -> None:
    batch = cols_pb.UsageEventColumns.FromString(
        build_columns(EVENTS, call_id="abc", producer_id="p", produced_ms=5).SerializeToString())
    assert (batch.count, batch.header.call_id, list(batch.call_index)) == (2, "abc", [0, 3])
    assert not batch.HasField("user_agent")  # a column no event sets stays empty
    first, second = rows(batch)
    assert (first.event_id, first.api_name, first.key_type, first.response_latency_ms, dict(first.properties)) == (
        "abc/0", "A", pb.SANDBOX, 1.5, {"k": "v"})
    assert (second.event_id, second.api_name, second.fault, second.response_latency_ms, dict(second.properties)) == (
        "abc/3", "B", True, 0.0, {})
    assert first.source == pb.MIXER_METRIC_ADAPTER


def test_a_call_is_one_record_on_its_call_ids_partition() -> None:
    events = [dict(EVENTS[i % 2], call_index=i) for i in range(100)]
    records = partitioned_records(events, partitions=6, call_id="c0ffee", producer_id="p")
    assert [(r.partition, r.batch_id, r.events) for r in records] == [(partition_for("c0ffee", 6), "c0ffee", 100)]
    batch = cols_pb.UsageEventColumns.FromString(records[0].value)
    assert (batch.count, list(batch.call_index)) == (100, list(range(100)))
    assert partitioned_records([], partitions=6, call_id="c0ffee", producer_id="p") == []


def test_by_application_an_application_always_lands_on_one_partition() -> None:
    events = [dict(EVENTS[0], call_index=i) for i in range(10)] + [dict(EVENTS[1], call_index=10 + i)
                                                                    for i in range(5)]
    records = partitioned_records(events, partitions=6, call_id="c", producer_id="p", partition_by="application")
    expected = Counter(partition_for(e["application_id"], 6) for e in events)
    assert {r.partition: r.events for r in records} == dict(expected)
    for r in records:
        batch = cols_pb.UsageEventColumns.FromString(r.value)
        assert batch.count == r.events
        assert {partition_for(app, 6) for app in batch.application_id.values} == {r.partition}
    # the hash is Kafka's default partitioner (murmur2 of the key), not Python's salted hash()
    from kafka.partitioner.default import murmur2
    assert partition_for("app-1", 6) == (murmur2(b"app-1") & 0x7FFFFFFF) % 6


def test_a_batch_over_the_record_limit_is_split_with_stable_ids() -> None:
    events = [dict(EVENTS[0], call_index=i, user_agent=f"{i:03d}" + "x" * 1000) for i in range(40)]
    records = partitioned_records(events, partitions=1, call_id="call", producer_id="p", max_record_bytes=10_000)
    assert len(records) > 1 and all(len(r.value) <= 10_000 for r in records)
    ids = [r.batch_id for r in records]
    assert ids == [f"call.{k}" for k in range(len(records))]
    batches = [cols_pb.UsageEventColumns.FromString(r.value) for r in records]
    assert [b.count for b in batches] == [r.events for r in records]
    assert [b.header.call_id for b in batches] == ids
    assert sorted(i for b in batches for i in b.call_index) == list(range(40))
    again = partitioned_records(events, partitions=1, call_id="call", producer_id="p", max_record_bytes=10_000)
    assert [(r.batch_id, cols_pb.UsageEventColumns.FromString(r.value).call_index) for r in again] == \
        [(b.header.call_id, b.call_index) for b in batches]
