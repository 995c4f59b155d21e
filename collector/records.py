"""A mapped call's Kafka records: its columnar event records (collector.columns: one per call by default),
and one dead letter per rejection. Shared by the Mixer, ALS and OTLP handlers, so every protocol writes the
same records."""

from __future__ import annotations

import time
from collections.abc import Callable

from collector.columns import partitioned_records
from collector.mapping import MappedCall, Rejection, redact_instance
from collector.publisher import Record
from collector.settings import CollectorSettings
from core.record_format import DEAD_LETTER_SCHEMA
from schemas.apim.usage.v1 import dead_letter_pb2
from schemas.apim.usage.v1 import usage_event_pb2 as usage_pb2
from schemas.mixer.template.metric import template_handler_service_pb2 as metric_pb2

#: The rejected instance (or access-log entry in InstanceMsg form) a dead letter carries.
InstanceOf = Callable[[Rejection], metric_pb2.InstanceMsg]


def build_records(mapped: MappedCall, *, settings: CollectorSettings, partitions: int, call_id: str,
                  producer_id: str, dedup_id: str, source: usage_pb2.EventSource, instance_of: InstanceOf,
                  credential_dims: set[str], on_batch: Callable[[int], None] | None = None) -> list[Record]:
    """The records that make ``mapped`` safe; ``on_batch`` is told each event record's size in events."""
    s = settings
    records = []
    for batch in partitioned_records(mapped.events, partitions=partitions, call_id=call_id,
                                     producer_id=producer_id, max_record_bytes=s.kafka_max_record_bytes,
                                     source=source, partition_by=s.partition_by):
        records.append(Record(topic=s.topic, partition=batch.partition, key=batch.batch_id.encode(),
                              value=batch.value))
        if on_batch is not None:
            on_batch(batch.events)
    now_ms = int(time.time() * 1000)
    for r in mapped.rejected:
        letter = dead_letter_pb2.DeadLetter(
            reason=r.reason, reason_code=r.code, stage="collector", rejected_timestamp_ms=now_ms,
            dedup_id=dedup_id, instance_index=r.index, instance_name=r.instance[0],
            instance=redact_instance(instance_of(r), credential_dims))
        records.append(Record(topic=s.dead_letter_topic, partition=None, key=f"{call_id}/{r.index}".encode(),
                              value=letter.SerializeToString(), schema=DEAD_LETTER_SCHEMA))
    return records
