"""What flows between the pipeline's steps: raw record batches, chunk summaries, dead letters.

The same element types serve the bounded run (``--once``, ``--follow``) and the
streaming job (``--streaming``), so both are built from the same composite
transforms (pipeline.transforms). Every element covers a contiguous offset range
``[start, end)`` of one partition: that range is what the store's commit guard
checks, so a summary can only ever be committed once, and only in offset order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from pipeline.errors import DeadLetterCode

if TYPE_CHECKING:
    from pipeline.aggregate import Partial  # pandas: not for the readers and the planner


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

    Summaries of adjacent ranges of a partition add up to the summary of their
    union, so the commit step may land several at once (pipeline.commit.commit_chunks).
    """

    topic: str
    partition: int
    start: int
    end: int
    partial: Partial | None = None
    #: decoded but not yet aggregated events, each chunk with its keep mask (the streaming job aggregates a
    #: commit's chunks at once: pipeline.transforms.DecodeAndPreAggregate(pre_aggregate=False))
    chunks: list = field(default_factory=list)
    new_calls: list[tuple[str, int, str, int]] = field(default_factory=list)  # (topic, partition, call, offset)
    records: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    read_at: float = 0.0

    @property
    def events(self) -> int:
        pending = sum(c.n if keep is None else int(keep.sum()) for c, keep in self.chunks)
        return (self.partial.events if self.partial is not None else 0) + pending


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
