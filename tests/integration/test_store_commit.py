"""The commit protocol on both real stores: additive upserts, offsets in the
same transaction, and a stale run refused without writing anything."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from pipeline.commit import ConcurrentRunError, commit_run, stored_offsets
from pipeline.kafka_source import OffsetRange
from store.engine import create_schema, make_engine
from store.tables import usage_minute

pytestmark = pytest.mark.integration

KEY_A = (1_700_000_040_000, "PizzaAPI", "1.0.0", "app-1", "Gold")
KEY_B = (1_700_000_100_000, "PizzaAPI", "1.0.0", "anonymous", "Unauthenticated")


def _totals(engine) -> dict:  # type: ignore[no-untyped-def]
    t = usage_minute.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.application_id, func.sum(t.requests), func.sum(t.count_4xx),
                                   func.sum(t.response_bytes)).group_by(t.application_id))
        return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def test_runs_add_up_and_offsets_move_with_them(store_url: str) -> None:
    engine = make_engine(store_url)
    create_schema(engine)
    plan1 = [OffsetRange("t", 0, 0, 10), OffsetRange("t", 2, 5, 8)]
    commit_run(engine, plan1, [(KEY_A, (3, 2, 0, 1, 0, 30, 300)), (KEY_B, (1, 1, 0, 0, 0, 0, 50))])
    assert stored_offsets(engine, "t") == {0: 10, 2: 8}
    plan2 = [OffsetRange("t", 0, 10, 12)]
    commit_run(engine, plan2, [(KEY_A, (2, 1, 0, 1, 0, 20, 200))])
    assert stored_offsets(engine, "t") == {0: 12, 2: 8}
    assert _totals(engine) == {"app-1": (5, 2, 500), "anonymous": (1, 0, 50)}
    engine.dispose()


def test_a_stale_run_is_refused_and_writes_nothing(store_url: str) -> None:
    engine = make_engine(store_url)
    create_schema(engine)
    plan = [OffsetRange("t", 0, 0, 10)]
    commit_run(engine, plan, [(KEY_A, (3, 3, 0, 0, 0, 0, 0))])
    with pytest.raises(ConcurrentRunError, match=r"t\[0\] is at offset 10"):
        commit_run(engine, plan, [(KEY_A, (3, 3, 0, 0, 0, 0, 0))])
    assert _totals(engine) == {"app-1": (3, 0, 0)}
    assert stored_offsets(engine, "t") == {0: 10}
    engine.dispose()


def test_an_empty_run_still_moves_offsets(store_url: str) -> None:
    """A range holding only undecodable records must not be read again."""
    engine = make_engine(store_url)
    create_schema(engine)
    commit_run(engine, [OffsetRange("t", 1, 0, 4)], [])
    assert stored_offsets(engine, "t") == {1: 4}
    assert _totals(engine) == {}
    engine.dispose()
