"""bench/query_latency.py's fill, at a tiny size on the real PostgreSQL: the generated usage rows must
be internally consistent and the rollups exact, as the pipeline's would be. No timings are asserted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest
from sqlalchemy import Engine, text

from bench import query_latency as ql
from simulator.catalog import ANONYMOUS, UNAUTHENTICATED_TIER, build_catalog
from store.engine import make_engine
from store.latency import BUCKET_COUNT, histogram_column
from store.tables import USAGE_DIMENSIONS, USAGE_SUM_COLUMNS
from tests.conftest import PG_URL

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

# 2 days, 3 APIs, 20 applications; minutes for the last 6 hours; about 30k rows in all
SPEC = ql.FillSpec(seed=3, days=2, end="2026-03-02", rate=1.0, minute_days=0.25, apis=3, applications=20,
                   users=40)
HIST_SUM = " + ".join(histogram_column(i) for i in range(BUCKET_COUNT))
DIMS = ", ".join(USAGE_DIMENSIONS)


@pytest.fixture(scope="module")
def filled() -> Iterator[tuple[Engine, dict]]:
    schema = f"t_qlat_{uuid.uuid4().hex[:10]}"
    try:
        record = ql.fill(PG_URL, schema, SPEC)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {PG_URL} is not usable ({exc}); start it with `make services`")
    engine = make_engine(ql.schema_url(PG_URL, schema))
    try:
        yield engine, record | {"schema": schema}
    finally:
        engine.dispose()
        admin = make_engine(PG_URL)
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def _scalar(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def test_every_table_is_filled_and_counted(filled: tuple[Engine, dict]) -> None:
    engine, record = filled
    assert not record["reused"]
    rows = ql.row_counts(engine)
    assert rows == record["rows"]
    assert all(rows[f"usage_{g}"] > 0 for g in ("minute", "hour", "day", "month"))
    assert rows["usage_month"] <= rows["usage_day"] <= rows["usage_hour"]
    assert rows["api_catalog"] == SPEC.apis and rows["application_catalog"] == SPEC.applications + 1
    # buckets: minutes only in the last 6 hours, hours and days over the 2 days, two (partial) months
    with engine.connect() as conn:
        for table, first, last in (("usage_minute", datetime(2026, 3, 1, 18), datetime(2026, 3, 1, 23, 59)),
                                   ("usage_hour", datetime(2026, 2, 28), datetime(2026, 3, 1, 23)),
                                   ("usage_day", datetime(2026, 2, 28), datetime(2026, 3, 1)),
                                   ("usage_month", datetime(2026, 2, 1), datetime(2026, 3, 1))):
            got = conn.execute(text(f"SELECT min(bucket_start), max(bucket_start) FROM {table}")).one()
            assert tuple(got) == (first, last), table


@pytest.mark.parametrize("table", ["usage_minute", "usage_hour", "usage_day", "usage_month"])
def test_rows_are_internally_consistent(filled: tuple[Engine, dict], table: str) -> None:
    engine, _ = filled
    bad = {
        "histogram sum != requests": f"({HIST_SUM}) <> requests",
        "classes exceed requests": "count_2xx + count_3xx + count_4xx + count_5xx > requests",
        "no requests": "requests <= 0",
        "throttled-out beyond 4xx": "throttled_out > count_4xx",
        "faults beyond 5xx": "faults > count_5xx",
        "negative measure": " OR ".join(f"{c} < 0" for c in USAGE_SUM_COLUMNS),
        "min above max": "latency_min_us > latency_max_us",
        "mean outside [min, max]": "latency_sum_us < latency_min_us * requests "
                                   "OR latency_sum_us > latency_max_us * requests",
        "backend above total": "backend_latency_sum_us > latency_sum_us",
    }
    found = {name: _scalar(engine, f"SELECT count(*) FROM {table} WHERE {cond}") for name, cond in bad.items()}
    assert found == dict.fromkeys(bad, 0)


def _rollup_mismatches(engine: Engine, fine: str, coarse: str, unit: str, where: str = "TRUE") -> int:
    """Rows of ``coarse`` that differ from ``fine`` summed per ``unit`` (both directions, every measure)."""
    sums = ", ".join(f"sum({c})::bigint AS {c}" for c in USAGE_SUM_COLUMNS)
    cols = ", ".join(USAGE_SUM_COLUMNS)
    rolled = (f"SELECT date_trunc('{unit}', bucket_start) AS b, {DIMS}, {sums}, min(latency_min_us) AS mn, "
              f"max(latency_max_us) AS mx FROM {fine} GROUP BY 1, {DIMS}")
    stored = f"SELECT bucket_start AS b, {DIMS}, {cols}, latency_min_us, latency_max_us FROM {coarse} WHERE {where}"
    return _scalar(engine, f"SELECT (SELECT count(*) FROM (({rolled}) EXCEPT ({stored})) x) "
                           f"+ (SELECT count(*) FROM (({stored}) EXCEPT ({rolled})) y)")


def test_hours_sum_to_days_exactly(filled: tuple[Engine, dict]) -> None:
    engine, _ = filled
    assert _rollup_mismatches(engine, "usage_hour", "usage_day", "day") == 0


def test_days_sum_to_months_exactly(filled: tuple[Engine, dict]) -> None:
    engine, _ = filled
    assert _rollup_mismatches(engine, "usage_day", "usage_month", "month") == 0


def test_minutes_sum_to_their_hours_exactly(filled: tuple[Engine, dict]) -> None:
    engine, _ = filled
    assert _rollup_mismatches(engine, "usage_minute", "usage_hour", "hour",
                              where="bucket_start >= '2026-03-01 18:00'") == 0


def test_combinations_are_the_catalogs_subscriptions(filled: tuple[Engine, dict]) -> None:
    engine, _ = filled
    catalog = build_catalog(SPEC.seed, SPEC.apis, SPEC.applications, SPEC.users)
    allowed = {(a.name, a.version, app.id, tier, app.key_type)
               for a in catalog.apis for app, tier in catalog.subscribers(a)}
    allowed |= {(a.name, a.version, ANONYMOUS, UNAUTHENTICATED_TIER, "PRODUCTION") for a in catalog.apis}
    resources = {(a.name, a.version, m, r) for a in catalog.apis for m, r in a.resources}
    with engine.connect() as conn:
        seen = conn.execute(text("SELECT DISTINCT api_name, api_version, application_id, tier, key_type, method, "
                                 "resource_template FROM usage_day")).all()
    assert {s[:5] for s in seen} <= allowed
    assert {(s[0], s[1], s[5], s[6]) for s in seen} <= resources
    assert len({s[:5] for s in seen}) > len(allowed) // 2  # most subscriptions have traffic over 2 days


def test_second_fill_with_the_same_spec_is_reused(filled: tuple[Engine, dict]) -> None:
    engine, record = filled
    again = ql.fill(PG_URL, record["schema"], SPEC)
    assert again["reused"] and again["rows"] == record["rows"]
    assert ql.row_counts(engine) == record["rows"]
