"""The HTML dashboard on both real stores and in headless Chromium.

The store is filled with 30 hours of simulated traffic through the pipeline's own code path
(mapping, record format, aggregation, the commit transaction with throttle counters). Expected
numbers come from the simulator's ground truth where it has them (requests per hour, API,
application, tier and status class) and otherwise from the store itself, read independently
(``query.usage`` for latency and throttled-out, the raw throttle counters for quota use).
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from apim_analytics.cli import main
from bench.feed import Feed, simulated_events
from collector.columns import build_columns
from dashboards.data import dashboard_data
from dashboards.server import Dashboard, start_server
from dashboards.settings import DashboardSettings
from pipeline.aggregate import aggregate_chunk, finish
from pipeline.commit import commit_run
from pipeline.decode import ChunkBuilder
from pipeline.offsets import OffsetRange
from query.usage import usage
from simulator.ground_truth import GroundTruth
from store import tables as t
from store.engine import create_schema, make_engine
from store.throttle import ensure_default_policies
from tests.conftest import fresh_store
from tests.integration.browser import ARTIFACTS, load, read_page, screenshot

pytestmark = pytest.mark.integration

START = dt.datetime(2026, 11, 1, 6, 0)
HOURS = 30
EPOCH = dt.datetime(1970, 1, 1)


def _iso(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def fill(url: str) -> Feed:
    """30 hours of simulated traffic, committed as one pipeline run."""
    engine = make_engine(url)
    create_schema(engine)
    ensure_default_policies(engine)
    feed = Feed(GroundTruth())
    builder = ChunkBuilder()
    start_ms = int((START - EPOCH).total_seconds() * 1000)
    for call_id, events in simulated_events(seed=23, rate=0.25, duration_s=HOURS * 3600, start_ms=start_ms,
                                            feed=feed):
        builder.add(build_columns(events, call_id=call_id, producer_id="test").SerializeToString())
        builder.accept()
    commit_run(engine, [OffsetRange("apim.usage.v1", 0, 0, feed.calls)],
               finish(aggregate_chunk(builder.take()), {}, 0))
    engine.dispose()
    return feed


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, Feed]]]:
    """Filled stores by kind, each filled once for the module (on first use)."""
    with ExitStack() as stack:
        cache: dict[str, tuple[str, Feed]] = {}

        class Lazy(dict):
            def __missing__(self, kind: str) -> tuple[str, Feed]:
                url = stack.enter_context(fresh_store(kind, tmp_path_factory.mktemp(f"dash-{kind}")))
                self[kind] = (url, fill(url))
                return self[kind]

        yield Lazy(cache)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def filled(request: pytest.FixtureRequest, stores: dict[str, tuple[str, Feed]]) -> tuple[str, Feed]:
    return stores[request.param]


@pytest.fixture
def sqlite_filled(stores: dict[str, tuple[str, Feed]]) -> tuple[str, Feed]:
    return stores["sqlite"]


# --- what the numbers must be ---------------------------------------------------------------------


def truth_by_hour_and_api(feed: Feed, api: str | None = None, lo: dt.datetime | None = None,
                          hi: dt.datetime | None = None) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = defaultdict(int)
    for (minute_ms, name), v in feed.truth.by("bucket_start_ms", "api_name").items():
        hour = EPOCH + dt.timedelta(milliseconds=minute_ms - minute_ms % 3_600_000)
        if (api is None or name == api) and (lo is None or hour >= lo) and (hi is None or hour < hi):
            out[(_iso(hour), name)] += v["requests"]
    return dict(out)


def truth_by(feed: Feed, column: str, api: str | None = None, lo: dt.datetime | None = None,
             hi: dt.datetime | None = None) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for (minute_ms, name, value), v in feed.truth.by("bucket_start_ms", "api_name", column).items():
        minute = EPOCH + dt.timedelta(milliseconds=minute_ms)
        if (api is None or name == api) and (lo is None or minute >= lo) and (hi is None or minute < hi):
            out[value] += v["requests"]
    return dict(out)


def top(counts: dict[str, int], n: int = 10) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def quota_peaks(url: str, api: str | None = None, lo: dt.datetime | None = None,
                hi: dt.datetime | None = None) -> list[tuple[str, str, int, int]]:
    """(key, policy, quota, peak used) of the 10 subscriptions using most of their quota, from the raw counters."""
    engine = make_engine(url, readonly=True)
    c, p = t.throttle_counters.c, t.throttle_policies.c
    with engine.connect() as conn:
        counters = pd.DataFrame(conn.execute(select(c.throttle_key, c.policy, c.window_start, c.requests)
                                             .where(c.level == "subscription")).all(),
                                columns=["key", "policy", "window_start", "requests"])
        quotas = {r.name: r.quota for r in conn.execute(select(p.name, p.quota).where(p.level == "subscription"))
                  if r.quota}
        contexts = {f"{r.api_context}:{r.api_version}": r.api_name
                    for r in conn.execute(select(t.api_catalog.c.api_name, t.api_catalog.c.api_version,
                                                 t.api_catalog.c.api_context))}
    engine.dispose()
    counters["window_start"] = pd.to_datetime(counters["window_start"])
    counters = counters[counters["policy"].isin(quotas)]
    if lo is not None:
        counters = counters[(counters["window_start"] >= lo) & (counters["window_start"] < hi)]
    if api is not None:
        counters = counters[[contexts[k.split(":", 1)[1]] == api for k in counters["key"]]]
    peaks = counters.groupby(["key", "policy"], as_index=False)["requests"].max()
    rows = [(r.key, r.policy, int(quotas[r.policy]), int(r.requests)) for r in peaks.itertuples()]
    return sorted(rows, key=lambda r: (-r[3] / r[2], r[0]))[:10]


def check_page(page, url: str, feed: Feed, api: str | None = None, lo: dt.datetime | None = None,
               hi: dt.datetime | None = None) -> None:
    """Every panel's numbers equal the expected ones for the filter (API, [lo, hi))."""
    assert page.body.get("rendered") == "1" and "errors" not in page.body, page.body
    by_hour = truth_by_hour_and_api(feed, api, lo, hi)
    total = sum(by_hour.values())
    assert int(page.tiles["requests"]) == total
    classes = truth_by(feed, "status_class", api, lo, hi)
    assert int(page.tiles["errors_4xx"]) == classes.get("4xx", 0)
    assert int(page.tiles["errors_5xx"]) == classes.get("5xx", 0)
    stored = usage(url, group_by=["bucket"], granularity="hour", start=lo, end=hi, apis=api)
    assert int(page.tiles["throttled_out"]) == int(stored["throttled_out"].sum())
    assert page.tiles["busiest_api"] == top(truth_by(feed, "api_name", api, lo, hi), 1)[0][0]

    assert {(b, a): int(n) for b, a, n in page.tables["traffic"]} == by_hour
    expected_apps = top(truth_by(feed, "application_id", api, lo, hi))
    assert [(a, int(n)) for a, _, n in page.tables["applications"]] == expected_apps
    assert [(tier, int(n)) for tier, n, _ in page.tables["tiers"]] == top(truth_by(feed, "tier", api, lo, hi), 99)
    expected_latency = [[_iso(r.bucket_start), r.latency_p50_ms, r.latency_p95_ms, r.latency_p99_ms]
                        for r in stored.itertuples()]
    assert [[b, float(p50), float(p95), float(p99)] for b, p50, p95, p99 in page.tables["latency"]] \
        == expected_latency
    assert [[b, int(n), int(e4), int(e5), int(th)] for b, n, e4, e5, th, *_ in page.tables["errors"]] == \
        [[_iso(r.bucket_start), r.requests, r.errors_4xx, r.errors_5xx, r.throttled_out]
         for r in stored.itertuples()]
    peaks = quota_peaks(url, api, lo, hi)
    assert [(k, pol, int(q), int(used)) for k, pol, q, used, _ in page.tables["quota"]] == peaks
    assert [float(pct) for *_, pct in page.tables["quota"]] == pytest.approx([100 * u / q for _, _, q, u in peaks])


# --- the document ---------------------------------------------------------------------------------


def test_document_holds_the_stores_numbers(filled: tuple[str, Feed]) -> None:
    url, feed = filled
    engine = make_engine(url, readonly=True)
    doc = dashboard_data(engine)
    engine.dispose()
    assert doc["granularity"] == "hour"  # 1,800 minutes exceed the 400-bucket default; 30 hours do not
    assert (doc["from"], doc["to"]) == (_iso(START), _iso(START + dt.timedelta(hours=HOURS)))
    assert len(doc["buckets"]) == HOURS
    traffic = {(doc["buckets"][b], doc["apis"][a]): n for b, a, n, *_ in doc["traffic"]}
    assert traffic == truth_by_hour_and_api(feed)
    assert sum(traffic.values()) == feed.events
    apps: dict[str, int] = defaultdict(int)
    for _, _, p, n in doc["application_usage"]:
        apps[doc["applications"][p][0]] += n
    assert dict(apps) == truth_by(feed, "application_id")
    tiers: dict[str, int] = defaultdict(int)
    for _, _, ti, n in doc["tier_usage"]:
        tiers[doc["tiers"][ti]] += n
    assert dict(tiers) == truth_by(feed, "tier")
    # Quota rows: per subscription, its peak window in each hour; the hour peaks' maximum is the range's.
    peaks: dict[tuple[str, str], int] = defaultdict(int)
    for _, k, used in doc["quota_usage"]:
        key, policy = doc["quota_keys"][k][:2]
        peaks[(key, policy)] = max(peaks[(key, policy)], used)
    expected = quota_peaks(url)
    assert len(expected) == 10
    for key, policy, _, used in expected:
        assert peaks[(key, policy)] == used


def test_an_api_filter_and_a_range_narrow_the_document(filled: tuple[str, Feed]) -> None:
    url, feed = filled
    api = top(truth_by(feed, "api_name"))[1][0]
    lo, hi = START + dt.timedelta(hours=3, minutes=20), START + dt.timedelta(hours=9, minutes=5)
    engine = make_engine(url, readonly=True)
    doc = dashboard_data(engine, start=lo, end=hi, api=api, granularity="hour")
    engine.dispose()
    hours = (START + dt.timedelta(hours=3), START + dt.timedelta(hours=10))  # aligned outward
    assert (doc["from"], doc["to"], doc["apis"]) == (_iso(hours[0]), _iso(hours[1]), [api])
    assert {(doc["buckets"][b], api): n for b, _, n, *_ in doc["traffic"]} == \
        truth_by_hour_and_api(feed, api, *hours)


# --- the page in Chromium ---------------------------------------------------------------------------


def test_built_page_loads_without_errors_and_shows_the_stores_numbers(sqlite_filled: tuple[str, Feed],
                                                                      tmp_path: Path) -> None:
    url, feed = sqlite_filled
    out = tmp_path / "dashboard.html"
    assert main(["dashboard", "build", "--store", url, "--out", str(out)]) == 0
    loaded = load(out.as_uri())
    assert loaded.console == []
    check_page(read_page(loaded.dom), url, feed)
    assert screenshot(out.as_uri(), ARTIFACTS / "dashboard.png") == (1400, 2400)


def test_page_filters_by_api_and_time_range(sqlite_filled: tuple[str, Feed], tmp_path: Path) -> None:
    url, feed = sqlite_filled
    out = tmp_path / "dashboard.html"
    assert main(["dashboard", "build", "--store", url, "--out", str(out)]) == 0
    api = top(truth_by(feed, "api_name"))[2][0]
    first, last = START + dt.timedelta(hours=4), START + dt.timedelta(hours=11)  # "to" is the last bucket shown
    page_url = f"{out.as_uri()}#api={api}&from={_iso(first)}&to={_iso(last)}"
    loaded = load(page_url)
    assert loaded.console == []
    page = read_page(loaded.dom)
    assert (page.body["api"], page.body["from"], page.body["to"]) == (api, _iso(first), _iso(last))
    check_page(page, url, feed, api, first, last + dt.timedelta(hours=1))
    screenshot(page_url, ARTIFACTS / "dashboard-filtered.png")


def test_empty_store_page_says_so_without_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = make_engine(url)
    create_schema(engine)
    engine.dispose()
    out = tmp_path / "empty.html"
    assert main(["dashboard", "build", "--store", url, "--out", str(out)]) == 0
    loaded = load(out.as_uri())
    assert loaded.console == []
    page = read_page(loaded.dom)
    assert page.body.get("rendered") == "1" and "errors" not in page.body
    assert "the store has no usage" in loaded.dom


# --- served ---------------------------------------------------------------------------------------


def _get(base: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(base + path, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def served(filled: tuple[str, Feed]) -> Iterator[tuple[str, str, Feed]]:
    url, feed = filled
    dashboard = Dashboard(make_engine(url, readonly=True), DashboardSettings(store=url))
    server = start_server(dashboard, "127.0.0.1:0")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", url, feed
    finally:
        server.shutdown()
        server.server_close()
        dashboard.engine.dispose()


def test_served_page_and_data_match_the_store(served: tuple[str, str, Feed]) -> None:
    base, url, feed = served
    loaded = load(base + "/")
    assert loaded.console == []
    check_page(read_page(loaded.dom), url, feed)
    status, body = _get(base, "/data.json")
    engine = make_engine(url, readonly=True)
    expected = dashboard_data(engine)
    engine.dispose()
    doc = json.loads(body)
    assert status == 200
    assert {k: v for k, v in doc.items() if k != "generated_at"} == \
        {k: v for k, v in expected.items() if k != "generated_at"}
    assert _get(base, "/healthz") == (200, "ok\n")


def test_served_bad_requests_get_the_reason_and_the_server_keeps_serving(served: tuple[str, str, Feed]) -> None:
    base, _, _ = served
    assert _get(base, "/?from=noon") == \
        (400, "bad request: from 'noon' is not an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z)\n")
    assert _get(base, "/data.json?api=NoSuchAPI") == \
        (400, "bad request: unknown API name(s): 'NoSuchAPI'\n")
    assert _get(base, "/?from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z") == \
        (400, "bad request: empty or inverted time range: start 2026-11-02T00:00:00 is not before "
              "end 2026-11-01T00:00:00\n")
    assert _get(base, "/?granularity=week") == \
        (400, "bad request: unknown granularity 'week'; choose from auto, minute, hour, day, month\n")
    assert _get(base, "/?bogus=1") == (400, "bad request: unknown parameter(s) bogus; known: from, to, api, "
                                            "granularity\n")
    assert _get(base, "/?api=a&api=b") == (400, "bad request: parameter(s) given more than once: api\n")
    assert _get(base, "/nope")[0] == 404
    assert _get(base, "/healthz") == (200, "ok\n")
    status, metrics = _get(base, "/metrics")
    assert status == 200
    assert 'apim_dashboard_requests_total{code="400",endpoint="page"} 5.0' in metrics
    assert 'apim_dashboard_requests_total{code="400",endpoint="data"} 1.0' in metrics
    assert 'apim_dashboard_requests_total{code="404",endpoint="other"} 1.0' in metrics
    assert "apim_dashboard_store_up 1.0" in metrics


def test_unreachable_store_answers_503() -> None:
    url = "postgresql+psycopg://apim:apim@127.0.0.1:1/nowhere?connect_timeout=2"
    dashboard = Dashboard(make_engine(url, readonly=True), DashboardSettings(store=url))
    server = start_server(dashboard, "127.0.0.1:0")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _get(base, "/healthz") == (503, "store unreachable: StoreUnavailable\n")
        assert _get(base, "/") == (503, "the store did not answer; try again\n")
        assert "apim_dashboard_store_up 0.0" in _get(base, "/metrics")[1]
    finally:
        server.shutdown()
        server.server_close()
        dashboard.engine.dispose()


# --- the command line -----------------------------------------------------------------------------


def test_build_refuses_bad_arguments_with_the_reason(sqlite_filled: tuple[str, Feed], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = sqlite_filled
    out = str(tmp_path / "d.html")
    cases = [
        (["--from", "yesterday"], "apim-analytics: --from 'yesterday' is not an ISO 8601 timestamp "
                                  "(e.g. 2026-11-01T00:00:00Z)"),
        (["--api", "NoSuchAPI"], "apim-analytics: unknown API name(s): 'NoSuchAPI'"),
        (["--from", "2026-11-02", "--to", "2026-11-01"],
         "apim-analytics: empty or inverted time range: start 2026-11-02T00:00:00 is not before end "
         "2026-11-01T00:00:00"),
        (["--granularity", "week"], "apim-analytics: --granularity must be one of auto, minute, hour, day, month, "
                                    "not 'week'"),
    ]
    for extra, message in cases:
        assert main(["dashboard", "build", "--store", url, "--out", out, *extra]) == 2
        assert capsys.readouterr().err.strip() == message
    assert main(["dashboard", "build", "--store", url, "--out", str(tmp_path / "no" / "such" / "d.html")]) == 2
    assert "No such file or directory" in capsys.readouterr().err
    assert not Path(out).exists()
