"""A pure-Python bounded Kafka source: explicit offset ranges per partition.

Beam's ``ReadFromKafka`` needs Java and a Java SDK harness (docs/kafka-and-beam.md section 1);
this source needs neither. The driver fixes each run's bounds before anything
is read (:func:`waiting_ranges`, :func:`share_budget`), so a retried run reads exactly the same records,
and :class:`ReadRanges` reads one ``[start, end)`` range per element with
kafka-python (or confluent-kafka) and emits the records a fetch returned as one
:class:`~pipeline.elements.RecordBatch`: a Beam element is a fetch, never an event.
Decoding and aggregation follow in pipeline.transforms, without I/O.

The Kafka clients' errors are translated where they are called (constructing a
consumer, fetching) into :mod:`core.kafka_errors` types naming the bootstrap
servers and the topic; :class:`~core.kafka_errors.KafkaUnavailable` is retriable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import apache_beam as beam
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from core.kafka_errors import KAFKA_HINT, KafkaUnavailable, kafka_place, translate_kafka
from pipeline.elements import RecordBatch, SourceRecord

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

#: How long a new kafka-python client tries to reach a bootstrap server (its default is 30 s):
#: an unreachable broker fails a run in seconds, and the run is retried (pipeline.job).
BOOTSTRAP_TIMEOUT_MS = 2500


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


def waiting_ranges(consumer: KafkaConsumer, topic: str, stored: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """Per partition with records waiting: ``(start, end)`` from the stored offset (the earliest retained
    offset for a partition never seen) to the high-water mark. One metadata round per run."""
    partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        return {}
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    ends = consumer.end_offsets(tps)
    begins = consumer.beginning_offsets(tps)
    waiting: dict[int, tuple[int, int]] = {}
    for tp in tps:
        start = max(stored.get(tp.partition, begins[tp]), begins[tp])
        if ends[tp] > start:
            waiting[tp.partition] = (start, ends[tp])
    return waiting


def share_budget(topic: str, waiting: Mapping[int, tuple[int, int]], max_records: int) -> list[OffsetRange]:
    """Fix this run's bounds within the record budget.

    The budget is shared fairly: each partition with a backlog gets an equal
    share, and what a small backlog leaves unused goes to the others.
    """
    budget = max_records
    plan: list[OffsetRange] = []
    pending = sorted(waiting.items(), key=lambda kv: kv[1][1] - kv[1][0])
    for i, (partition, (start, end)) in enumerate(pending):
        share = budget // (len(pending) - i)
        take = min(end - start, max(share, 1 if budget > 0 else 0))
        if take > 0:
            plan.append(OffsetRange(topic, partition, start, start + take))
            budget -= take
    return sorted(plan)


def _starved(bootstrap: str, rng: OffsetRange, position: int, polls: int) -> KafkaUnavailable:
    """A range that stopped yielding records before its end: the broker is away or the data is gone."""
    return KafkaUnavailable(f"{kafka_place(bootstrap, rng.topic)}: no records from partition {rng.partition} at "
                            f"offset {position} after {polls} polls (range ends at {rng.end})", hint=KAFKA_HINT)


class KafkaPythonRanges:
    """Reads ``[start, end)`` of one partition with kafka-python (the default: pure Python, no native code)."""

    def __init__(self, bootstrap: str, poll_timeout_ms: int = 1000, max_idle_polls: int = 30) -> None:
        self.bootstrap = bootstrap
        self.poll_timeout_ms = poll_timeout_ms
        self.max_idle_polls = max_idle_polls
        try:
            self._consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                           auto_offset_reset="earliest", max_partition_fetch_bytes=16 << 20,
                                           fetch_max_bytes=64 << 20, client_id="apim-pipeline-reader",
                                           bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
        except (KafkaError, OSError) as exc:
            raise translate_kafka(exc, bootstrap=bootstrap, doing="connecting to") from exc

    def read(self, rng: OffsetRange) -> Iterator[list]:  # of ConsumerRecord, which has SourceRecord's fields
        """The range's records, in batches.

        Raises:
            KafkaUnavailable: Kafka is away, or the range's records do not arrive (retriable).
            core.kafka_errors.KafkaRefused: Kafka refuses the fetch (authorization, ...).
        """
        consumer = self._consumer
        tp = TopicPartition(rng.topic, rng.partition)
        try:
            consumer.assign([tp])
            consumer.seek(tp, rng.start)
            idle = 0
            while consumer.position(tp) < rng.end:
                records = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=20_000).get(tp, [])
                if not records:
                    idle += 1
                    if idle > self.max_idle_polls:
                        raise _starved(self.bootstrap, rng, consumer.position(tp), idle)
                    time.sleep(0.01)
                    continue
                idle = 0
                # kafka-python's ConsumerRecords have the SourceRecord fields: passed through, not copied
                yield records if records[-1].offset < rng.end else [r for r in records if r.offset < rng.end]
        except (KafkaError, OSError) as exc:
            raise translate_kafka(exc, bootstrap=self.bootstrap, topic=rng.topic, doing="reading from") from exc

    def close(self) -> None:
        self._consumer.close()


class ConfluentRanges:
    """Reads ``[start, end)`` with confluent-kafka (librdkafka): optional, much less CPU per record."""

    def __init__(self, bootstrap: str, poll_timeout_ms: int = 1000, max_idle_polls: int = 30) -> None:
        from confluent_kafka import Consumer, KafkaException

        self.bootstrap = bootstrap
        self.poll_timeout_s = poll_timeout_ms / 1000
        self.max_idle_polls = max_idle_polls
        try:
            self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "apim-pipeline-reader",
                                       "enable.auto.commit": False, "enable.partition.eof": False,
                                       "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20,
                                       "client.id": "apim-pipeline-reader"})
        except KafkaException as exc:
            raise translate_kafka(exc, bootstrap=bootstrap, doing="connecting to") from exc

    def read(self, rng: OffsetRange) -> Iterator[list[SourceRecord]]:
        """The range's records, in batches (raises like :meth:`KafkaPythonRanges.read`)."""
        from confluent_kafka import KafkaException
        from confluent_kafka import TopicPartition as CTopicPartition

        position, idle = rng.start, 0
        try:
            self._consumer.assign([CTopicPartition(rng.topic, rng.partition, rng.start)])
            while position < rng.end:
                # never ask for more than the range holds: consume() waits for the full count or the timeout
                messages = self._consumer.consume(num_messages=max(1, min(20_000, rng.end - position)),
                                                  timeout=self.poll_timeout_s)
                batch = []
                for m in messages:
                    if m.error() is not None:  # a KafkaError: translated by its code, like a raised one
                        raise KafkaException(m.error())
                    offset = cast(int, m.offset())  # a consumed message always has one
                    position = offset + 1
                    if offset < rng.end:
                        batch.append(SourceRecord(offset, m.key(), m.value(),
                                                  cast("list[tuple[str, bytes]] | None", m.headers())))
                if not messages:
                    idle += 1
                    if idle > self.max_idle_polls:
                        raise _starved(self.bootstrap, rng, position, idle)
                    continue
                idle = 0
                yield batch
        except KafkaException as exc:
            raise translate_kafka(exc, bootstrap=self.bootstrap, topic=rng.topic, doing="reading from") from exc
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        self._consumer.close()


KAFKA_CLIENTS: dict[str, type[KafkaPythonRanges] | type[ConfluentRanges]] = {
    "kafka-python": KafkaPythonRanges, "confluent": ConfluentRanges}

_IDLE_READERS: dict[tuple[str, str, int, int], list[KafkaPythonRanges | ConfluentRanges]] = {}
_IDLE_LOCK = threading.Lock()
_MAX_IDLE_PER_KEY = 4
_POOLING = False


def pool_readers(enabled: bool) -> None:
    """Keep readers between runs (``pipeline.job.run`` turns this on for its loop) or, by default and
    on leaving, close them: an idle client left in a process keeps connections and logs when its
    broker goes away."""
    global _POOLING
    with _IDLE_LOCK:
        _POOLING = enabled
        idle = [] if enabled else [r for readers in _IDLE_READERS.values() for r in readers]
        if not enabled:
            _IDLE_READERS.clear()
    for reader in idle:
        reader.close()


def take_reader(client: str, bootstrap: str, poll_timeout_ms: int, max_idle_polls: int
                ) -> KafkaPythonRanges | ConfluentRanges:
    """A range reader for this broker, reusing one a finished run gave back.

    Why: in follow mode every run is a new Beam pipeline with new DoFn instances; a new consumer
    costs a bootstrap and metadata round trips, which is most of a small run's reading time. A
    reader holds no state between ranges (each read assigns and seeks), so reusing it is safe.
    Per process: on a distributed runner each worker process keeps its own.
    """
    key = (client, bootstrap, poll_timeout_ms, max_idle_polls)
    with _IDLE_LOCK:
        idle = _IDLE_READERS.get(key)
        if idle:
            return idle.pop()
    return KAFKA_CLIENTS[client](bootstrap, poll_timeout_ms, max_idle_polls)


def give_back_reader(client: str, bootstrap: str, poll_timeout_ms: int, max_idle_polls: int,
                     reader: KafkaPythonRanges | ConfluentRanges) -> None:
    """Keep ``reader`` for the next run (a few per broker; beyond that it is closed)."""
    key = (client, bootstrap, poll_timeout_ms, max_idle_polls)
    with _IDLE_LOCK:
        idle = _IDLE_READERS.setdefault(key, [])
        if _POOLING and len(idle) < _MAX_IDLE_PER_KEY:
            idle.append(reader)
            return
    reader.close()


class ReadRanges(beam.DoFn):
    """OffsetRange -> RecordBatches covering it exactly, one per fetch, in offset order.

    A producer call delivered twice (a timed-out send that arrived after all,
    plus its spooled copy; a collector replaying its spool after a crash) has
    the same call id, which is the record key, on the same partition. The
    reader marks a record ``counted`` when its key was counted in this range
    or, within the dedup horizon, by an earlier commit (the store's
    ``seen_batches``); the decoder then counts its events as duplicates.
    """

    def __init__(self, bootstrap: str, store_url: str = "", dedup_horizon_s: float = 3600.0,
                 poll_timeout_ms: int = 1000, max_idle_polls: int = 30, kafka_client: str = "kafka-python") -> None:
        self.bootstrap = bootstrap
        self.kafka_client = kafka_client
        self.store_url = store_url
        self.dedup_horizon_s = dedup_horizon_s
        self.poll_timeout_ms = poll_timeout_ms
        self.max_idle_polls = max_idle_polls
        self._reader: KafkaPythonRanges | ConfluentRanges | None = None
        self._engine: Engine | None = None

    def setup(self) -> None:
        self._reader = take_reader(self.kafka_client, self.bootstrap, self.poll_timeout_ms, self.max_idle_polls)
        if self.store_url:
            from store.engine import make_engine

            self._engine = make_engine(self.store_url, readonly=True)

    def teardown(self) -> None:
        if self._reader is not None:
            give_back_reader(self.kafka_client, self.bootstrap, self.poll_timeout_ms, self.max_idle_polls,
                             self._reader)
            self._reader = None
        if self._engine is not None:
            self._engine.dispose()

    def process(self, rng: OffsetRange) -> Iterator[RecordBatch]:
        assert self._reader is not None, "setup() not called"
        seen = counted_calls(self._engine, rng.topic, rng.partition, self.dedup_horizon_s) if self._engine else set()
        position = rng.start
        for records in self._reader.read(rng):
            end = records[-1].offset + 1
            yield RecordBatch(rng.topic, rng.partition, position, end, records, mark_counted(records, seen),
                              read_at=time.time())
            position = end
        if position < rng.end:  # the range ends in offsets that hold no record (transaction markers, compaction)
            yield RecordBatch(rng.topic, rng.partition, position, rng.end, read_at=time.time())


def counted_calls(engine: Engine, topic: str, partition: int, horizon_s: float) -> set[str]:
    """Call ids the store counted on this partition within the dedup horizon."""
    import datetime as dt

    from sqlalchemy import select

    from store.tables import seen_batches

    since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=horizon_s)
    t = seen_batches.c
    with engine.connect() as conn:
        return {row[0] for row in conn.execute(
            select(t.call_id).where(t.topic == topic, t.partition == partition, t.committed_at >= since))}


def mark_counted(records: list, seen: set[str]) -> frozenset[int]:
    """Offsets of ``records`` whose key (the producer's call id) is in ``seen``; the others' keys join it."""
    counted = []
    for r in records:
        if not r.key:
            continue
        call = r.key.decode("utf-8", "replace")
        if call in seen:
            counted.append(r.offset)
        else:
            seen.add(call)
    return frozenset(counted)
