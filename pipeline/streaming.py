"""The streaming graph: every partition read without end, committed per partition in offset order.

    Tick (PeriodicImpulse) -> ListPartitions -> FirstSighting (stateful, per partition)
      -> ReadPartition (unbounded splittable DoFn)          : RecordBatches
      -> DecodeAndPreAggregate (pipeline.transforms)        : ChunkSummaries + dead_letters
      -> WriteDeadLetters                                   : DeadLettersWritten
      -> KeyByPartition, Flatten -> CommitChunks (stateful) : one store transaction per partition chunk

The store stays the only source of truth for offsets. ReadPartition's
restriction is an offset range of its partition, which Flink checkpoints; on
each resumption that does not continue where this reader left off (a new job, a
restore from a checkpoint, a reader moved to another worker), it reads the
partition's offset from the store and starts from there when the store is ahead.
CommitChunks holds a partition's chunks in state until they are due (at least
every ``--commit-interval`` while events flow), lands the contiguous run that
starts at the store's offset in one transaction (pipeline.commit.commit_chunk),
and keeps out-of-order chunks until their predecessors arrive. So after any
crash and restart nothing is counted twice or lost, and a ``--once`` run may
take its turn on the same store between two streaming jobs.

Dead letters: a chunk with poison records is committed only after the
dead-letter step acknowledged their copies (at least once, as in bounded runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.restriction_trackers import OffsetRange as Restriction
from apache_beam.io.restriction_trackers import OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.periodicsequence import PeriodicImpulse
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import Duration
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from sqlalchemy import Engine

from core.errors import ApimError
from core.kafka_errors import translate_kafka
from pipeline.commit import ChunkOutcome, commit_chunks
from pipeline.dead_letters import WriteDeadLetters
from pipeline.elements import ChunkSummary, DeadLettersWritten, RecordBatch
from pipeline.kafka_source import counted_calls, mark_counted
from pipeline.offsets import BOOTSTRAP_TIMEOUT_MS, stored_offsets
from pipeline.settings import PipelineSettings
from pipeline.transforms import DEAD_LETTERS, DecodeAndPreAggregate

log = logging.getLogger(__name__)

#: Set by the driver on SIGTERM. Seen only by workers in the driver's process (LOOPBACK): readers stop
#: reading and the commit step lands what was read at once. Elsewhere the job is stopped through Flink.
DRAIN = threading.Event()
#: Per (topic, partition): the offset after the last record a reader in this process emitted (LOOPBACK:
#: the driver waits, when draining, until the store's offsets reach these).
READ_POSITIONS: dict[tuple[str, int], int] = {}
_POSITIONS_LOCK = threading.Lock()

END_OF_TIME = 2 ** 63 - 1
MAX_RECORDS_PER_BATCH = 20_000


@dataclass(frozen=True, order=True)
class PartitionToRead:
    topic: str
    partition: int


class ListPartitions(beam.DoFn):
    """A tick -> every partition of the topic (new partitions are picked up at the next tick)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._consumer: KafkaConsumer | None = None

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()

    def process(self, _tick: object) -> Iterator[tuple[str, PartitionToRead]]:
        try:
            if self._consumer is None:
                self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                               enable_auto_commit=False, client_id="apim-pipeline-partitions",
                                               bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
            self._consumer.topics()  # a metadata round trip: partitions_for_topic alone answers from its cache
            partitions = self._consumer.partitions_for_topic(self.topic) or set()
        except (KafkaError, OSError) as exc:  # the next tick tries again; readers already started go on
            log.warning("listing partitions failed", extra={"topic": self.topic, "error": str(exc)[:200]})
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
            return
        for p in sorted(partitions):
            yield f"{self.topic}/{p}", PartitionToRead(self.topic, p)


class FirstSighting(beam.DoFn):
    """(key, partition) -> the partition, the first time it is seen: one reader per partition."""

    SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())

    def process(self, keyed: tuple[str, PartitionToRead], seen=beam.DoFn.StateParam(SEEN)
                ) -> Iterator[PartitionToRead]:
        if not seen.read():
            seen.write(True)
            log.info("reading partition", extra={"topic": keyed[1].topic, "partition": keyed[1].partition})
            yield keyed[1]


class _WholePartition(RestrictionProvider):
    """A partition's restriction: its offsets from 0 without end; never split up front."""

    def initial_restriction(self, element: PartitionToRead) -> Restriction:
        return Restriction(0, END_OF_TIME)

    def create_tracker(self, restriction: Restriction) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, element: PartitionToRead, restriction: Restriction) -> Iterator[Restriction]:
        yield restriction

    def restriction_size(self, element: PartitionToRead, restriction: Restriction) -> float:
        return 1.0

    def truncate(self, element: PartitionToRead, restriction: Restriction) -> None:
        return None  # on drain, an unbounded partition has nothing left to read


class ReadPartition(beam.DoFn):
    """PartitionToRead -> RecordBatches, forever: what has arrived since the last call, then a short pause.

    Each call reads what is there (up to MAX_RECORDS_PER_BATCH records), claims
    every record's offset, emits one batch and defers the rest of the partition
    by ``idle_s`` when it found nothing. With nothing to read it emits an empty
    batch (a heartbeat) every ``commit_interval_s``, so the commit step lands
    chunks it holds even when the traffic stops.
    """

    def __init__(self, bootstrap: str, store_url: str, dedup_horizon_s: float, commit_interval_s: float,
                 idle_s: float = 0.1, poll_timeout_ms: int = 50) -> None:
        #: after a batch, the pause before the next read: what arrives meanwhile makes one chunk
        self.read_every_s = min(0.5, commit_interval_s / 2)
        self.bootstrap = bootstrap
        self.store_url = store_url
        self.dedup_horizon_s = dedup_horizon_s
        self.commit_interval_s = commit_interval_s
        self.idle_s = idle_s
        self.poll_timeout_ms = poll_timeout_ms
        self._consumers: dict[PartitionToRead, KafkaConsumer] = {}
        self._expect: dict[PartitionToRead, int] = {}  # the restriction start a call that continues has
        self._next: dict[PartitionToRead, int] = {}  # the offset that call reads from
        self._seen: dict[PartitionToRead, set[str]] = {}
        self._last_emit: dict[PartitionToRead, float] = {}
        self._engine: Engine | None = None

    def setup(self) -> None:
        from store.engine import make_engine

        self._engine = make_engine(self.store_url, readonly=True)

    def teardown(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._consumers.clear()
        if self._engine is not None:
            self._engine.dispose()

    def _consumer(self, part: PartitionToRead) -> KafkaConsumer:
        consumer = self._consumers.get(part)
        if consumer is None:
            consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                     auto_offset_reset="earliest", max_partition_fetch_bytes=16 << 20,
                                     fetch_max_bytes=64 << 20, client_id="apim-pipeline-stream-reader",
                                     bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
            consumer.assign([TopicPartition(part.topic, part.partition)])
            self._consumers[part] = consumer
        return consumer

    def _start_position(self, part: PartitionToRead, restriction_start: int, consumer: KafkaConsumer) -> int:
        """Where to read from when this reader does not simply continue: the store's offset (the truth),
        else the earliest retained offset, but never before what the restriction has claimed."""
        assert self._engine is not None  # setup() ran
        stored = stored_offsets(self._engine, part.topic).get(part.partition)
        tp = TopicPartition(part.topic, part.partition)
        if stored is None:
            stored = consumer.beginning_offsets([tp])[tp]
        position = max(restriction_start, stored)
        consumer.seek(tp, position)
        self._seen[part] = counted_calls(self._engine, part.topic, part.partition, self.dedup_horizon_s)
        log.info("partition reader positioned", extra={"topic": part.topic, "partition": part.partition,
                                                         "offset": position, "store_offset": stored})
        return position

    @beam.DoFn.unbounded_per_element()
    def process(self, part: PartitionToRead, tracker=beam.DoFn.RestrictionParam(_WholePartition())
                ) -> Iterator[RecordBatch]:
        restriction = tracker.current_restriction()
        if DRAIN.is_set():
            yield from self._heartbeat(part, restriction.start, force=True)
            tracker.defer_remainder(Duration.of(0.2))
            return
        try:
            consumer = self._consumer(part)
            if self._expect.get(part) == restriction.start:
                position = self._next[part]
            else:
                position = self._start_position(part, restriction.start, consumer)
            tp = TopicPartition(part.topic, part.partition)
            records = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=MAX_RECORDS_PER_BATCH).get(tp, [])
        except (KafkaError, OSError) as exc:
            self._forget(part)
            error = translate_kafka(exc, bootstrap=self.bootstrap, topic=part.topic, doing="reading from")
            log.warning("reading failed; trying again", extra={"partition": part.partition,
                                                             "error": error.one_line()[:300]})
            tracker.defer_remainder(Duration.of(1.0))
            return
        claimed = []
        for r in records:
            if r.offset < position:
                continue
            if not tracker.try_claim(r.offset):  # the runner split the restriction here: the rest is its residual
                break
            claimed.append(r)
        if claimed:
            end = claimed[-1].offset + 1
            self._expect[part] = self._next[part] = end
            with _POSITIONS_LOCK:
                READ_POSITIONS[(part.topic, part.partition)] = end
            self._last_emit[part] = time.monotonic()
            yield RecordBatch(part.topic, part.partition, position, end, claimed,
                              mark_counted(claimed, self._seen.setdefault(part, set())), read_at=time.time())
            if len(claimed) < len(records):
                self._forget(part)  # the records after the split point belong to the residual's reader
                return
            # a full batch: more is waiting, read on at once; else gather for a while (fewer, larger chunks)
            tracker.defer_remainder(Duration.of(0 if len(records) >= MAX_RECORDS_PER_BATCH else self.read_every_s))
            return
        self._expect[part], self._next[part] = restriction.start, position
        yield from self._heartbeat(part, position)
        tracker.defer_remainder(Duration.of(self.idle_s))

    def _heartbeat(self, part: PartitionToRead, position: int, force: bool = False) -> Iterator[RecordBatch]:
        now = time.monotonic()
        if force or now - self._last_emit.get(part, 0.0) >= self.commit_interval_s:
            self._last_emit[part] = now
            yield RecordBatch(part.topic, part.partition, position, position, read_at=time.time())

    def _forget(self, part: PartitionToRead) -> None:
        """Drop what this reader knows of ``part``: the next call positions itself from the store again."""
        self._expect.pop(part, None)
        consumer = self._consumers.pop(part, None)
        if consumer is not None:
            consumer.close()


@dataclass(frozen=True)
class Committed:
    """CommitChunks' output: what landed (for tests and metrics)."""

    topic: str
    partition: int
    start: int
    end: int
    events: int
    read_at: float
    committed_at: float


class CommitChunks(beam.DoFn):
    """(commit group key, ChunkSummary | DeadLettersWritten) -> one store transaction per due set of chunks.

    State per commit group (KeyByCommitGroup): the chunks read but not yet committed, the dead-letter
    acknowledgements, and when the oldest chunk arrived. Chunks are due once
    the oldest has waited ``commit_interval_s`` (or at once when draining, or
    when they hold ``max_pending_events``). A store that is away is retried
    here, with a backoff, rather than failing the job: nothing is committed
    until it answers, and reading waits behind this step.
    """

    PENDING = BagStateSpec("pending", PickleCoder())
    ACKS = BagStateSpec("acks", PickleCoder())
    #: (when the oldest pending chunk arrived, events pending): read on every element, unlike the bag
    DUE = ReadModifyWriteStateSpec("due", PickleCoder())

    def __init__(self, settings: PipelineSettings, commit_interval_s: float,
                 max_pending_events: int = 500_000) -> None:
        self.settings = settings
        self.commit_interval_s = commit_interval_s
        self.max_pending_events = max_pending_events
        self._engine: Engine | None = None

    def setup(self) -> None:
        from store.engine import make_engine

        self._engine = make_engine(self.settings.store)

    def teardown(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def process(self, keyed: tuple[str, ChunkSummary | DeadLettersWritten],
                pending=beam.DoFn.StateParam(PENDING), acks=beam.DoFn.StateParam(ACKS),
                due=beam.DoFn.StateParam(DUE)) -> Iterator[Committed]:
        _, item = keyed
        now = time.time()
        since, events = due.read() or (None, 0)
        if isinstance(item, DeadLettersWritten):
            acks.add(item)
        elif item.end > item.start:
            pending.add(item)
            since, events = since or now, events + item.events
            due.write((since, events))
        if since is None:
            return
        if not (now - since >= self.commit_interval_s or DRAIN.is_set() or events >= self.max_pending_events):
            return
        chunks = sorted(pending.read(), key=lambda c: (c.partition, c.start))
        known_acks = list(acks.read())
        left, committed = self._commit_due(chunks, {(a.partition, a.start, a.end) for a in known_acks})
        pending.clear()
        for c in left:
            pending.add(c)
        landed = {c.partition: c.end for c in committed}
        if landed:  # an acknowledgement is kept until its chunk is committed (it may come first)
            acks.clear()
            for a in known_acks:
                if a.start >= landed.get(a.partition, -1):
                    acks.add(a)
        due.write((now, sum(c.events for c in left)) if left else None)
        yield from committed

    def _commit_due(self, chunks: list[ChunkSummary], acked: set[tuple[int, int, int]]
                    ) -> tuple[list[ChunkSummary], list[Committed]]:
        """Commit, per partition, the contiguous acknowledged run at the store's offset, all in one transaction;
        return what is left and what landed."""
        topic = chunks[0].topic
        engine = self._engine
        assert engine is not None  # setup() ran
        stored = self._with_retries(lambda: stored_offsets(engine, topic))
        runs: dict[int, list[ChunkSummary]] = {}
        left: list[ChunkSummary] = []
        for partition in sorted({c.partition for c in chunks}):
            mine = [c for c in chunks if c.partition == partition and c.end > stored.get(partition, -1)]
            expected = stored.get(partition, mine[0].start if mine else 0)
            run: list[ChunkSummary] = []
            for c in mine:
                if c.start != expected or (c.dead_letters and (c.partition, c.start, c.end) not in acked):
                    break
                run.append(c)
                expected = c.end
            if run:
                runs[partition] = run
            left += mine[len(run):]
        if not runs:
            if left:
                log.info("chunks wait for earlier ones", extra={"topic": topic, "store_offsets": stored,
                                                                 "waiting": len(left)})
            return left, []
        outcomes = self._with_retries(lambda: commit_chunks(
            engine, list(runs.values()), max_resources_per_api=self.settings.max_resources_per_api,
            dedup_horizon_s=self.settings.dedup_horizon_s, near_limit_ratio=self.settings.near_limit_ratio))
        now = time.time()
        done = []
        for partition, run in runs.items():
            outcome = outcomes[partition]
            start, end = run[0].start, run[-1].end
            if outcome == ChunkOutcome.COMMITTED:
                done.append(Committed(topic, partition, start, end, sum(c.events for c in run),
                                      max(c.read_at for c in run), now))
            elif outcome == ChunkOutcome.EARLY:
                left += run
            else:
                log.warning("chunks already committed", extra={"partition": partition, "start": start, "end": end})
        if done:
            log.debug("chunks committed", extra={"topic": topic, "partitions": len(done),
                                                 "events": sum(d.events for d in done),
                                                 "read_to_commit_s": round(now - min(d.read_at for d in done), 3)})
        return sorted(left, key=lambda c: (c.partition, c.start)), done

    def _with_retries(self, step):
        """Retry a retriable store error (PostgreSQL restarting) with a backoff; anything else fails the bundle."""
        delay = 0.5
        while True:
            try:
                return step()
            except ApimError as exc:
                if not exc.retriable:
                    raise
                log.error("commit failed; retrying", extra={"retry_in_s": delay, "error": exc.one_line()[:300]})
                time.sleep(delay)
                delay = min(delay * 2, 10.0)


class KeyByCommitGroup(beam.DoFn):
    """Key chunks and acknowledgements by commit group: the partition modulo ``groups``.

    One group is one stateful key, so a group's partitions commit together, in
    one transaction (pipeline.commit.commit_chunks says why), and groups commit
    in parallel on a runner with several workers.
    """

    def __init__(self, groups: int) -> None:
        self.groups = groups

    def process(self, item: ChunkSummary | DeadLettersWritten
                ) -> Iterator[tuple[str, ChunkSummary | DeadLettersWritten]]:
        yield f"{item.topic}/{item.partition % self.groups}", item


def build_streaming_pipeline(p: beam.Pipeline, settings: PipelineSettings, commit_interval_s: float,
                             partition_discovery_s: float = 10.0) -> beam.PCollection:
    """The streaming job's graph (module docstring); every step is labelled."""
    batches = (
        p
        | "Tick" >> PeriodicImpulse(fire_interval=partition_discovery_s)
        | "ListPartitions" >> beam.ParDo(ListPartitions(settings.kafka, settings.topic))
        | "FirstSighting" >> beam.ParDo(FirstSighting())
        | "ReadPartition" >> beam.ParDo(ReadPartition(settings.kafka, settings.store, settings.dedup_horizon_s,
                                                      commit_interval_s))
    )
    # not pre-aggregated per batch: the commit step groups a commit's worth of small chunks at once
    decoded = batches | "Decode" >> DecodeAndPreAggregate(settings.chunk_events, pre_aggregate=False)
    written = decoded[DEAD_LETTERS] | "WriteDeadLetters" >> beam.ParDo(
        WriteDeadLetters(settings.kafka, settings.dead_letter_topic))
    summaries = decoded["summaries"] | "KeySummaries" >> beam.ParDo(KeyByCommitGroup(settings.commit_groups))
    acks = written | "KeyAcks" >> beam.ParDo(KeyByCommitGroup(settings.commit_groups))
    return ((summaries, acks) | "JoinByPartition" >> beam.Flatten()
            | "CommitChunks" >> beam.ParDo(CommitChunks(settings, commit_interval_s)))
