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
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import apache_beam as beam

from pipeline.elements import RecordBatch
from pipeline.offsets import OffsetRange
from pipeline.readers import ConfluentRanges, KafkaPythonRanges, give_back_reader, take_reader

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger(__name__)

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
