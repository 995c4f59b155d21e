"""Where a run reads: the offsets the store committed, what waits on Kafka after them, and the
run's ranges within its record budget.

Kept apart from the Beam graph (pipeline.bounded) and the commit (pipeline.commit), which need Beam
and pandas: a ``--once`` run that finds nothing to read plans with this module, the store and a Kafka
consumer only, and never imports them (2.1 CPU-s for apache_beam alone on this machine).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import Engine, select

from store import tables as t

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


def run_id(plan: Sequence[OffsetRange]) -> str:
    """A run's identity: the digest of its planned ranges (a replay of the same ranges has the same id)."""
    text = ";".join(f"{r.topic}/{r.partition}/{r.start}/{r.end}" for r in sorted(plan))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def stored_offsets(engine: Engine, topic: str) -> dict[int, int]:
    """The next offset to read per partition, as committed in the store."""
    with engine.connect() as conn:
        rows = conn.execute(select(t.source_offsets.c.partition, t.source_offsets.c.next_offset)
                            .where(t.source_offsets.c.topic == topic))
        return {int(p): int(o) for p, o in rows}
