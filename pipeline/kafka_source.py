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

from schemas.apim.usage.v1 import usage_event_columns_pb2 as cols_pb
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


USAGE_SCHEMA = cols_pb.UsageEventColumns.DESCRIPTOR.full_name.encode()
_NEEDED = ("request_timestamp_ms", "api_name", "api_version", "application_id", "subscription_tier",
           "response_code", "request_size_bytes", "response_size_bytes")


class PoisonRecord(ValueError):
    """A record that cannot be counted: wrong schema, undecodable, or inconsistent columns."""


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
        """One row (tests and tools; records arrive as columns, see :meth:`extend`)."""
        ts = ev.request_timestamp_ms
        self.bucket_ms.append(ts - ts % 60_000)
        self.api_name.append(ev.api_name)
        self.api_version.append(ev.api_version)
        self.application_id.append(ev.application_id)
        self.tier.append(ev.subscription_tier)
        self.response_code.append(ev.response_code)
        self.request_bytes.append(ev.request_size_bytes)
        self.response_bytes.append(ev.response_size_bytes)

    def extend(self, batch: cols_pb.UsageEventColumns, keep: list[bool] | None = None) -> None:
        """Append a columnar batch; ``keep`` selects events (duplicates dropped)."""
        n = batch.count
        columns = {}
        for name in _NEEDED:
            values = list(getattr(batch, name))
            if values and len(values) != n:
                raise PoisonRecord(f"column {name} has {len(values)} entries, the batch has {n}")
            columns[name] = values or ([""] * n if name in ("api_name", "api_version", "application_id",
                                                            "subscription_tier") else [0] * n)
        if keep is not None:
            columns = {k: [v for v, k_ in zip(vals, keep) if k_] for k, vals in columns.items()}
        self.bucket_ms.extend(ts - ts % 60_000 for ts in columns["request_timestamp_ms"])
        self.api_name.extend(columns["api_name"])
        self.api_version.extend(columns["api_version"])
        self.application_id.extend(columns["application_id"])
        self.tier.extend(columns["subscription_tier"])
        self.response_code.extend(columns["response_code"])
        self.request_bytes.extend(columns["request_size_bytes"])
        self.response_bytes.extend(columns["response_size_bytes"])


def decode_record(value: bytes | None, headers: list[tuple[str, bytes]] | None) -> cols_pb.UsageEventColumns:
    """A record's batch, or PoisonRecord naming what is wrong with it."""
    schema = dict(headers or []).get("schema")
    if schema is not None and schema != USAGE_SCHEMA:
        raise PoisonRecord(f"unknown schema {schema[:80]!r}; expected {USAGE_SCHEMA.decode()}")
    if value is None:
        raise PoisonRecord("empty record")
    try:
        batch = cols_pb.UsageEventColumns.FromString(value)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise PoisonRecord(f"not a UsageEventColumns batch: {str(exc)[:120]}") from exc
    if batch.count < 0:
        raise PoisonRecord("negative event count")
    return batch


class ReadUsageEvents(beam.DoFn):
    """OffsetRange -> EventColumns chunks; the calls counted for the first time go to a tagged output.

    A producer call delivered twice (a timed-out send that arrived after all,
    plus its spooled copy; a collector replaying its spool after a crash) has
    the same call id, which is the record key, on the same partition. The
    reader drops a call id already counted in this range or in an earlier run
    within the dedup horizon (the store's ``seen_batches``), and drops repeated
    event ids inside a range for producers that set them. Poison records are
    counted and skipped; their offsets still advance with the range.
    """

    NEW_CALLS = "new_calls"

    def __init__(self, bootstrap: str, store_url: str = "", dedup_horizon_s: float = 3600.0,
                 chunk_events: int = 50_000, poll_timeout_ms: int = 1000, max_idle_polls: int = 30) -> None:
        self.bootstrap = bootstrap
        self.store_url = store_url
        self.dedup_horizon_s = dedup_horizon_s
        self.chunk_events = chunk_events
        self.poll_timeout_ms = poll_timeout_ms
        self.max_idle_polls = max_idle_polls
        self.records = Metrics.counter(self.__class__, "records_read")
        self.events = Metrics.counter(self.__class__, "events_decoded")
        self.duplicates = Metrics.counter(self.__class__, "duplicate_events")
        self.poison = Metrics.counter(self.__class__, "undecodable_records")
        self._consumer: KafkaConsumer | None = None
        self._engine = None

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
        if self.store_url:
            from store.engine import make_engine

            self._engine = make_engine(self.store_url)

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._engine is not None:
            self._engine.dispose()

    def _seen_calls(self, rng: OffsetRange) -> set[str]:
        if self._engine is None:
            return set()
        import datetime as dt

        from sqlalchemy import select

        from store.tables import seen_batches

        since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=self.dedup_horizon_s)
        t = seen_batches.c
        with self._engine.connect() as conn:
            return {row[0] for row in conn.execute(
                select(t.call_id).where(t.topic == rng.topic, t.partition == rng.partition,
                                        t.committed_at >= since))}

    def process(self, rng: OffsetRange) -> Iterator[EventColumns | beam.pvalue.TaggedOutput]:
        consumer = self._consumer
        assert consumer is not None, "setup() not called"
        tp = TopicPartition(rng.topic, rng.partition)
        consumer.assign([tp])
        consumer.seek(tp, rng.start)
        seen_calls = self._seen_calls(rng)
        seen_events: set[str] = set()
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
                    batch = decode_record(record.value, record.headers)
                    call_id = batch.header.call_id or (record.key or b"").decode("utf-8", "replace")
                    if call_id and call_id in seen_calls:
                        self.duplicates.inc(batch.count)
                        continue
                    keep = None
                    if batch.event_id:
                        keep = [eid not in seen_events for eid in batch.event_id]
                        seen_events.update(batch.event_id)
                        self.duplicates.inc(keep.count(False))
                    chunk.extend(batch, keep)
                except PoisonRecord as exc:
                    self.poison.inc()
                    log.warning("record skipped", extra={"topic": rng.topic, "partition": rng.partition,
                                                         "offset": record.offset, "reason": str(exc)[:200]})
                    continue
                if call_id:
                    seen_calls.add(call_id)
                    yield beam.pvalue.TaggedOutput(self.NEW_CALLS, (rng.topic, rng.partition, call_id, record.offset))
                if len(chunk) >= self.chunk_events:
                    self.events.inc(len(chunk))
                    yield chunk
                    chunk = EventColumns()
        if len(chunk):
            self.events.inc(len(chunk))
            yield chunk
