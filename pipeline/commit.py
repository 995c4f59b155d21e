"""Landing one run's results exactly once.

The commit protocol, in this order, all inside ONE database transaction:

1. Lock the run's ``source_offsets`` rows (``SELECT ... FOR UPDATE`` on
   PostgreSQL; ``BEGIN IMMEDIATE`` holds SQLite's write lock).
2. Check that every partition's stored offset still equals the run's planned
   start. If another run got there first, abort: nothing is written.
3. Merge the facts into every analytics table (sums added, minima/maxima
   kept), the catalogs, the cardinality guard's tables, and the throttle
   counters and decisions.
4. Record the producer calls counted by this run in ``seen_batches`` (and
   forget those older than the dedup horizon), so a call delivered twice is
   not counted again by a later run.
5. Move every partition's offset to the run's planned end, and log the run in
   ``pipeline_runs``.
6. Commit. Only then, outside the transaction, an advisory Kafka commit:
   the store's offsets are copied to the consumer group ``--consumer-group``
   for lag tools (pipeline.group_offsets; job.CommitRun calls it). It is never
   read back, and a failure is only logged: the store's offsets are the truth.

A crash before step 6 leaves the store as it was, so the rerun reads the same
ranges again; a crash after it finds the offsets moved and reads on from there.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, delete, select

from pipeline.aggregate import RunFacts, aggregate_chunks, empty_partial, finish, merge
from pipeline.elements import ChunkSummary
from pipeline.errors import ConcurrentRunError
from pipeline.offsets import OffsetRange, run_id
from store import tables as t
from store.throttle import ThrottleCount, apply_counts
from store.upsert import merge_columns, merge_upsert, replace_upsert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunCounts:
    """What the run read, for the ``pipeline_runs`` audit row."""

    records: int = 0
    duplicates: int = 0
    dead_letters: int = 0


def utc_from_ms(ms: int) -> dt.datetime:
    """Naive UTC datetime (the store's convention) from epoch milliseconds."""
    return dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=int(ms))


def admitted_resources(engine: Engine | Connection) -> dict[tuple[str, str], frozenset[str]]:
    """The cardinality guard's state: resources admitted per (api, version)."""
    if isinstance(engine, Engine):
        with engine.connect() as conn:
            return admitted_resources(conn)
    c = t.api_resources.c
    out: dict[tuple[str, str], set[str]] = {}
    for api, version, resource in engine.execute(select(c.api_name, c.api_version, c.resource_template)):
        out.setdefault((api, version), set()).add(resource)
    return {k: frozenset(v) for k, v in out.items()}


def _lock_and_check(conn: Connection, plan: Sequence[OffsetRange]) -> None:
    so = t.source_offsets
    topics = sorted({r.topic for r in plan})
    stmt = select(so.c.topic, so.c.partition, so.c.next_offset).where(so.c.topic.in_(topics))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    current = {(tp, int(p)): int(o) for tp, p, o in conn.execute(stmt)}
    for r in plan:
        have = current.get((r.topic, r.partition))
        if have is not None and have != r.start:
            raise ConcurrentRunError(
                f"{r.topic}[{r.partition}] is at offset {have} in the store, this run planned {r.start}")


def _columns(frame: pd.DataFrame, key: Sequence[str], times: Sequence[str] = ("bucket_ms",),
             rename: dict[str, str] | None = None) -> dict[str, list]:
    """A frame as plain-Python columns for :func:`merge_columns`: epoch-ms columns become naive UTC
    datetimes, rows sorted by key (a stable lock order on PostgreSQL)."""
    if not len(frame):
        return {}
    frame = frame.rename(columns={"bucket_ms": "bucket_start", **(rename or {})})
    times = [{"bucket_ms": "bucket_start", **(rename or {})}.get(c, c) for c in times]
    frame = frame.sort_values(list(key), kind="stable")
    out: dict[str, list] = {}
    for name in frame.columns:
        values = frame[name].to_numpy()
        if name in times:
            values = values.astype(np.int64).astype("datetime64[ms]").astype(object)
        out[name] = values.tolist()
    return out


def write_facts(conn: Connection, facts: RunFacts, *, now: dt.datetime, near_limit_ratio: float) -> int:
    """Step 3 of the protocol: every fact table, in the caller's transaction. Returns rows written."""
    written = 0
    for granularity, frame in facts.usage.items():
        written += merge_columns(conn, t.USAGE_TABLES[granularity], _columns(frame, t.USAGE_KEY_COLUMNS),
                                 key=t.USAGE_KEY_COLUMNS, sums=t.USAGE_SUM_COLUMNS, mins=t.USAGE_MIN_COLUMNS,
                                 maxs=t.USAGE_MAX_COLUMNS)
    written += merge_columns(conn, t.usage_app_day, _columns(facts.app_day, t.USAGE_APP_KEY_COLUMNS),
                             key=t.USAGE_APP_KEY_COLUMNS, sums=t.USAGE_SUM_COLUMNS, mins=t.USAGE_MIN_COLUMNS,
                             maxs=t.USAGE_MAX_COLUMNS)
    written += merge_columns(conn, t.usage_user_day, _columns(facts.user_day, t.USER_DAY_KEY_COLUMNS),
                             key=t.USER_DAY_KEY_COLUMNS, sums=t.USER_DAY_SUM_COLUMNS)
    dest_key = ("bucket_start", *t.DESTINATION_DIMENSIONS)
    for granularity, frame in facts.destination.items():
        written += merge_columns(conn, t.DESTINATION_TABLES[granularity], _columns(frame, dest_key), key=dest_key,
                                 sums=t.DESTINATION_SUM_COLUMNS)
    api_key = ("api_name", "api_version")
    written += merge_columns(conn, t.api_last_access,
                             _columns(facts.last_access, api_key, ("last_ms",), {"last_ms": "last_access"}),
                             key=api_key, maxs=("last_access",), latest=("api_context",), latest_by="last_access")
    catalog_times = ("first_ms", "last_ms")
    catalog_names = {"first_ms": "first_seen", "last_ms": "last_seen"}
    written += merge_columns(conn, t.api_catalog, _columns(facts.apis, api_key, catalog_times, catalog_names),
                             key=api_key, mins=("first_seen",), maxs=("last_seen",),
                             latest=("api_context", "api_id", "api_creator", "api_creator_tenant_domain"))
    written += merge_columns(conn, t.application_catalog,
                             _columns(facts.applications, ("application_id",), catalog_times, catalog_names),
                             key=("application_id",), mins=("first_seen",), maxs=("last_seen",),
                             latest=("application_name", "application_owner", "application_tier"))
    admitted = [{"api_name": a, "api_version": v, "resource_template": r, "first_seen": now}
                for (a, v), resources in sorted(facts.admitted.items()) for r in sorted(resources)]
    written += merge_upsert(conn, t.api_resources, admitted, key=("api_name", "api_version", "resource_template"),
                            mins=("first_seen",))
    fold_key = ("bucket_start", "api_name", "api_version")
    written += merge_columns(conn, t.resource_folds, _columns(facts.folds, fold_key), key=fold_key,
                             sums=("folded_requests",))
    counts = [ThrottleCount(level, key, policy, utc_from_ms(ms), int(req), int(nbytes))
              for level, key, policy, ms, req, nbytes in facts.throttle[
                  ["level", "throttle_key", "policy", "bucket_ms", "requests", "bytes"]].itertuples(index=False)]
    written += apply_counts(conn, counts, now=now, near_limit_ratio=near_limit_ratio)
    return written


def commit_run(engine: Engine, plan: Sequence[OffsetRange], facts: RunFacts,
               new_calls: Iterable[tuple[str, int, str, int]] = (), counts: RunCounts = RunCounts(), *,
               dedup_horizon_s: float = 3600.0, near_limit_ratio: float = 0.8) -> int:
    """Write one run's facts and offsets atomically (the protocol in the module docstring).

    Returns:
        The number of fact rows upserted.
    """
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with engine.begin() as conn:
        _lock_and_check(conn, plan)
        return _land(conn, plan, facts, new_calls, counts, now=now, dedup_horizon_s=dedup_horizon_s,
                     near_limit_ratio=near_limit_ratio)


def _land(conn: Connection, plan: Sequence[OffsetRange], facts: RunFacts,
          new_calls: Iterable[tuple[str, int, str, int]], counts: RunCounts, *, now: dt.datetime,
          dedup_horizon_s: float, near_limit_ratio: float) -> int:
    """Steps 3-5 of the protocol, once the guard has passed: facts, counted calls, the plan's offsets and
    the run log, in the caller's transaction. Returns the fact rows upserted."""
    written = write_facts(conn, facts, now=now, near_limit_ratio=near_limit_ratio)
    _remember_calls(conn, new_calls, now, dedup_horizon_s)
    offset_rows = [{"topic": r.topic, "partition": r.partition, "next_offset": r.end, "updated_at": now}
                   for r in sorted(plan)]
    replace_upsert(conn, t.source_offsets, offset_rows, key=("topic", "partition"))
    replace_upsert(conn, t.pipeline_runs, [{
        "run_id": run_id(plan), "topic": plan[0].topic if plan else "", "committed_at": now,
        "records": counts.records, "events": facts.events, "duplicates": counts.duplicates,
        "dead_letters": counts.dead_letters, "folded_requests": facts.folded_requests, "fact_rows": written,
    }], key=("run_id",))
    return written


class ChunkOutcome:
    """What :func:`commit_chunk` did with a partition's chunk."""

    COMMITTED = "committed"
    ALREADY_COMMITTED = "already_committed"  # a replay: the store's offset is at or past its end
    EARLY = "early"  # it starts past the store's offset: an earlier chunk has not been committed yet


def commit_chunks(engine: Engine, runs: Sequence[Sequence[ChunkSummary]], *, max_resources_per_api: int = 200,
                  dedup_horizon_s: float = 3600.0, near_limit_ratio: float = 0.8) -> dict[int, str]:
    """The streaming job's commit: for each of some partitions of a topic, a run of adjacent chunks (in offset
    order), all in ONE transaction. A run is treated as one chunk ``[first start, last end)``.

    The protocol of :func:`commit_run`, with the guard deciding per partition
    inside the transaction (so a ``--once`` run taking its turn cannot slip in
    between): a chunk that starts at its partition's stored offset is written
    (:data:`ChunkOutcome.COMMITTED`); one that ends at or before it is a
    replay and is left out; one that starts after it waits
    (:data:`ChunkOutcome.EARLY`). One that straddles the stored offset cannot
    be split, since its events are aggregated: ConcurrentRunError (retriable:
    the job's reader restarts from the store's offset).

    Why several partitions per transaction: a transaction's fixed cost (finishing
    the rollups, one upsert per fact table) is about 0.3 CPU-s on this stack, so
    one per partition per second would not keep up with six partitions on two cores.

    Returns:
        The outcome per partition.
    """
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    so = t.source_offsets
    chunks = [ChunkSummary(topic=r[0].topic, partition=r[0].partition, start=r[0].start, end=r[-1].end,
                           new_calls=[c for s in r for c in s.new_calls], records=sum(s.records for s in r),
                           duplicates=sum(s.duplicates for s in r), dead_letters=sum(s.dead_letters for s in r))
              for r in runs]
    partials_of = {r[0].partition: [s.partial for s in r if s.partial is not None and s.partial.events] for r in runs}
    decoded_of = {r[0].partition: [c for s in r for c in s.chunks] for r in runs}
    topic = chunks[0].topic
    outcomes: dict[int, str] = {}
    with engine.begin() as conn:
        stmt = select(so.c.partition, so.c.next_offset).where(so.c.topic == topic,
                                                              so.c.partition.in_([c.partition for c in chunks]))
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        stored = {int(p): int(o) for p, o in conn.execute(stmt)}
        accepted = []
        for c in chunks:
            have = stored.get(c.partition)
            if have is None or have == c.start:
                accepted.append(c)
                outcomes[c.partition] = ChunkOutcome.COMMITTED
            elif have >= c.end:
                outcomes[c.partition] = ChunkOutcome.ALREADY_COMMITTED
            elif have < c.start:
                outcomes[c.partition] = ChunkOutcome.EARLY
            else:
                raise ConcurrentRunError(f"{topic}[{c.partition}] is at offset {have} in the store, inside the "
                                         f"chunk [{c.start}, {c.end}) read by the streaming job")
        if not accepted:
            return outcomes
        partials = [p for c in accepted for p in partials_of[c.partition]]
        decoded = [d for c in accepted for d in decoded_of[c.partition]]
        if decoded:
            partials.append(aggregate_chunks(decoded))
        facts = finish(merge(partials) if partials else empty_partial(), admitted_resources(conn),
                       max_resources_per_api)
        _land(conn, [OffsetRange(topic, c.partition, c.start, c.end) for c in accepted], facts,
              [call for c in accepted for call in c.new_calls],
              RunCounts(records=sum(c.records for c in accepted), duplicates=sum(c.duplicates for c in accepted),
                        dead_letters=sum(c.dead_letters for c in accepted)),
              now=now, dedup_horizon_s=dedup_horizon_s, near_limit_ratio=near_limit_ratio)
    return outcomes


def _remember_calls(conn: Connection, new_calls: Iterable[tuple[str, int, str, int]], now: dt.datetime,
                    horizon_s: float) -> None:
    sb = t.seen_batches
    conn.execute(delete(sb).where(sb.c.committed_at < now - dt.timedelta(seconds=horizon_s)))
    calls = sorted({(tp, p, c): o for tp, p, c, o in new_calls}.items())
    if not calls:
        return
    merge_columns(conn, sb, {"topic": [k[0] for k, _ in calls], "partition": [k[1] for k, _ in calls],
                             "call_id": [k[2] for k, _ in calls], "record_offset": [o for _, o in calls],
                             "committed_at": [now] * len(calls)},
                  key=("topic", "partition", "call_id"), replace=("record_offset", "committed_at"))
