"""Range readers: ``[start, end)`` of one partition with kafka-python or confluent-kafka, and the
pool that keeps them between the runs of one process.

No Beam here: the driver turns pooling on and off around its loop (pipeline.job) without importing
the graph, and pipeline.kafka_source's DoFn takes its readers from the pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import cast

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from core.kafka_errors import KAFKA_HINT, KafkaUnavailable, kafka_place, translate_kafka
from pipeline.elements import SourceRecord
from pipeline.offsets import BOOTSTRAP_TIMEOUT_MS, OffsetRange

log = logging.getLogger(__name__)


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
