"""Landing one run's results exactly once.

The commit protocol, in this order, all inside ONE database transaction:

1. Lock the run's ``source_offsets`` rows (``SELECT ... FOR UPDATE`` on
   PostgreSQL; ``BEGIN IMMEDIATE`` holds SQLite's write lock).
2. Check that every partition's stored offset still equals the run's planned
   start. If another run got there first, abort: nothing is written.
3. Add the aggregates into the usage tables (additive upserts).
4. Record the producer calls counted by this run in ``seen_batches`` (and
   forget those older than the dedup horizon), so a call delivered twice is
   not counted again by a later run.
5. Move every partition's offset to the run's planned end.
6. Commit. Only then, outside the transaction, an advisory Kafka commit for
   lag dashboards (the store's offsets always win on restart).

A crash before step 6 leaves the store as it was, so the rerun reads the same
ranges again; a crash after it finds the offsets moved and reads on from there.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence

import apache_beam as beam
from sqlalchemy import Connection, Engine, delete, select

from pipeline.aggregate import MEASURE_NAMES, Measures, UsageKey
from pipeline.kafka_source import OffsetRange
from store.engine import make_engine
from store.tables import USAGE_KEY_COLUMNS, USAGE_MEASURE_COLUMNS, seen_batches, source_offsets, usage_minute
from store.upsert import additive_upsert, replace_upsert

log = logging.getLogger(__name__)


class ConcurrentRunError(RuntimeError):
    """Another pipeline run moved the offsets since this run was planned; it must not commit."""


def utc_from_ms(ms: int) -> dt.datetime:
    """Naive UTC datetime (the store's convention) from epoch milliseconds."""
    return dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)


def stored_offsets(engine: Engine, topic: str) -> dict[int, int]:
    """The next offset to read per partition, as committed in the store."""
    with engine.connect() as conn:
        rows = conn.execute(select(source_offsets.c.partition, source_offsets.c.next_offset)
                            .where(source_offsets.c.topic == topic))
        return {int(p): int(o) for p, o in rows}


def _lock_and_check(conn: Connection, plan: Sequence[OffsetRange]) -> None:
    topics = sorted({r.topic for r in plan})
    stmt = select(source_offsets.c.topic, source_offsets.c.partition, source_offsets.c.next_offset).where(
        source_offsets.c.topic.in_(topics))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    current = {(t, int(p)): int(o) for t, p, o in conn.execute(stmt)}
    for r in plan:
        have = current.get((r.topic, r.partition))
        if have is not None and have != r.start:
            raise ConcurrentRunError(
                f"{r.topic}[{r.partition}] is at offset {have} in the store, this run planned {r.start}")


def commit_run(engine: Engine, plan: Sequence[OffsetRange], aggregates: Iterable[tuple[UsageKey, Measures]],
               new_calls: Iterable[tuple[str, int, str, int]] = (), dedup_horizon_s: float = 3600.0) -> int:
    """Write one run's aggregates and offsets atomically (the protocol in the module docstring).

    Returns:
        The number of aggregate rows upserted.
    """
    rows = [
        {
            **dict(zip(USAGE_KEY_COLUMNS, (utc_from_ms(key[0]), *key[1:]))),
            **dict(zip(MEASURE_NAMES, measures)),
        }
        for key, measures in aggregates
    ]
    rows.sort(key=lambda r: tuple(r[k] for k in USAGE_KEY_COLUMNS))  # stable lock order on PostgreSQL
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        _lock_and_check(conn, plan)
        written = additive_upsert(conn, usage_minute, rows, key=USAGE_KEY_COLUMNS, measures=USAGE_MEASURE_COLUMNS)
        _remember_calls(conn, new_calls, now, dedup_horizon_s)
        offset_rows = [{"topic": r.topic, "partition": r.partition, "next_offset": r.end, "updated_at": now}
                       for r in plan]
        replace_upsert(conn, source_offsets, offset_rows, key=("topic", "partition"))
    return written


def _remember_calls(conn: Connection, new_calls: Iterable[tuple[str, int, str, int]], now: dt.datetime,
                    horizon_s: float) -> None:
    conn.execute(delete(seen_batches).where(seen_batches.c.committed_at < now - dt.timedelta(seconds=horizon_s)))
    rows = [{"topic": t, "partition": p, "call_id": c, "record_offset": o, "committed_at": now}
            for t, p, c, o in {(t, p, c): (t, p, c, o) for t, p, c, o in new_calls}.values()]
    replace_upsert(conn, seen_batches, rows, key=("topic", "partition", "call_id"))


class CommitRun(beam.DoFn):
    """The single element (all of the run's aggregates as a list) -> one transaction."""

    def __init__(self, store_url: str, plan: Sequence[OffsetRange], dedup_horizon_s: float = 3600.0) -> None:
        self.store_url = store_url
        self.plan = list(plan)
        self.dedup_horizon_s = dedup_horizon_s
        self._engine: Engine | None = None

    def setup(self) -> None:
        self._engine = make_engine(self.store_url)

    def teardown(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def process(self, aggregates: list[tuple[UsageKey, Measures]],
                new_calls: list[tuple[str, int, str, int]]) -> Iterable[int]:
        assert self._engine is not None
        yield commit_run(self._engine, self.plan, aggregates, new_calls, self.dedup_horizon_s)
