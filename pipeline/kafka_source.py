"""A pure-Python bounded Kafka source: explicit offset ranges per partition.

Beam's ``ReadFromKafka`` needs Java and a Java SDK harness (engineering.md a);
this source needs neither. The driver fixes each run's bounds before anything
is read (:func:`plan_ranges`), so a retried run reads exactly the same records,
and :class:`ReadUsageEvents` reads one ``[start, end)`` range per element with
kafka-python, decodes the ``UsageEventBatch`` records and emits columnar chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics import Metrics
from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, TopicPartition

from schemas.apim.usage.v1 import usage_event_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class OffsetRange:
    """Records ``[start, end)`` of one topic partition."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def plan_ranges(
    consumer: KafkaConsumer,
    topic: str,
    stored: Mapping[int, int],
    max_records: int,
) -> list[OffsetRange]:
    """Fix this run's bounds: from the stored offsets up to the high-water marks.

    A partition never seen starts at its earliest retained offset. The record
    budget is shared fairly: each partition with a backlog gets an equal share,
    and what a small backlog leaves unused goes to the others.
    """
    partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        return []
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    ends = consumer.end_offsets(tps)
    begins = consumer.beginning_offsets(tps)
    backlog: dict[int, tuple[int, int]] = {}
    for tp in tps:
        start = max(stored.get(tp.partition, begins[tp]), begins[tp])
        if ends[tp] > start:
            backlog[tp.partition] = (start, ends[tp])
    budget = max_records
    plan: list[OffsetRange] = []
    pending = sorted(backlog.items(), key=lambda kv: kv[1][1] - kv[1][0])
    for i, (partition, (start, end)) in enumerate(pending):
        share = budget // (len(pending) - i)
        take = min(end - start, max(share, 1 if budget > 0 else 0))
        if take > 0:
            plan.append(OffsetRange(topic, partition, start, start + take))
            budget -= take
    return sorted(plan)


@dataclass
class EventColumns:
    """A chunk of decoded events as columns: only what aggregation needs, no protobuf objects."""

    bucket_ms: list[int] = field(default_factory=list)
    api_name: list[str] = field(default_factory=list)
    api_version: list[str] = field(default_factory=list)
    application_id: list[str] = field(default_factory=list)
    tier: list[str] = field(default_factory=list)
    response_code: list[int] = field(default_factory=list)
    request_bytes: list[int] = field(default_factory=list)
    response_bytes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.bucket_ms)

    def append(self, ev: pb.UsageEvent) -> None:
        ts = ev.request_timestamp_ms
        self.bucket_ms.append(ts - ts % 60_000)
        self.api_name.append(ev.api_name)
        self.api_version.append(ev.api_version)
        self.application_id.append(ev.application_id)
        self.tier.append(ev.subscription_tier)
        self.response_code.append(ev.response_code)
        self.request_bytes.append(ev.request_size_bytes)
        self.response_bytes.append(ev.response_size_bytes)


class ReadUsageEvents(beam.DoFn):
    """OffsetRange -> EventColumns chunks, with duplicate event ids inside the range dropped.

    Duplicates (a Mixer retry, a collector replaying its spool) share the
    application and therefore the partition, so dropping them per range is
    enough. Records that do not decode are counted and skipped; their offsets
    still advance with the range.
    """

    def __init__(self, bootstrap: str, chunk_events: int = 20_000, poll_timeout_ms: int = 1000,
                 max_idle_polls: int = 30) -> None:
        self.bootstrap = bootstrap
        self.chunk_events = chunk_events
        self.poll_timeout_ms = poll_timeout_ms
        self.max_idle_polls = max_idle_polls
        self.records = Metrics.counter(self.__class__, "records_read")
        self.events = Metrics.counter(self.__class__, "events_decoded")
        self.duplicates = Metrics.counter(self.__class__, "duplicate_events")
        self.poison = Metrics.counter(self.__class__, "undecodable_records")
        self._consumer: KafkaConsumer | None = None

    def setup(self) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=16 << 20,
            fetch_max_bytes=64 << 20,
            client_id="apim-pipeline-reader",
        )

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(self, rng: OffsetRange) -> Iterator[EventColumns]:
        consumer = self._consumer
        assert consumer is not None, "setup() not called"
        tp = TopicPartition(rng.topic, rng.partition)
        consumer.assign([tp])
        consumer.seek(tp, rng.start)
        seen: set[str] = set()
        chunk = EventColumns()
        idle = 0
        while consumer.position(tp) < rng.end:
            polled = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=5000)
            records = polled.get(tp, [])
            if not records:
                idle += 1
                if idle > self.max_idle_polls:
                    raise RuntimeError(f"no records from {rng} at offset {consumer.position(tp)} "
                                       f"after {idle} polls; is the broker up?")
                continue
            idle = 0
            for record in records:
                if record.offset >= rng.end:
                    break
                self.records.inc()
                try:
                    batch = pb.UsageEventBatch.FromString(record.value)
                except (DecodeError, TypeError):
                    self.poison.inc()
                    log.warning("undecodable record skipped",
                                extra={"topic": rng.topic, "partition": rng.partition, "offset": record.offset})
                    continue
                for ev in batch.events:
                    if ev.event_id in seen:
                        self.duplicates.inc()
                        continue
                    seen.add(ev.event_id)
                    chunk.append(ev)
                if len(chunk) >= self.chunk_events:
                    self.events.inc(len(chunk))
                    yield chunk
                    chunk = EventColumns()
        if len(chunk):
            self.events.inc(len(chunk))
            yield chunk
