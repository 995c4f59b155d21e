"""The Grafana dashboards (dashboards/grafana/*.json) on the real PostgreSQL store, panel by panel.

Every panel target's rawSql and every templating query is expanded the way Grafana's PostgreSQL data
source expands it (tests/support/grafana_macros.py: template variables, then ``$__timeFilter``,
``$__timeGroupAlias`` ...), run in a read-only transaction on a PostgreSQL store filled through the
pipeline's own commit path (collector columns -> aggregation -> commit_run, several runs, plus stored
throttle policies), and its result compared exactly with numbers computed independently:

- from the events themselves, by hand (counts, percentages, nearest-rank percentiles of the events'
  own histogram), and
- through the project's Python APIs: ``query.usage.usage`` for the usage panels and
  ``store.throttle.throttle_status`` (at now = the range's end) for the quota panel.

Grafana's ``$__timeFilter`` is ``BETWEEN from AND to`` (both ends included) on ``bucket_start``, and
the panels read usage_hour, so a range selects the hours that *start* inside it: for ``[from, to]``
the expected numbers are those of ``[ceil_hour(from), floor_hour(to) + 1h)``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from pipeline.commit import commit_run
from pipeline.offsets import OffsetRange
from query.usage import usage
from store.engine import create_schema, make_engine
from store.latency import BUCKET_COUNT, bucket_of, percentile
from store.throttle import (
    ThrottlePolicy,
    store_policies,
    subscription_key,
    throttle_status,
)
from tests.conftest import fresh_store
from tests.integration.test_store_commit import event, facts
from tests.support.grafana_macros import ALL, Variable, render

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "grafana"
DASHBOARD_FILES = sorted(GRAFANA_DIR.glob("*.json"))
EPOCH = dt.datetime(1970, 1, 1)
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)
D0 = dt.datetime(2023, 11, 13)  # the day before the ranges: must never show up
D1, D2, D3 = D0 + DAY, D0 + 2 * DAY, D0 + 3 * DAY

# An API name with a quote: the api variable's values must be quoted and escaped as Grafana does.
APIS = {"PizzaAPI": ("1.0.0", "/pizza/1.0.0"), "BookAPI": ("2.0.0", "/book/2.0.0"), "Bob's API": ("v1", "/bobs/v1")}
# application -> subscription tier; more than ten applications so "top 10" has to cut
APPS = {"app-gold": "Gold", "app-silver": "Silver", "app-trial": "Trial", "app-metered": "Metered",
        "app-free": "Unlimited", "anonymous": "Unauthenticated",
        **{f"app-{i:02d}": "Bronze" for i in range(1, 9)}}
# custom daily policies, so some subscription quotas are visibly used (Gold & co. are per minute)
POLICIES = [ThrottlePolicy("subscription", "Trial", "requestCount", 5, 1, "day"),
            ThrottlePolicy("subscription", "Metered", "bandwidthVolume", 4000, 1, "day")]
CODES = [200, 200, 200, 200, 200, 201, 204, 302, 400, 404, 404, 429, 500, 503]


def _make_events() -> list[dict[str, Any]]:
    """About 250 seeded events from D0 20:00 to D3 03:00 (hours before and after the tested ranges)."""
    rng = random.Random(20231114)
    out = []

    def add(when: dt.datetime, api: str, app: str, code: int, latency: float) -> None:
        version, context = APIS[api]
        ms = int((when - EPOCH).total_seconds() * 1000)
        rq, rs = rng.randint(50, 900), rng.randint(0, 4000)
        e = dict(event(app, code, ts=ms, latency=latency, rq=rq, rs=rs, throttled=code == 429,
                       resource=rng.choice(["/menu", "/order/{id}", "/items"])),
                 api_name=api, api_version=version, api_context=context, subscription_tier=APPS[app],
                 api_method=rng.choice(["GET", "GET", "POST"]))
        out.append(e)

    hour = D0.replace(hour=20)
    while hour < D3.replace(hour=3):
        apps = list(APPS) if hour < D3 else ["app-01", "app-02"]  # after the ranges: two applications only
        for _ in range(rng.choice([0, 1, 2, 3, 4, 6, 8])):
            when = hour + dt.timedelta(seconds=rng.randrange(3600), milliseconds=rng.randrange(1000))
            kind = rng.random()
            latency = 0.3 if kind < 0.05 else 90_000.0 if kind > 0.97 else round(rng.lognormvariate(3.4, 1.3), 3)
            add(when, rng.choice(list(APIS)), rng.choice(apps), rng.choice(CODES), latency)
        hour += HOUR
    # a Gold subscription counted in the last minute of D2: its per-minute decision binds at 23:59:59.999
    add(D2.replace(hour=23, minute=59, second=30), "PizzaAPI", "app-gold", 200, 12.0)
    add(D2.replace(hour=23, minute=59, second=31), "PizzaAPI", "app-gold", 200, 14.0)
    return out


EVENTS = _make_events()


# --- the store ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    """A private schema in the real PostgreSQL, filled once for the module; (url, read-only engine)."""
    with fresh_store("postgresql", tmp_path_factory.mktemp("grafana")) as url:
        writer = make_engine(url)
        reader = make_engine(url, readonly=True)
        try:
            create_schema(writer)
            with writer.begin() as conn:
                store_policies(conn, POLICIES)
            shuffled = EVENTS[:]
            random.Random(5).shuffle(shuffled)  # runs in any order: the merges are order-free
            offset = 0
            for part in (shuffled[:90], shuffled[90:170], shuffled[170:]):
                commit_run(writer, [OffsetRange("grafana", 0, offset, offset + len(part))], facts(part))
                offset += len(part)
            yield url, reader
        finally:
            reader.dispose()
            writer.dispose()


def run_sql(engine: Engine, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run SQL as Grafana does (plain text, no bind parameters), in a read-only transaction."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("SET TRANSACTION READ ONLY")
        cur.execute(sql)
        columns = [d[0] for d in cur.description]
        rows = [tuple(r) for r in cur.fetchall()]
        raw.rollback()
    finally:
        raw.close()
    return columns, rows


# --- dashboards, ranges, selections -----------------------------------------------------------------

def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return [p for p in out if p.get("type") != "row"]


def variable_query(definition: dict[str, Any]) -> str:
    query = definition["query"]
    return query["rawSql"] if isinstance(query, dict) else query


def api_options(engine: Engine, dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Each query variable's options, from its own query (what Grafana offers, and what "All" means)."""
    out = {}
    for d in dashboard["templating"]["list"]:
        if d["type"] == "query":
            _, rows = run_sql(engine, render(variable_query(d), start=D1, end=D3, variables=()))
            out[d["name"]] = [r[0] for r in rows]
    return out


def variables(dashboard: dict[str, Any], options: dict[str, list[str]], selection: list[str]) -> list[Variable]:
    return [Variable.from_dashboard(d, selection, options.get(d["name"], ()))
            for d in dashboard["templating"]["list"] if d["type"] == "query"]


def grafana_range(start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """An absolute Grafana range for [start, end): Grafana's 'to' is the last millisecond."""
    return start, end - dt.timedelta(milliseconds=1)


# (from, to) as Grafana sends them
RANGES = {
    "two-days": grafana_range(D1, D3),
    "unaligned": (D1.replace(hour=10, minute=30), D2.replace(hour=9, minute=15, second=7, microsecond=250_000)),
}
SELECTIONS = {"all": [ALL], "one": ["PizzaAPI"], "two-quoted": ["BookAPI", "Bob's API"]}
INTERVALS = ["1h", "1d"]


def hour_span(frm: dt.datetime, to: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The [start, end) of the hour buckets BETWEEN from AND to selects."""
    start = frm.replace(minute=0, second=0, microsecond=0)
    if start < frm:
        start += HOUR
    return start, to.replace(minute=0, second=0, microsecond=0) + HOUR


class Case:
    """One dashboard state: time range, $__interval and API selection, with the expected numbers' inputs."""

    def __init__(self, engine: Engine, url: str, range_name: str, interval: str, selection_name: str) -> None:
        self.engine, self.url = engine, url
        self.frm, self.to = RANGES[range_name]
        self.interval = interval
        self.selection = SELECTIONS[selection_name]
        self.start, self.end = hour_span(self.frm, self.to)
        self.apis = sorted(APIS) if self.selection == [ALL] else self.selection
        self.granularity = {"1h": "hour", "1d": "day"}[interval]
        self.events = [e for e in EVENTS if e["api_name"] in self.apis and self.start <= when(e) < self.end]

    def usage(self, group_by: list[str], **kwargs: Any):
        return usage(self.url, group_by=group_by, start=self.start, end=self.end, apis=self.apis, **kwargs)

    def group(self, e: dict[str, Any]) -> dt.datetime:
        """The event's time group at the case's interval (Grafana's floor(epoch / interval) * interval)."""
        t = when(e)
        return t.replace(minute=0, second=0, microsecond=0) if self.interval == "1h" else \
            t.replace(hour=0, minute=0, second=0, microsecond=0)


def when(e: dict[str, Any]) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=e["request_timestamp_ms"])


def epoch_time(value: Decimal | float) -> dt.datetime:
    """Grafana's "time" column as the panels return it (epoch seconds) -> naive UTC datetime."""
    assert value == int(value), value
    return EPOCH + dt.timedelta(seconds=int(value))


def assert_time_ordered(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    times = [r[columns.index("time")] for r in rows]
    assert times == sorted(times)


# --- exact expectations per panel -----------------------------------------------------------------------

Check = Callable[[Case, list[str], list[tuple[Any, ...]]], None]


def check_traffic(case: Case, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    assert columns == ["time", "metric", "requests"]
    assert_time_ordered(columns, rows)
    got = {(epoch_time(t), api): n for t, api, n in rows}
    by_hand = Counter((case.group(e), e["api_name"]) for e in case.events)
    df = case.usage(["api", "bucket"], granularity=case.granularity)
    via_query = {(b.to_pydatetime(), api): n for api, b, n in zip(df.api_name, df.bucket_start, df.requests)}
    assert got == dict(by_hand) == via_query
    assert sum(got.values()) == len(case.events)


def check_top_applications(case: Case, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    assert columns == ["application_id", "application_name", "requests", "errors_4xx", "errors_5xx", "throttled_out"]
    df = case.usage(["application"], top=10)
    via_query = [(a, f"{a}-name", n, e4, e5, th) for a, n, e4, e5, th in
                 zip(df.application_id, df.requests, df.errors_4xx, df.errors_5xx, df.throttled_out)]
    per_app: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for e in case.events:
        c = per_app[e["application_id"]]
        c[0] += 1
        c[1] += 400 <= e["response_code"] < 500
        c[2] += e["response_code"] >= 500
        c[3] += e["throttled_out"]
    by_hand = sorted(((a, f"{a}-name", *c) for a, c in per_app.items()), key=lambda r: (-r[2], r[0]))[:10]
    assert rows == via_query == by_hand
    assert len(rows) == min(10, len(per_app))


def check_tiers(case: Case, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    assert columns == ["tier", "requests"]
    df = case.usage(["tier"])
    via_query = sorted(zip(df.tier, df.requests), key=lambda r: (-r[1], r[0]))
    by_hand = sorted(Counter(APPS[e["application_id"]] for e in case.events).items(), key=lambda r: (-r[1], r[0]))
    assert rows == via_query == by_hand


def check_latency(case: Case, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    assert columns == ["time", "p50", "p95", "p99"]
    assert_time_ordered(columns, rows)
    got = {epoch_time(t): (p50, p95, p99) for t, p50, p95, p99 in rows}
    df = case.usage(["bucket"], granularity=case.granularity)
    via_query = {b.to_pydatetime(): (p50, p95, p99) for b, p50, p95, p99 in
                 zip(df.bucket_start, df.latency_p50_ms, df.latency_p95_ms, df.latency_p99_ms)}
    latencies: dict[dt.datetime, list[float]] = defaultdict(list)
    for e in case.events:
        latencies[case.group(e)].append(e["response_latency_ms"])
    by_hand = {}
    for t, values in latencies.items():
        counts = np.bincount(bucket_of(np.array(values)), minlength=BUCKET_COUNT)
        by_hand[t] = (percentile(counts, 0.50), percentile(counts, 0.95), percentile(counts, 0.99))
    assert got == via_query == by_hand  # exact floats: the same bucket estimates


def check_error_rates(case: Case, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    assert columns == ["time", "4xx %", "5xx %", "throttled out %"]
    assert_time_ordered(columns, rows)
    got = {epoch_time(t): (a, b, c) for t, a, b, c in rows}

    def rates(n: int, e4: int, e5: int, th: int) -> tuple[float, float, float]:
        return 100 * float(e4) / float(n), 100 * float(e5) / float(n), 100 * float(th) / float(n)

    df = case.usage(["bucket"], granularity=case.granularity)
    via_query = {b.to_pydatetime(): rates(n, e4, e5, th) for b, n, e4, e5, th in
                 zip(df.bucket_start, df.requests, df.errors_4xx, df.errors_5xx, df.throttled_out)}
    counts: dict[dt.datetime, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for e in case.events:
        c = counts[case.group(e)]
        c[0] += 1
        c[1] += 400 <= e["response_code"] < 500
        c[2] += e["response_code"] >= 500
        c[3] += e["throttled_out"]
    by_hand = {t: rates(*c) for t, c in counts.items()}
    assert got == via_query == by_hand


def check_quota(case: Case, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    assert columns == ["subscription", "policy", "used", "quota", "used %", "window_start", "resets_at",
                       "throttled", "near_limit"]
    keys = sorted({subscription_key(e["application_id"], e["api_context"], e["api_version"])
                   for e in EVENTS if e["api_name"] in case.apis})
    expected = []
    for key in keys:
        s = throttle_status(case.engine, "subscription", key, case.to)
        if s.quota is not None and s.quota > 0 and s.used > 0:
            expected.append((key, s.policy, s.used, s.quota, 100 * float(s.used) / float(s.quota), s.window_start,
                             s.resets_at, s.throttled, s.near_limit))
    expected.sort(key=lambda r: (-r[4], r[0]))
    assert rows == expected[:10]
    # and by hand for the daily Trial quota: its window is D2 (no Trial traffic after D2), used = D2's
    # admitted (not throttled-out) requests of the subscription
    trial = [r for r in rows if r[1] == "Trial"]
    if case.selection == [ALL]:
        assert trial, "the data set must use some Trial quota"
    for row in trial:
        admitted = sum(1 for e in EVENTS
                       if subscription_key(e["application_id"], e["api_context"], e["api_version"]) == row[0]
                       and D2 <= when(e) < D3 and not e["throttled_out"])
        assert (row[2], row[3], row[5], row[6]) == (admitted, 5, D2, D3)
    if case.selection == [ALL]:
        assert any(r[7] for r in rows) and any(r[8] for r in rows), "throttled and near-limit keys must show"
    # the Gold subscription counted in D2's last minute: its per-minute window binds at 23:59:59.999 only
    gold = [r for r in rows if r[0] == subscription_key("app-gold", *reversed(APIS["PizzaAPI"]))]
    last_minute = D2.replace(hour=23, minute=59)
    if case.to == RANGES["two-days"][1] and "PizzaAPI" in case.apis:
        admitted = sum(1 for e in EVENTS if e["application_id"] == "app-gold" and e["api_name"] == "PizzaAPI"
                       and last_minute <= when(e) < D3 and not e["throttled_out"])
        assert [(r[1], r[2], r[3], r[5], r[6]) for r in gold] == [("Gold", admitted, 5000, last_minute, D3)]
    else:
        assert gold == []


CHECKS: dict[tuple[str, int], Check] = {
    ("apim-usage.json", 1): check_traffic,
    ("apim-usage.json", 2): check_top_applications,
    ("apim-usage.json", 3): check_tiers,
    ("apim-usage.json", 4): check_latency,
    ("apim-usage.json", 5): check_error_rates,
    ("apim-usage.json", 6): check_quota,
}


# --- tests ------------------------------------------------------------------------------------------------

def test_dashboards_exist_and_every_panel_has_an_exact_check() -> None:
    assert DASHBOARD_FILES, f"no Grafana dashboards in {GRAFANA_DIR}"
    found = {(path.name, p["id"]) for path in DASHBOARD_FILES for p in panels(load(path))}
    assert found == set(CHECKS)


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_templating_queries_list_the_apis_seen(store: tuple[str, Engine], path: Path) -> None:
    _, engine = store
    dashboard = load(path)
    for d in dashboard["templating"]["list"]:
        if d["type"] != "query":
            continue
        for frm, to in RANGES.values():
            columns, rows = run_sql(engine, render(variable_query(d), start=frm, end=to, variables=()))
            assert len(columns) == 1
            values = [r[0] for r in rows]
            assert values == sorted(set(values), key=values.index)  # no duplicates
            assert set(values) == set(APIS) == {e["api_name"] for e in EVENTS}


@pytest.mark.parametrize("selection", list(SELECTIONS))
@pytest.mark.parametrize("interval", INTERVALS)
@pytest.mark.parametrize("range_name", list(RANGES))
@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_panel_returns_exactly_the_expected_numbers(store: tuple[str, Engine], path: Path, range_name: str,
                                                         interval: str, selection: str) -> None:
    url, engine = store
    dashboard = load(path)
    options = api_options(engine, dashboard)
    case = Case(engine, url, range_name, interval, selection)
    assert case.events, "the data set must have traffic in every tested state"
    for panel in panels(dashboard):
        check = CHECKS[(path.name, panel["id"])]
        assert len(panel["targets"]) == 1, panel["title"]
        sql = render(panel["targets"][0]["rawSql"], start=case.frm, end=case.to, interval=interval,
                     variables=variables(dashboard, options, case.selection))
        assert "$" not in sql, sql  # every macro and variable expanded
        columns, rows = run_sql(engine, sql)
        assert rows, f"{panel['title']}: no rows"
        check(case, columns, rows)


def test_the_quota_panel_sees_binding_windows_only(store: tuple[str, Engine]) -> None:
    """Past the end of every window (a range ending on D3 at noon), no decision binds: the panel is empty,
    as throttle_status reports nothing used then."""
    _, engine = store
    path = GRAFANA_DIR / "apim-usage.json"
    dashboard = load(path)
    panel = next(p for p in panels(dashboard) if p["id"] == 6)
    frm, to = grafana_range(D3, D3 + DAY)
    sql = render(panel["targets"][0]["rawSql"], start=frm, end=to, interval="1h",
                 variables=variables(dashboard, api_options(engine, dashboard), [ALL]))
    _, rows = run_sql(engine, sql)
    assert rows == []
    keys = {subscription_key(e["application_id"], e["api_context"], e["api_version"]) for e in EVENTS}
    assert all(throttle_status(engine, "subscription", k, to).used == 0 for k in keys)
