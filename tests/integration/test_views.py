"""The analyst views (store/views.py, revision 0002_analyst_views) on SQLite and PostgreSQL.

Each view is read after inserting a few fact rows by hand; the expected rows
are written out literally and must be returned exactly, with the same Python
values and types on both databases.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, insert, inspect, select, text

from apim_analytics.cli import main
from store import migrate
from store.engine import create_schema, make_engine
from store.tables import (
    USAGE_MAX_COLUMNS,
    USAGE_MIN_COLUMNS,
    USAGE_SUM_COLUMNS,
    application_catalog,
    usage_day,
    usage_month,
)
from store.views import HISTOGRAM_COLUMNS, VIEWS, view_table

pytestmark = pytest.mark.integration

D1, D2 = datetime(2026, 3, 1), datetime(2026, 3, 2)
M1 = datetime(2026, 3, 1)
SEEN = datetime(2026, 3, 1, 12, 0)
ZERO_HIST = dict.fromkeys(HISTOGRAM_COLUMNS, 0)
# executemany needs the same keys in every row: every measure, 0 unless given
ZERO_MEASURES = dict.fromkeys((*USAGE_SUM_COLUMNS, *USAGE_MIN_COLUMNS, *USAGE_MAX_COLUMNS), 0)


@pytest.fixture(autouse=True)
def _fresh_cli_logging() -> Iterator[None]:
    """As in test_migrations.py: drop main()'s stderr handler bound to this test's capsys."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_apim", False)]:
        root.removeHandler(handler)


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    eng = make_engine(store_url)
    create_schema(eng)
    try:
        yield eng
    finally:
        eng.dispose()


def _fact(bucket: datetime, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"bucket_start": bucket, "api_name": "pizza", "api_version": "1.0",
                           "api_context": "/pizza/1.0", "application_id": "app1", "tier": "Gold",
                           "key_type": "PRODUCTION", "resource_template": "/menu", "method": "GET", **ZERO_MEASURES}
    row.update(values)
    return row


def _rows(engine: Engine, name: str) -> list[tuple[Any, ...]]:
    view = view_table(name)
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(select(view)))


DAY_ROWS = [
    # two resources of one (day, api, tier, application): summed in every view that drops resource
    _fact(D1, requests=10, count_2xx=7, count_4xx=2, count_5xx=1, faults=0, throttled_out=0, request_bytes=100,
          response_bytes=1000, latency_sum_us=50_000, latency_min_us=1_000, latency_max_us=9_000,
          lat_b00=4, lat_b10=6),
    _fact(D1, resource_template="/order", method="POST", requests=5, count_2xx=3, count_4xx=1, count_5xx=0,
          faults=1, throttled_out=2, request_bytes=50, response_bytes=500, latency_sum_us=25_001,
          latency_min_us=2_500, latency_max_us=12_345, lat_b10=3, lat_b56=2),
    # same day and resource, another application and tier: no faults, no throttling
    _fact(D1, application_id="app2", tier="Silver", requests=4, count_2xx=4, latency_sum_us=4_000,
          latency_min_us=500, latency_max_us=1_500, lat_b00=4),
    # another day, another key type and context for app1: merged with nothing else
    _fact(D2, key_type="SANDBOX", api_context="/pizza", requests=3, count_2xx=0, count_5xx=3, faults=0,
          throttled_out=3, latency_sum_us=3_000_000, latency_min_us=900_000, latency_max_us=1_100_000, lat_b56=3),
]

MONTH_ROWS = [
    _fact(M1, requests=15, count_2xx=10, count_4xx=3, count_5xx=1, throttled_out=2),
    _fact(M1, resource_template="/order", requests=5, count_2xx=1, count_4xx=1, count_5xx=2, throttled_out=1),
    _fact(M1, application_id="ghost", requests=2, count_2xx=2),  # not in application_catalog
    _fact(M1, api_version="2.0", requests=1, count_2xx=1),
]

CATALOG_ROWS = [
    {"application_id": "app1", "application_name": "Pizza App", "application_owner": "alice",
     "application_tier": "Unlimited", "first_seen": SEEN, "last_seen": SEEN},
    {"application_id": "app2", "application_name": "Other App", "application_owner": "bob",
     "application_tier": "Unlimited", "first_seen": SEEN, "last_seen": SEEN},
]


@pytest.fixture
def filled(engine: Engine) -> Engine:
    with engine.begin() as conn:
        conn.execute(insert(usage_day), DAY_ROWS)
        conn.execute(insert(usage_month), MONTH_ROWS)
        conn.execute(insert(application_catalog), CATALOG_ROWS)
    return engine


def test_views_exist_and_are_not_tables(engine: Engine) -> None:
    with engine.connect() as conn:
        insp = inspect(conn)
        assert set(insp.get_view_names()) == {v.name for v in VIEWS}
        assert not set(insp.get_table_names()) & {v.name for v in VIEWS}


def test_view_columns_are_the_documented_ones(engine: Engine) -> None:
    with engine.connect() as conn:
        for view in VIEWS:
            result = conn.execute(text(f"SELECT * FROM {view.name}"))
            assert list(result.keys()) == list(view.columns), view.name
            assert all(meaning for meaning in view.columns.values())


def test_usage_by_api_tier_day(filled: Engine) -> None:
    # day, api, version, tier, requests, 2xx, 4xx, 5xx, throttled_out, faults, request_bytes, response_bytes
    assert _rows(filled, "v_usage_by_api_tier_day") == [
        (D1, "pizza", "1.0", "Gold", 15, 10, 3, 1, 2, 1, 150, 1500),
        (D1, "pizza", "1.0", "Silver", 4, 4, 0, 0, 0, 0, 0, 0),
        (D2, "pizza", "1.0", "Gold", 3, 0, 0, 3, 3, 0, 0, 0),
    ]


def test_usage_by_application_month(filled: Engine) -> None:
    # month, application_id, application_name, api, version, tier, requests, 2xx, errors, throttled_out
    assert _rows(filled, "v_usage_by_application_month") == [
        (M1, "app1", "Pizza App", "pizza", "1.0", "Gold", 20, 11, 7, 3),
        (M1, "app1", "Pizza App", "pizza", "2.0", "Gold", 1, 1, 0, 0),
        (M1, "ghost", "", "pizza", "1.0", "Gold", 2, 2, 0, 0),
    ]


def _hist(**counts: int) -> tuple[int, ...]:
    return tuple({**ZERO_HIST, **counts}[c] for c in HISTOGRAM_COLUMNS)


def test_latency_by_resource_day(filled: Engine) -> None:
    rows = _rows(filled, "v_latency_by_resource_day")
    assert rows == [
        (D1, "pizza", "1.0", "/menu", "GET", 14, 54_000 / 14 / 1000, 0.5, 9.0, *_hist(lat_b00=8, lat_b10=6)),
        (D1, "pizza", "1.0", "/order", "POST", 5, 25_001 / 5 / 1000, 2.5, 12.345, *_hist(lat_b10=3, lat_b56=2)),
        (D2, "pizza", "1.0", "/menu", "GET", 3, 3_000_000 / 3 / 1000, 900.0, 1100.0, *_hist(lat_b56=3)),
    ]
    assert all(type(v) is float for row in rows for v in row[6:9])
    assert all(type(v) is int for row in rows for v in (row[5], *row[9:]))


def test_latency_histogram_gives_percentiles_with_latency_buckets(filled: Engine) -> None:
    """The documented use: the summed lat_bNN counts with latency_buckets.estimate_ms give a percentile."""
    view = view_table("v_latency_by_resource_day")
    with filled.connect() as conn:
        row = conn.execute(select(view).where(view.c.day == D1, view.c.resource_template == "/menu")).one()
        estimates = dict(conn.execute(text("SELECT bucket, estimate_ms FROM latency_buckets")).all())
    counts = [row._mapping[c] for c in HISTOGRAM_COLUMNS]
    running, p50 = 0, None
    for bucket, count in enumerate(counts):
        running += count
        if running >= 0.5 * row.requests:
            p50 = estimates[bucket]
            break
    assert p50 == estimates[0]  # 8 of 14 requests in bucket 0


def test_faults_day(filled: Engine) -> None:
    # day, api, version, application, faults, 5xx, 4xx: app2 (no faults, no 5xx) is left out
    assert _rows(filled, "v_faults_day") == [
        (D1, "pizza", "1.0", "app1", 1, 1, 3),
        (D2, "pizza", "1.0", "app1", 0, 3, 0),
    ]


def test_throttled_out_day(filled: Engine) -> None:
    # day, api, version, application, tier, throttled_out, requests (all of the group's requests)
    assert _rows(filled, "v_throttled_out_day") == [
        (D1, "pizza", "1.0", "app1", "Gold", 2, 15),
        (D2, "pizza", "1.0", "app1", "Gold", 3, 3),
    ]


def test_empty_store_views_return_nothing(engine: Engine) -> None:
    for view in VIEWS:
        assert _rows(engine, view.name) == []


def test_cli_migrates_through_the_views_revision_to_the_head(store_url: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from alembic.script import ScriptDirectory

    head = migrate.head_revision()
    history = [r.revision for r in ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions()]
    assert "0002_analyst_views" in history  # later revisions build on it
    assert main(["store", "migrate", "--store", store_url]) == 0
    assert capsys.readouterr().out.strip() == f"store: <empty> -> {head}"
    assert main(["store", "revision", "--store", store_url]) == 0
    assert capsys.readouterr().out.strip() == head


def test_downgrade_drops_the_views_and_upgrade_recreates_them(engine: Engine) -> None:
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(migrate.alembic_config(conn), "0001_initial")
    with engine.connect() as conn:
        assert inspect(conn).get_view_names() == []
    assert migrate.current_revision(engine) == "0001_initial"
    create_schema(engine)
    with engine.connect() as conn:
        assert set(inspect(conn).get_view_names()) == {v.name for v in VIEWS}
