"""The pipeline's logic as composite transforms: no I/O, so TestPipeline can run them on plain data.

:class:`DecodeAndPreAggregate` turns :class:`~pipeline.elements.RecordBatch` elements
into one :class:`~pipeline.elements.ChunkSummary` per batch, and poison records
into a tagged ``dead_letters`` output (one :class:`DeadBatch` per batch that has
any) for a step of their own to write. The bounded run and the streaming job
both apply it between their reader and their commit.

Decoding and pre-aggregating are two labelled steps; Beam fuses them, so the
numpy chunk between them is handed over in memory, never encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from core.record_format import USAGE_RECORD_SCHEMA
from pipeline.aggregate import aggregate_chunk, empty_partial, merge
from pipeline.builders import new_builder
from pipeline.decode import Chunk
from pipeline.elements import ChunkSummary, DeadRecord, RecordBatch
from pipeline.errors import DeadLetterCode, PoisonRecord

log = logging.getLogger(__name__)

DEAD_LETTERS = "dead_letters"
#: Event ids remembered per partition by one decoder (producers that set event ids; the collector does not).
MAX_REMEMBERED_EVENT_IDS = 1_000_000


@dataclass
class DeadBatch:
    """The poison records of one RecordBatch, with the batch's range (the commit waits for their copy)."""

    topic: str
    partition: int
    start: int
    end: int
    records: list[DeadRecord]


@dataclass
class DecodedBatch:
    """A RecordBatch decoded: numpy chunks of the events to count, and the batch's tallies."""

    batch: RecordBatch
    chunks: list[tuple[Chunk, np.ndarray | None]]  # each with its keep mask (None: keep every event)
    new_calls: list[tuple[str, int, str, int]]
    duplicates: int
    dead_letters: int


def check_schema(headers: list[tuple[str, bytes]] | None) -> None:
    """Records name their format in the ``schema`` header; a record without one is tried as the current format."""
    for name, value in headers or ():
        if name == "schema" and value != USAGE_RECORD_SCHEMA:
            raise PoisonRecord(f"unknown schema {value[:80]!r}; expected {USAGE_RECORD_SCHEMA.decode()}",
                               code=DeadLetterCode.UNKNOWN_SCHEMA)


def keep_first_event_ids(chunk: Chunk, seen: set[str]) -> np.ndarray | None:
    """For producers that set event ids: drop events whose id was already counted.

    The collector leaves ``event_id`` empty (an event's id is its call id plus
    its index, and calls are deduplicated whole), so this is the slow path.
    """
    codes, values = chunk.strings["event_id"]
    present = np.flatnonzero(codes)
    if not len(present):
        return None
    keep = np.ones(chunk.n, bool)
    for i in present:
        eid = values[codes[i]]
        if eid in seen:
            keep[i] = False
        else:
            seen.add(eid)
    return keep


class DecodeRecords(beam.DoFn):
    """RecordBatch -> DecodedBatch, plus a DeadBatch on the ``dead_letters`` output when a record is poison.

    A record whose offset the reader marked ``counted`` is decoded only to
    count its events as duplicates. Event ids (set by some producers) are
    remembered per partition by this decoder, up to MAX_REMEMBERED_EVENT_IDS.
    """

    def __init__(self, chunk_events: int = 200_000) -> None:
        self.chunk_events = chunk_events
        self.poison = Metrics.counter(self.__class__, "undecodable_records")
        self._event_ids: dict[tuple[str, int], set[str]] = {}

    def process(self, batch: RecordBatch) -> Iterator:
        seen_events = self._event_ids.setdefault((batch.topic, batch.partition), set())
        if len(seen_events) > MAX_REMEMBERED_EVENT_IDS:
            seen_events.clear()
        builder = new_builder()
        chunks: list[Chunk] = []
        new_calls: list[tuple[str, int, str, int]] = []
        dead: list[DeadRecord] = []
        duplicates = 0
        for record in batch.records:
            try:
                check_schema(record.headers)
                count, call_id = builder.add(record.value)
            except PoisonRecord as exc:
                self.poison.inc()
                log.warning("record sent to the dead-letter topic",
                            extra={"topic": batch.topic, "partition": batch.partition, "offset": record.offset,
                                   "reason": str(exc)[:200]})
                dead.append(DeadRecord(batch.topic, batch.partition, record.offset, str(exc)[:500], record.key,
                                       record.value, exc.code))
                continue
            if record.offset in batch.counted:
                duplicates += count
                continue
            builder.accept()
            call = record.key.decode("utf-8", "replace") if record.key else call_id
            if call:
                new_calls.append((batch.topic, batch.partition, call, record.offset))
            if builder.n >= self.chunk_events:
                chunks.append(builder.take())
        if builder.n:
            chunks.append(builder.take())
        kept = []
        for chunk in chunks:
            keep = keep_first_event_ids(chunk, seen_events)
            if keep is not None:
                duplicates += int(chunk.n - keep.sum())
            kept.append((chunk, keep))
        if dead:
            yield pvalue.TaggedOutput(DEAD_LETTERS, DeadBatch(batch.topic, batch.partition, batch.start, batch.end,
                                                              dead))
        yield DecodedBatch(batch, kept, new_calls, duplicates, len(dead))


class PreAggregate(beam.DoFn):
    """DecodedBatch -> ChunkSummary: each chunk grouped with numpy into a Partial, partials merged.

    With ``aggregate=False`` the summary carries the decoded chunks instead, for a later step to
    aggregate several summaries' chunks at once (pipeline.aggregate.aggregate_chunks).
    """

    def __init__(self, aggregate: bool = True) -> None:
        self.aggregate = aggregate
        self.events = Metrics.counter(self.__class__, "events_decoded")
        self.duplicates = Metrics.counter(self.__class__, "duplicate_events")
        self.records = Metrics.counter(self.__class__, "records_read")

    def process(self, decoded: DecodedBatch) -> Iterator[ChunkSummary]:
        batch = decoded.batch
        summary = ChunkSummary(topic=batch.topic, partition=batch.partition, start=batch.start, end=batch.end,
                               new_calls=decoded.new_calls, records=len(batch.records),
                               duplicates=decoded.duplicates, dead_letters=decoded.dead_letters,
                               read_at=batch.read_at)
        if self.aggregate:
            partials = [aggregate_chunk(chunk, keep) for chunk, keep in decoded.chunks]
            summary.partial = merge(partials) if partials else empty_partial()
        else:
            summary.chunks = [(chunk, keep) for chunk, keep in decoded.chunks if chunk.n]
        self.events.inc(summary.events)
        self.duplicates.inc(decoded.duplicates)
        self.records.inc(len(batch.records))
        yield summary


class DecodeAndPreAggregate(beam.PTransform):
    """RecordBatches -> ChunkSummaries (main output) and DeadBatches (``dead_letters``).

    ``pre_aggregate=False`` (the streaming job): summaries carry decoded chunks, aggregated later a
    commit's worth at a time, since grouping a small chunk costs tens of milliseconds whatever its size.

    Returns a dict: ``result["summaries"]`` and ``result["dead_letters"]``.
    """

    def __init__(self, chunk_events: int = 200_000, pre_aggregate: bool = True) -> None:
        super().__init__()
        self.chunk_events = chunk_events
        self.pre_aggregate = pre_aggregate

    def expand(self, batches: beam.PCollection) -> dict[str, beam.PCollection]:
        decoded = batches | "Decode" >> beam.ParDo(DecodeRecords(self.chunk_events)).with_outputs(
            DEAD_LETTERS, main="decoded")
        summaries = decoded.decoded | "PreAggregate" >> beam.ParDo(PreAggregate(self.pre_aggregate))
        return {"summaries": summaries, DEAD_LETTERS: decoded[DEAD_LETTERS]}
