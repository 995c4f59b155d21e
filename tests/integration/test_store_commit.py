"""The commit protocol on both real stores: order-free merges, offsets in the
same transaction, a stale run refused without writing anything, and every
companion table written with the facts."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from collector.columns import build_columns
from pipeline.aggregate import RunFacts, aggregate_chunk, empty_partial, finish
from pipeline.commit import ConcurrentRunError, admitted_resources, commit_run
from pipeline.decode import ChunkBuilder
from pipeline.offsets import OffsetRange, stored_offsets
from store import tables as t
from store.engine import create_schema, make_engine

pytestmark = pytest.mark.integration

T0 = 1_700_000_040_000  # 2023-11-14 22:14 UTC


def event(app: str, code: int, *, ts: int = T0, latency: float = 10.0, rq: int = 10, rs: int = 100,
          resource: str = "/menu", user: str = "alice", throttled: bool = False) -> dict:
    return {"call_index": 0, "request_timestamp_ms": ts, "api_name": "PizzaAPI", "api_version": "1.0.0",
            "api_context": "/pizza/1.0.0", "application_id": app, "application_name": f"{app}-name",
            "subscription_tier": "Gold" if app != "anonymous" else "Unauthenticated", "application_tier": "50PerMin",
            "key_type": 1, "api_resource_template": resource, "api_method": "GET", "user_name": user,
            "response_code": code, "response_latency_ms": latency, "request_size_bytes": rq,
            "response_size_bytes": rs, "destination": "pizza.default.svc", "throttled_out": throttled}


def facts(events: list[dict], admitted: dict | None = None, max_resources: int = 0) -> RunFacts:
    builder = ChunkBuilder()
    builder.add(build_columns(events, call_id="c", producer_id="p").SerializeToString())
    builder.accept()
    return finish(aggregate_chunk(builder.take()), admitted or {}, max_resources)


def totals(engine, table=t.usage_minute) -> dict:
    c = table.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.application_id, func.sum(c.requests), func.sum(c.count_4xx),
                                   func.sum(c.response_bytes)).group_by(c.application_id))
        return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def test_runs_add_up_and_offsets_move_with_them(store_url: str) -> None:
    engine = make_engine(store_url)
    create_schema(engine)
    plan1 = [OffsetRange("t", 0, 0, 10), OffsetRange("t", 2, 5, 8)]
    commit_run(engine, plan1, facts([event("app-1", 200), event("app-1", 404), event("app-1", 200),
                                     event("anonymous", 200, rs=50)]))
    assert stored_offsets(engine, "t") == {0: 10, 2: 8}
    plan2 = [OffsetRange("t", 0, 10, 12)]
    commit_run(engine, plan2, facts([event("app-1", 200), event("app-1", 500)]))
    assert stored_offsets(engine, "t") == {0: 12, 2: 8}
    for table in t.USAGE_TABLES.values():  # every rollup holds the same totals
        assert totals(engine, table) == {"app-1": (5, 1, 500), "anonymous": (1, 0, 50)}
    engine.dispose()


def test_min_max_and_latest_names_merge_in_any_order(store_url: str) -> None:
    engine = make_engine(store_url)
    create_schema(engine)
    later = dict(event("app-1", 200, ts=T0 + 5_000, latency=3.0), application_name="renamed")
    commit_run(engine, [OffsetRange("t", 0, 0, 1)], facts([later]))
    commit_run(engine, [OffsetRange("t", 0, 1, 2)], facts([event("app-1", 200, latency=250.5)]))
    with engine.connect() as conn:
        row = conn.execute(select(t.usage_minute)).one()
        app = conn.execute(select(t.application_catalog)).one()
        last = conn.execute(select(t.api_last_access)).one()
    assert (row.requests, row.latency_min_us, row.latency_max_us, row.latency_sum_us) == (2, 3000, 250500, 253500)
    assert (app.application_name, app.first_seen, app.last_seen) == (
        "renamed", dt.datetime(2023, 11, 14, 22, 14), dt.datetime(2023, 11, 14, 22, 14, 5))
    assert last.last_access == dt.datetime(2023, 11, 14, 22, 14, 5)
    engine.dispose()


def test_a_stale_run_is_refused_and_writes_nothing(store_url: str) -> None:
    engine = make_engine(store_url)
    create_schema(engine)
    plan = [OffsetRange("t", 0, 0, 10)]
    commit_run(engine, plan, facts([event("app-1", 200)] * 3))
    with pytest.raises(ConcurrentRunError, match=r"t\[0\] is at offset 10"):
        commit_run(engine, plan, facts([event("app-1", 200)] * 3))
    assert totals(engine) == {"app-1": (3, 0, 300)}
    assert stored_offsets(engine, "t") == {0: 10}
    engine.dispose()


def test_an_empty_run_still_moves_offsets(store_url: str) -> None:
    """A range holding only undecodable records must not be read again."""
    engine = make_engine(store_url)
    create_schema(engine)
    commit_run(engine, [OffsetRange("t", 1, 0, 4)], finish(empty_partial(), {}, 0))
    assert stored_offsets(engine, "t") == {1: 4}
    assert totals(engine) == {}
    engine.dispose()


def test_the_cardinality_guard_folds_resources_past_the_cap(store_url: str) -> None:
    engine = make_engine(store_url)
    create_schema(engine)
    first = [event("app-1", 200, resource=f"/r{i}") for i in range(3)]
    commit_run(engine, [OffsetRange("t", 0, 0, 1)], facts(first, admitted_resources(engine), max_resources=4))
    second = [event("app-1", 200, resource=f"/r{i}") for i in range(6)] * 2
    commit_run(engine, [OffsetRange("t", 0, 1, 2)], facts(second, admitted_resources(engine), max_resources=4))
    assert admitted_resources(engine) == {("PizzaAPI", "1.0.0"): frozenset({"/r0", "/r1", "/r2", "/r3"})}
    with engine.connect() as conn:
        by_resource = dict(conn.execute(select(t.usage_day.c.resource_template, func.sum(t.usage_day.c.requests))
                                        .group_by(t.usage_day.c.resource_template)).all())
        folded = conn.execute(select(func.sum(t.resource_folds.c.folded_requests))).scalar()
        runs = conn.execute(select(t.pipeline_runs.c.folded_requests).order_by(t.pipeline_runs.c.committed_at)).all()
    assert by_resource == {"/r0": 3, "/r1": 3, "/r2": 3, "/r3": 2, "other": 4}
    assert folded == 4
    assert sorted(r[0] for r in runs) == [0, 4]
    engine.dispose()


def test_throttle_counters_and_decisions_land_with_the_facts(store_url: str) -> None:
    engine = make_engine(store_url)
    create_schema(engine)
    events = [event("app-1", 200, user=f"u{i % 2}") for i in range(30)] + [event("app-1", 429, throttled=True)]
    commit_run(engine, [OffsetRange("t", 0, 0, 1)], facts(events))
    with engine.connect() as conn:
        counters = {(r.level, r.throttle_key): r.requests for r in conn.execute(select(t.throttle_counters))}
        decisions = {(r.level, r.throttle_key): (r.policy, r.used, r.quota, r.throttled, r.near_limit)
                     for r in conn.execute(select(t.throttle_decisions))}
    assert counters == {("subscription", "app-1:/pizza/1.0.0:1.0.0"): 30, ("application", "app-1:u0"): 15,
                        ("application", "app-1:u1"): 15}
    assert decisions == {("subscription", "app-1:/pizza/1.0.0:1.0.0"): ("Gold", 30, 5000, False, False),
                         ("application", "app-1:u0"): ("50PerMin", 15, 50, False, False),
                         ("application", "app-1:u1"): ("50PerMin", 15, 50, False, False)}
    engine.dispose()


def test_bulk_merges_and_sqlalchemy_writes_share_one_row_per_key(store_url: str) -> None:
    """The bulk path formats keys (datetimes on SQLite) exactly as SQLAlchemy does, so they conflict."""
    engine = make_engine(store_url)
    create_schema(engine)
    dims = {"api_name": "PizzaAPI", "api_version": "1.0.0", "api_context": "/pizza/1.0.0", "application_id": "app-1",
            "tier": "Gold", "key_type": "PRODUCTION", "resource_template": "/menu", "method": "GET"}
    minute = dt.datetime(2023, 11, 14, 22, 14)
    with engine.begin() as conn:
        conn.execute(t.usage_minute.insert(), [{**dims, "bucket_start": minute, "requests": 5,
                                                "latency_min_us": 1, "latency_max_us": 2}])
    commit_run(engine, [OffsetRange("t", 0, 0, 1)], facts([event("app-1", 200)]))
    with engine.connect() as conn:
        rows = conn.execute(select(t.usage_minute.c.bucket_start, t.usage_minute.c.requests)).all()
        stored = conn.exec_driver_sql("select bucket_start from usage_minute").scalars().all()
    assert rows == [(minute, 6)]
    assert len(stored) == 1
    engine.dispose()
