"""query.usage and ``apim-analytics usage`` on both real stores: exact group-by results, percentiles
from the summed histograms, the table choice, argument errors and the CLI's output formats."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from apim_analytics.cli import main
from pipeline.commit import commit_run
from pipeline.offsets import OffsetRange
from query.errors import QueryArgumentError as QueryError
from query.usage import MEASURES, choose_table, usage
from store.engine import create_schema, make_engine
from store.latency import BUCKET_COUNT, bucket_of, percentile
from tests.integration.test_store_commit import event, facts

pytestmark = pytest.mark.integration

D1 = dt.datetime(2023, 11, 14)
D2 = dt.datetime(2023, 11, 15)
EPOCH = dt.datetime(1970, 1, 1)

# (api, version, app, tier, code, latency ms, time, request bytes, response bytes, throttled)
EVENTS = [
    ("PizzaAPI", "1.0.0", "app-1", "Gold", 200, 10.0, D1.replace(hour=10, minute=5), 10, 100, False),
    ("PizzaAPI", "1.0.0", "app-1", "Gold", 200, 20.0, D1.replace(hour=10, minute=5, second=30), 11, 200, False),
    ("PizzaAPI", "1.0.0", "app-1", "Gold", 404, 5.0, D1.replace(hour=11), 12, 30, False),
    ("PizzaAPI", "1.0.0", "app-2", "Silver", 500, 300.0, D2.replace(hour=9), 13, 40, False),
    ("PizzaAPI", "1.0.0", "app-2", "Silver", 201, 50.0, D2.replace(hour=9, minute=30), 14, 500, False),
    ("BookAPI", "2.0.0", "app-1", "Gold", 200, 1.5, D1.replace(hour=23, minute=59), 15, 600, False),
    ("BookAPI", "2.0.0", "app-3", "Bronze", 429, 0.2, D2.replace(minute=10), 16, 0, True),
    ("BookAPI", "2.0.0", "app-3", "Bronze", 302, 40.0, D2.replace(hour=12), 17, 70, False),
]
GROUP = ["api", "version", "application", "tier"]
COLS = ["api_name", "api_version", "application_id", "tier"]


def _event(api, version, app, tier, code, latency, when, rq, rs, throttled) -> dict:
    ms = int((when - EPOCH).total_seconds() * 1000)
    return dict(event(app, code, ts=ms, latency=latency, rq=rq, rs=rs, throttled=throttled), api_name=api,
                api_version=version, api_context=f"/{api.lower()}/{version}", subscription_tier=tier)


@pytest.fixture
def store(store_url: str) -> str:
    engine = make_engine(store_url)
    create_schema(engine)
    commit_run(engine, [OffsetRange("t", 0, 0, len(EVENTS))], facts([_event(*e) for e in EVENTS]))
    engine.dispose()
    return store_url


def expected(events, *, status: bool = False) -> dict:
    """Measures per (api, version, app, tier[, class]), computed from the events themselves."""
    groups: dict = defaultdict(list)
    for e in events:
        key = e[:4] + ((f"{e[4] // 100}xx",) if status else ())
        groups[key].append(e)
    out = {}
    for key, evs in groups.items():
        n = len(evs)
        n4 = sum(1 for e in evs if 400 <= e[4] < 500)
        n5 = sum(1 for e in evs if e[4] >= 500)
        if status:
            out[key] = (n, n4, n5)
            continue
        lat = [e[5] for e in evs]
        counts = np.bincount(bucket_of(np.array(lat)), minlength=BUCKET_COUNT)
        out[key] = (n, n4, n5, sum(e[9] for e in evs), sum(e[7] for e in evs), sum(e[8] for e in evs),
                    percentile(counts, 0.5), percentile(counts, 0.95), percentile(counts, 0.99),
                    pytest.approx(sum(lat) / n), pytest.approx(max(lat)), 0)
    return out


def as_dict(df: pd.DataFrame, keys: list[str]) -> dict:
    return {tuple(r[k] for k in keys): tuple(r[m] for m in MEASURES if not pd.isna(r[m]))
            for r in df.to_dict("records")}


def test_group_by_api_version_application_tier(store: str) -> None:
    df = usage(store, group_by=GROUP)
    assert list(df.columns) == COLS + list(MEASURES)
    assert as_dict(df, COLS) == expected(EVENTS)
    # spot-check a few by hand too
    pizza1 = df[(df.api_name == "PizzaAPI") & (df.application_id == "app-1")].iloc[0]
    assert (pizza1.requests, pizza1.errors_4xx, pizza1.request_bytes, pizza1.response_bytes) == (3, 1, 33, 330)
    assert pizza1.latency_max_ms == pytest.approx(20.0)
    assert pizza1.latency_mean_ms == pytest.approx(35.0 / 3)
    book3 = df[df.application_id == "app-3"].iloc[0]
    assert (book3.requests, book3.throttled_out, book3.errors_4xx) == (2, 1, 1)


def test_percentiles_come_from_the_summed_histograms(store: str) -> None:
    df = usage(store, group_by=["api"])
    for api in ("PizzaAPI", "BookAPI"):
        lat = np.array([e[5] for e in EVENTS if e[0] == api])
        counts = np.bincount(bucket_of(lat), minlength=BUCKET_COUNT)
        row = df[df.api_name == api].iloc[0]
        assert (row.latency_p50_ms, row.latency_p95_ms, row.latency_p99_ms) == (
            percentile(counts, 0.5), percentile(counts, 0.95), percentile(counts, 0.99))
    total = usage(store, group_by=[])
    assert total.requests.tolist() == [len(EVENTS)]


def test_status_class_splits_requests_and_errors_only(store: str) -> None:
    df = usage(store, group_by=[*GROUP, "status_class"])
    assert list(df.columns) == [*COLS, "status_class", *MEASURES]
    got = {tuple(r[:5]): (r.requests, r.errors_4xx, r.errors_5xx) for r in df.itertuples(index=False)}
    assert got == expected(EVENTS, status=True)
    unsplit = [m for m in MEASURES if m not in ("requests", "errors_4xx", "errors_5xx")]
    assert df[unsplit].isna().all().all()
    only = usage(store, group_by=["status_class"])
    assert dict(zip(only.status_class, only.requests)) == {"2xx": 4, "3xx": 1, "4xx": 2, "5xx": 1}


@pytest.mark.parametrize(("start", "end", "granularity", "table"), [
    (dt.datetime(2023, 11, 1), dt.datetime(2023, 12, 1), None, "usage_month"),
    (None, None, None, "usage_month"),
    (dt.datetime(2023, 11, 1), dt.datetime(2023, 12, 1), "day", "usage_app_day"),
    (D1, D2 + dt.timedelta(days=1), None, "usage_app_day"),
    (D1.replace(hour=10), D2.replace(hour=10), None, "usage_hour"),
    (D1, D2, "hour", "usage_hour"),
    (D1.replace(hour=10, minute=5), D1.replace(hour=11), None, "usage_minute"),
    (D1.replace(hour=10, minute=5, second=1), None, None, "usage_minute"),
    (None, None, "minute", "usage_minute"),
])
def test_choose_table(start, end, granularity, table) -> None:
    assert choose_table(GROUP, start, end, granularity) == table


@pytest.mark.parametrize(("group_by", "table"), [
    (["api", "application", "bucket"], "usage_app_day"),
    (["api", "version", "tier", "key_type", "context", "status_class"], "usage_app_day"),
    ([], "usage_app_day"),
    (["api", "resource"], "usage_day"),
    (["api", "method", "bucket"], "usage_day"),
])
def test_a_day_question_without_resource_or_method_reads_the_app_day_rollup(group_by, table) -> None:
    assert choose_table(group_by, D1, D2 + dt.timedelta(days=1), "day") == table


def test_the_app_day_rollup_answers_as_usage_day_does(store: str) -> None:
    """The same question, read from usage_app_day and (forced by grouping on method) from usage_day."""
    by_app = usage(store, group_by=["api", "application", "bucket"], granularity="day")
    by_method = usage(store, group_by=["api", "application", "bucket", "method"], granularity="day")
    folded = by_method.groupby(["api_name", "application_id", "bucket_start"], as_index=False)[
        ["requests", "errors_4xx", "errors_5xx", "throttled_out", "request_bytes", "response_bytes", "faults"]].sum()
    assert len(by_app) == len(folded) > 1
    pd.testing.assert_frame_equal(by_app[folded.columns].reset_index(drop=True), folded, check_dtype=False)


def test_choose_table_for_users_and_destinations() -> None:
    assert choose_table(["user"], D1, D2) == "usage_user_day"
    assert choose_table(["destination"], D1, D2) == "usage_destination_day"
    assert choose_table(["destination"], D1.replace(hour=3), D2) == "usage_destination_hour"
    with pytest.raises(QueryError, match="whole days"):
        choose_table(["user"], D1.replace(hour=3), D2)


def _within(start, end):
    return [e for e in EVENTS if (start is None or e[6] >= start) and (end is None or e[6] < end)]


@pytest.mark.parametrize(("start", "end"), [
    (dt.datetime(2023, 11, 1), dt.datetime(2023, 12, 1)),  # month
    (D1, D2),  # day
    (D1.replace(hour=10), D2.replace(hour=10)),  # hour
    (D1.replace(hour=10, minute=5), D1.replace(hour=11)),  # minute
])
def test_every_table_answers_its_range_exactly(store: str, start, end) -> None:
    assert as_dict(usage(store, group_by=GROUP, start=start, end=end), COLS) == expected(_within(start, end))


def test_buckets_at_the_granularity_asked_for(store: str) -> None:
    df = usage(store, group_by=["bucket"], granularity="day")
    assert df.bucket_start.tolist() == [pd.Timestamp(D1), pd.Timestamp(D2)]
    assert df.requests.tolist() == [4, 4]
    # an hour-aligned range is read from usage_hour and rolled up to days
    df = usage(store, group_by=["api", "bucket"], granularity="day", start=D1.replace(hour=10),
               end=D2.replace(hour=10))
    assert [(r.api_name, r.bucket_start, r.requests) for r in df.itertuples()] == [
        ("BookAPI", pd.Timestamp(D1), 1), ("BookAPI", pd.Timestamp(D2), 1),
        ("PizzaAPI", pd.Timestamp(D1), 3), ("PizzaAPI", pd.Timestamp(D2), 2)]
    month = usage(store, group_by=["bucket"], granularity="month")
    assert (month.bucket_start.tolist(), month.requests.tolist()) == ([pd.Timestamp(2023, 11, 1)], [8])


def test_filters_and_top(store: str) -> None:
    df = usage(store, group_by=["application"], apis=["PizzaAPI"])
    assert dict(zip(df.application_id, df.requests)) == {"app-1": 3, "app-2": 2}
    df = usage(store, group_by=["api"], applications="app-3")
    assert dict(zip(df.api_name, df.requests)) == {"BookAPI": 2}
    top = usage(store, group_by=["application"], top=2)
    assert top.application_id.tolist() == ["app-1", "app-2"]
    assert top.requests.tolist() == [4, 2]


def test_users_and_destinations(store: str) -> None:
    users = usage(store, group_by=["api", "user"])
    assert list(users.columns) == ["api_name", "user_name", *MEASURES]
    assert dict(zip(users.api_name, users.requests)) == {"BookAPI": 3, "PizzaAPI": 5}
    assert users.latency_p50_ms.isna().all()
    dests = usage(store, group_by=["destination", "bucket"], granularity="day")
    assert dests.requests.tolist() == [4, 4]
    assert dests.errors_5xx.tolist() == [0, 1]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"group_by": ["api", "colour"]}, "unknown group-by name"),
    ({"group_by": ["api"], "granularity": "week"}, "unknown granularity"),
    ({"group_by": ["api"], "start": D2, "end": D1}, "inverted time range"),
    ({"group_by": ["api"], "start": D1, "end": D1}, "empty or inverted"),
    ({"group_by": ["api"], "apis": ["NoSuchAPI"]}, "unknown API name.*NoSuchAPI"),
    ({"group_by": ["api"], "top": 0}, "top must be a positive integer"),
    ({"group_by": ["bucket"]}, "needs a granularity"),
    ({"group_by": ["user", "tier"]}, "cannot be combined"),
])
def test_bad_arguments(store: str, kwargs, message) -> None:
    with pytest.raises(QueryError, match=message):
        usage(store, **kwargs)
    assert issubclass(QueryError, ValueError) and QueryError.usage and not QueryError.retriable


CLI_GROUP = "api,version,application,tier,status_class"
HEADER = ("api_name,api_version,application_id,tier,status_class,requests,errors_4xx,errors_5xx,throttled_out,"
          "request_bytes,response_bytes,latency_p50_ms,latency_p95_ms,latency_p99_ms,latency_mean_ms,"
          "latency_max_ms,faults")


def test_cli_csv(store: str, capsys) -> None:
    assert main(["usage", "--store", store, "--group-by", CLI_GROUP, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == HEADER
    df = pd.read_csv(io.StringIO(out))
    assert len(df) == len(expected(EVENTS, status=True))
    assert int(df.requests.sum()) == len(EVENTS)


def test_cli_json_and_parquet_round_trip(store: str, capsys, tmp_path) -> None:
    want = usage(store, group_by=GROUP, start=D1, end=D2 + dt.timedelta(days=1), apis=["PizzaAPI", "BookAPI"])
    args = ["usage", "--store", store, "--group-by", "api,version,application,tier", "--from", "2023-11-14T00:00Z",
            "--to", "2023-11-16", "--api", "PizzaAPI", "--api", "BookAPI"]
    assert main([*args, "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    pd.testing.assert_frame_equal(pd.DataFrame.from_records(records, columns=list(want.columns)), want,
                                  check_dtype=False)
    out = tmp_path / "u.parquet"
    assert main([*args, "--format", "parquet", "--out", str(out)]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out), want)
    bucketed = tmp_path / "b.parquet"
    assert main(["usage", "--store", store, "--group-by", "bucket", "--granularity", "day", "--format", "parquet",
                 "--out", str(bucketed)]) == 0
    got = pd.read_parquet(bucketed)
    assert got.requests.tolist() == [4, 4]
    assert [pd.Timestamp(v) for v in got.bucket_start] == [pd.Timestamp(D1), pd.Timestamp(D2)]


@pytest.mark.parametrize(("extra", "message"), [
    (["--from", "2023-11-16", "--to", "2023-11-14"], "inverted time range"),
    (["--format", "parquet"], "--format parquet needs --out"),
    (["--from", "yesterday"], "not an ISO 8601 timestamp"),
    (["--api", "NoSuchAPI"], "unknown API name"),
])
def test_cli_bad_arguments_exit_2_with_one_line(store: str, capsys, extra, message) -> None:
    assert main(["usage", "--store", store, "--group-by", CLI_GROUP, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("apim-analytics: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_measures_limit_what_is_read_and_leave_the_rest_nan(store: str) -> None:
    full = usage(store, group_by=["api", "tier"])
    counts = usage(store, group_by=["api", "tier"], measures=["errors_4xx"])
    assert counts[["api_name", "tier", "requests", "errors_4xx"]].equals(full[["api_name", "tier", "requests",
                                                                                 "errors_4xx"]])
    assert counts[["latency_p50_ms", "latency_mean_ms", "latency_max_ms", "response_bytes"]].isna().all().all()
    latency = usage(store, group_by=["api"], measures=["latency_p95_ms"])
    assert latency["latency_p95_ms"].tolist() == usage(store, group_by=["api"])["latency_p95_ms"].tolist()
    by_class = usage(store, group_by=["api", "status_class"], measures=["requests"])
    assert by_class["requests"].sum() == 8
    with pytest.raises(QueryError, match="unknown measure\\(s\\) 'p50'; choose from requests, errors_4xx"):
        usage(store, group_by=["api"], measures=["p50"])


@pytest.mark.parametrize("group_by", [GROUP, ["api", "resource", "method"], ["application", "bucket"],
                                      ["tier", "status_class"], ["api", "bucket"]])
def test_grouped_by_the_database_or_here_the_answer_is_the_same(store: str, group_by: list[str]) -> None:
    """Up to ``fold_rows_up_to`` stored rows are grouped by pandas, beyond it by the database: both exact."""
    kw = {"granularity": "hour"} if "bucket" in group_by else {}
    here = usage(store, group_by=group_by, **kw)
    by_database = usage(store, group_by=group_by, fold_rows_up_to=0, **kw)
    assert len(here) > 1
    pd.testing.assert_frame_equal(here, by_database, check_dtype=False)
