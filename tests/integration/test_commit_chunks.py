"""The streaming job's commit (pipeline.commit.commit_chunks) on both real stores: per-partition outcomes
decided inside one transaction, replays and early runs writing nothing, a straddling run rolling back
every partition of its call, and the run's tallies in pipeline_runs."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from collector.columns import build_columns
from pipeline.commit import ChunkOutcome, commit_chunks
from pipeline.elements import ChunkSummary, RecordBatch, SourceRecord
from pipeline.errors import ConcurrentRunError
from pipeline.job import prepare_store
from pipeline.offsets import stored_offsets
from pipeline.settings import PipelineSettings
from pipeline.transforms import DecodedBatch, DecodeRecords, PreAggregate
from store import tables as t
from store.engine import make_engine

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

T0 = 1_700_000_040_000  # 2023-11-14 22:14 UTC
TOPIC = "t"


def event(app: str, code: int, *, ts: int = T0, rq: int = 10, rs: int = 100) -> dict:
    return {"call_index": 0, "request_timestamp_ms": ts, "api_name": "PizzaAPI", "api_version": "1.0.0",
            "api_context": "/pizza/1.0.0", "application_id": app, "application_name": f"{app}-name",
            "subscription_tier": "Gold", "application_tier": "50PerMin", "key_type": 1,
            "api_resource_template": "/menu", "api_method": "GET", "user_name": "alice", "response_code": code,
            "response_latency_ms": 10.0, "request_size_bytes": rq, "response_size_bytes": rs,
            "destination": "pizza.default.svc"}


def record(offset: int, events: list[dict] | None, call: str) -> SourceRecord:
    value = b"\xff\xff" if events is None else build_columns(events, call_id=call, producer_id="p",
                                                             produced_ms=0).SerializeToString()
    return SourceRecord(offset, call.encode(), value, None)


def summary(partition: int, start: int, records: list[SourceRecord], *, end: int | None = None,
            counted: frozenset[int] = frozenset(), pre_aggregate: bool = True) -> ChunkSummary:
    """A real decoded (and maybe pre-aggregated) summary of records ``[start, end)`` of ``partition``."""
    batch = RecordBatch(TOPIC, partition, start, start + len(records) if end is None else end, records, counted)
    decoded = [o for o in DecodeRecords().process(batch) if isinstance(o, DecodedBatch)]
    assert len(decoded) == 1
    (out,) = PreAggregate(aggregate=pre_aggregate).process(decoded[0])
    return out


def p0_run() -> list[ChunkSummary]:
    """Partition 0, [0, 5): two pre-aggregated chunks, 5 events."""
    return [summary(0, 0, [record(0, [event("app-1", 200), event("app-1", 404)], "c0"),
                           record(1, [event("app-2", 200, rs=50)], "c1"),
                           record(2, [event("app-1", 500)], "c2")]),
            summary(0, 3, [record(3, [event("app-1", 200, ts=T0 + 60_000)], "c3"),
                           record(4, [event("app-2", 200, rs=50)], "c4")])]


def p1_run() -> list[ChunkSummary]:
    """Partition 1, [10, 14): decoded chunks (not pre-aggregated), one poison record, one call already counted."""
    return [summary(1, 10, [record(10, [event("app-1", 200, rq=1)], "c10"),
                            record(11, None, "c11"),
                            record(12, [event("app-3", 404)] * 2, "c12")], counted=frozenset({12}),
                    pre_aggregate=False),
            summary(1, 13, [record(13, [event("app-3", 200, rs=7)], "c13")], pre_aggregate=False)]


def usage_totals(engine, table=t.usage_minute) -> dict:
    c = table.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.application_id, func.sum(c.requests), func.sum(c.count_4xx),
                                   func.sum(c.count_5xx), func.sum(c.request_bytes), func.sum(c.response_bytes))
                            .group_by(c.application_id))
        return {r[0]: tuple(int(v) for v in r[1:]) for r in rows}


def runs(engine) -> list[tuple]:
    r = t.pipeline_runs.c
    with engine.connect() as conn:
        rows = conn.execute(select(r.topic, r.records, r.events, r.duplicates, r.dead_letters, r.folded_requests)
                            .order_by(r.records))
        return [tuple(row) for row in rows]


def seen_calls(engine) -> list[tuple]:
    s = t.seen_batches.c
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(s.partition, s.call_id, s.record_offset)
                                                   .order_by(s.partition, s.record_offset))]


def snapshot(engine) -> tuple:
    """Everything a commit writes, to show that a refused one wrote nothing."""
    with engine.connect() as conn:
        dest = conn.execute(select(func.sum(t.usage_destination_hour.c.requests))).scalar()
        user_day = conn.execute(select(func.sum(t.usage_user_day.c.requests))).scalar()
        throttle = conn.execute(select(func.count()).select_from(t.throttle_counters)).scalar()
    return (stored_offsets(engine, TOPIC), usage_totals(engine), runs(engine), seen_calls(engine), dest, user_day,
            throttle)


FIRST_TOTALS = {  # requests, 4xx, 5xx, request bytes, response bytes
    "app-1": (5, 1, 1, 41, 500),  # p0: 4 events, p1: 1 (rq=1)
    "app-2": (2, 0, 0, 20, 100),
    "app-3": (1, 0, 0, 10, 7),  # record 12 was counted already: its 2 events are duplicates
}
FIRST_RUN_ROW = (TOPIC, 9, 8, 2, 1, 0)  # records, events, duplicates, dead letters, folded requests
FIRST_CALLS = [(0, "c0", 0), (0, "c1", 1), (0, "c2", 2), (0, "c3", 3), (0, "c4", 4), (1, "c10", 10),
               (1, "c13", 13)]


@pytest.fixture
def engine(store_url: str):
    prepare_store(PipelineSettings(store=store_url))
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


def commit_first(engine) -> None:
    assert commit_chunks(engine, [p0_run(), p1_run()]) == {0: ChunkOutcome.COMMITTED, 1: ChunkOutcome.COMMITTED}


def test_a_first_commit_lands_both_partitions_with_their_tallies(engine) -> None:
    commit_first(engine)
    assert stored_offsets(engine, TOPIC) == {0: 5, 1: 14}
    for table in t.USAGE_TABLES.values():  # every rollup holds the same totals
        assert usage_totals(engine, table) == FIRST_TOTALS, table.name
    assert runs(engine) == [FIRST_RUN_ROW]
    assert seen_calls(engine) == FIRST_CALLS
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(t.usage_destination_hour.c.requests))).scalar() == 8
        assert conn.execute(select(func.sum(t.usage_user_day.c.requests))).scalar() == 8
        minutes = conn.execute(select(t.usage_minute.c.bucket_start, func.sum(t.usage_minute.c.requests))
                               .group_by(t.usage_minute.c.bucket_start).order_by(t.usage_minute.c.bucket_start))
        assert [int(r[1]) for r in minutes] == [7, 1]  # record 3 is a minute later


def test_the_same_runs_again_are_already_committed_and_change_nothing(engine) -> None:
    commit_first(engine)
    before = snapshot(engine)
    assert commit_chunks(engine, [p0_run(), p1_run()]) == {
        0: ChunkOutcome.ALREADY_COMMITTED, 1: ChunkOutcome.ALREADY_COMMITTED}
    assert snapshot(engine) == before
    assert usage_totals(engine) == FIRST_TOTALS
    # a suffix of what was committed is a replay too
    assert commit_chunks(engine, [p0_run()[1:]]) == {0: ChunkOutcome.ALREADY_COMMITTED}
    assert snapshot(engine) == before


def test_a_run_past_the_stored_offset_is_early_writes_nothing_and_holds_back_no_other(engine) -> None:
    commit_first(engine)
    before = snapshot(engine)
    early = [summary(0, 7, [record(7, [event("app-9", 200)], "c7")])]
    assert commit_chunks(engine, [early]) == {0: ChunkOutcome.EARLY}
    assert snapshot(engine) == before
    next_p1 = [summary(1, 14, [record(14, [event("app-3", 503)], "c14")], pre_aggregate=False)]
    assert commit_chunks(engine, [early, next_p1]) == {0: ChunkOutcome.EARLY, 1: ChunkOutcome.COMMITTED}
    assert stored_offsets(engine, TOPIC) == {0: 5, 1: 15}
    assert usage_totals(engine) == {**FIRST_TOTALS, "app-3": (2, 0, 1, 20, 107)}  # app-9 was not written
    assert runs(engine) == [(TOPIC, 1, 1, 0, 0, 0), FIRST_RUN_ROW]
    assert seen_calls(engine) == [*FIRST_CALLS, (1, "c14", 14)]


def test_a_run_straddling_the_stored_offset_rolls_back_the_whole_call(engine) -> None:
    commit_first(engine)
    before = snapshot(engine)
    next_p1 = [summary(1, 14, [record(14, [event("app-3", 503)], "c14")], pre_aggregate=False)]
    straddling = [summary(0, 3, [record(3, [event("app-1", 200)], "c3"), record(4, [event("app-1", 200)], "c4"),
                                 record(5, [event("app-1", 200)], "c5")])]
    with pytest.raises(ConcurrentRunError) as err:
        commit_chunks(engine, [next_p1, straddling])  # partition 1 is accepted first, then partition 0 refused
    assert str(err.value) == "t[0] is at offset 5 in the store, inside the chunk [3, 6) read by the streaming job"
    assert err.value.retriable
    assert snapshot(engine) == before


def test_a_first_run_may_start_anywhere_and_dead_letters_only_run_moves_offsets(engine) -> None:
    """No stored offset yet: the run is the partition's first (the reader began at the earliest retained
    offset). A run of poison records only still moves the offset and is logged."""
    poison_only = [summary(2, 40, [record(40, None, "c40"), record(41, None, "c41")])]
    assert commit_chunks(engine, [poison_only]) == {2: ChunkOutcome.COMMITTED}
    assert stored_offsets(engine, TOPIC) == {2: 42}
    assert usage_totals(engine) == {}
    assert runs(engine) == [(TOPIC, 2, 0, 0, 2, 0)]
    assert seen_calls(engine) == []
