"""Event dicts -> ``apim.usage.v1.UsageEventColumns`` records.

By default (``partition_by="call"``) a call's events travel as ONE columnar
record on the partition ``murmur2(call_id) % partitions`` (Kafka's default
partitioner hash): the fewest records, and a retried or spooled copy of the
call lands on the same partition under the same key, where the pipeline
recognises it. kafka-python costs 40-80 us per record in pure Python
(docs/kafka-and-beam.md section 3), and a record's fixed costs (its columns'
setup, the pipeline's fetch and decode) are shared by all its events: a call
of 100 instances made 6 records of about 17 events with one per partition.

``partition_by="application"`` keeps the earlier layout for consumers that
need an application's events in order on one partition: an event's partition
is ``murmur2(application_id) % partitions``, one record per partition the
call's events fall on. Columns are filled through C-level repeated fields.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from google.protobuf.descriptor import FieldDescriptor
from kafka.partitioner.default import murmur2

from collector.mapping import EVENT_FIELDS, properties_json
from schemas.apim.usage.v1 import usage_event_columns_pb2 as cols_pb
from schemas.apim.usage.v1 import usage_event_pb2 as pb

_DEFAULTS: dict[str, Any] = {}
for _name, _fd in EVENT_FIELDS.items():
    if _fd.type == FieldDescriptor.TYPE_MESSAGE:
        continue
    _DEFAULTS[_name] = {FieldDescriptor.TYPE_STRING: "", FieldDescriptor.TYPE_BOOL: False,
                        FieldDescriptor.TYPE_DOUBLE: 0.0}.get(_fd.type, 0)
_COLUMN_FIELDS = tuple(n for n in _DEFAULTS if n != "event_id")
_STRING_FIELDS = frozenset(n for n, fd in EVENT_FIELDS.items() if fd.type == FieldDescriptor.TYPE_STRING)


def _fill_strings(column: cols_pb.StringColumn, values: Sequence[str]) -> None:
    """Dictionary-encode one string column: distinct values once, a code per event."""
    distinct = dict.fromkeys(values)  # first-seen order, in C
    index = {v: i for i, v in enumerate(distinct)}
    column.values.extend(distinct)
    column.codes.extend(map(index.__getitem__, values))


@functools.lru_cache(maxsize=1 << 16)
def partition_for(application_id: str, partitions: int) -> int:
    """Kafka's default partitioner hash, applied to the application id (cached: kafka-python's
    murmur2 is pure Python, and the same applications call again and again)."""
    return (murmur2(application_id.encode("utf-8", "surrogatepass")) & 0x7FFFFFFF) % partitions


def build_columns(events: Sequence[dict[str, Any]], *, call_id: str, producer_id: str,
                  produced_ms: int | None = None,
                  source: pb.EventSource = pb.MIXER_METRIC_ADAPTER) -> cols_pb.UsageEventColumns:
    """One columnar batch; a column is left empty when every event has its default."""
    batch = cols_pb.UsageEventColumns(count=len(events))
    batch.header.producer_id = producer_id
    batch.header.produced_timestamp_ms = produced_ms if produced_ms is not None else int(time.time() * 1000)
    batch.header.call_id = call_id
    batch.call_index.extend([e["call_index"] for e in events])
    present = set().union(*events)
    for name in _COLUMN_FIELDS:
        if name in present:
            default = _DEFAULTS[name]
            values = [e.get(name, default) for e in events]
            if name in _STRING_FIELDS:
                _fill_strings(getattr(batch, name), values)
            else:
                getattr(batch, name).extend(values)
    if "properties" in present:
        _fill_strings(batch.properties_json, [properties_json(e) for e in events])
    batch.source.extend([source] * len(events))
    return batch


class BatchRecord(NamedTuple):
    """One Kafka record's worth of a call: where it goes, its id, its bytes, how many events."""

    partition: int
    batch_id: str
    value: bytes
    events: int


def partitioned_records(events: Sequence[dict[str, Any]], *, partitions: int, call_id: str, producer_id: str,
                        max_record_bytes: int = 1_000_000,
                        source: pb.EventSource = pb.MIXER_METRIC_ADAPTER,
                        partition_by: str = "call") -> list[BatchRecord]:
    """The call's columnar records: one on its call id's partition (``partition_by="call"``), or one per
    partition its events' applications fall on (``"application"``).

    A partition's batch larger than ``max_record_bytes`` (the broker's
    ``message.max.bytes`` sets the ceiling) is split in halves until every part
    fits; the parts get ids ``<call_id>.<k>``, the same on every retry of the
    call, since the split depends only on the events.
    """
    groups: dict[int, Sequence[dict[str, Any]]]
    if partition_by == "call":
        groups = {partition_for(call_id, partitions): events} if events else {}
    else:
        by_app: dict[int, list[dict[str, Any]]] = {}
        for e in events:
            by_app.setdefault(partition_for(e.get("application_id", ""), partitions), []).append(e)
        groups = dict(by_app)
    now_ms = int(time.time() * 1000)
    out: list[BatchRecord] = []
    for p, group in groups.items():
        parts = _fit(group, call_id, producer_id, now_ms, max_record_bytes, source)
        if len(parts) == 1:
            out.append(BatchRecord(p, call_id, parts[0][1], len(group)))
            continue
        for k, (part, _) in enumerate(parts):  # rare: rebuild each part under its own id
            batch_id = f"{call_id}.{k}"
            value = build_columns(part, call_id=batch_id, producer_id=producer_id, produced_ms=now_ms, source=source)
            out.append(BatchRecord(p, batch_id, value.SerializeToString(), len(part)))
    return out


def _fit(group: Sequence[dict[str, Any]], call_id: str, producer_id: str, now_ms: int,
         limit: int, source: pb.EventSource) -> list[tuple[Sequence[dict[str, Any]], bytes]]:
    """Halve ``group`` until each part serializes within ``limit``: [(part, its bytes)]."""
    value = build_columns(group, call_id=call_id, producer_id=producer_id, produced_ms=now_ms,
                          source=source).SerializeToString()
    if len(value) <= limit or len(group) == 1:
        return [(group, value)]
    half = len(group) // 2
    return _fit(group[:half], call_id, producer_id, now_ms, limit, source) + \
        _fit(group[half:], call_id, producer_id, now_ms, limit, source)
