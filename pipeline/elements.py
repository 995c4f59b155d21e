"""What flows between the pipeline's steps: raw record batches, chunk summaries, dead letters.

The same element types serve the bounded run (``--once``, ``--follow``) and the
streaming job (``--streaming``), so both are built from the same composite
transforms (pipeline.transforms). Every element covers a contiguous offset range
``[start, end)`` of one partition: that range is what the store's commit guard
checks, so a summary can only ever be committed once, and only in offset order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from pipeline.aggregate import Partial, empty_partial, merge
from pipeline.errors import DeadLetterCode


class SourceRecord(NamedTuple):
    """One Kafka record as the readers hand it on (kafka-python's ConsumerRecord has these fields)."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None


@dataclass
class RecordBatch:
    """Records ``[start, end)`` of one partition, as read (the I/O side's output, the decoder's input).

    ``counted`` holds the offsets of records whose call id the store (or this
    reader, earlier) has already counted: a producer call delivered twice. The
    decoder still decodes them, to count their events as duplicates. A batch
    with no records and ``start == end`` is a heartbeat: it tells the commit step
    that the reader is alive at ``start`` with nothing new.
    """

    topic: str
    partition: int
    start: int
    end: int
    records: list = field(default_factory=list)  # of SourceRecord (or kafka-python's ConsumerRecord)
    counted: frozenset[int] = frozenset()
    read_at: float = 0.0  # wall clock when the batch's last record was read (freshness metrics)


class DeadRecord(NamedTuple):
    """A record that cannot be counted, with where it was and why (``code``: a
    :class:`~pipeline.errors.DeadLetterCode`, set where the poison was found)."""

    topic: str
    partition: int
    offset: int
    reason: str
    key: bytes | None
    value: bytes | None
    code: str = DeadLetterCode.UNDECODABLE_RECORD


@dataclass
class ChunkSummary:
    """Pre-aggregated ``[start, end)`` of one partition: everything its commit needs.

    Summaries of adjacent ranges of a partition add up (:meth:`merge`) to the
    summary of their union, so the commit step may land several at once.
    """

    topic: str
    partition: int
    start: int
    end: int
    partial: Partial | None = None
    new_calls: list[tuple[str, int, str, int]] = field(default_factory=list)  # (topic, partition, call, offset)
    records: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    read_at: float = 0.0

    @property
    def events(self) -> int:
        return self.partial.events if self.partial is not None else 0

    @staticmethod
    def merge(summaries: Iterable[ChunkSummary]) -> ChunkSummary:
        """Adjacent summaries of one partition, in offset order -> their union's summary."""
        parts = list(summaries)
        first, last = parts[0], parts[-1]
        partials = [s.partial for s in parts if s.partial is not None and s.partial.events]
        return ChunkSummary(
            topic=first.topic, partition=first.partition, start=first.start, end=last.end,
            partial=merge(partials) if partials else empty_partial(),
            new_calls=[c for s in parts for c in s.new_calls], records=sum(s.records for s in parts),
            duplicates=sum(s.duplicates for s in parts), dead_letters=sum(s.dead_letters for s in parts),
            read_at=max(s.read_at for s in parts))


@dataclass(frozen=True)
class DeadLettersWritten:
    """The dead-letter step's acknowledgement: the dead records of ``[start, end)`` are on their topic.

    The commit of a range with dead records waits for it, so a crash between
    the two can only copy a dead letter twice, never lose one.
    """

    topic: str
    partition: int
    start: int
    end: int
    count: int
