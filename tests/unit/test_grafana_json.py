"""The Grafana dashboards' JSON (dashboards/grafana/*.json) is importable and every query follows the rules,
and the macro expander the integration test relies on (tests/support/grafana_macros.py) expands as Grafana does.

Rules checked on every dashboard, without a database:
- importable: ``__inputs`` declares the data source ``DS_APIM`` (PostgreSQL), and every panel, target and
  query variable uses ``${DS_APIM}`` and nothing else; schemaVersion 39; unique panel ids; gridPos set,
  inside the 24-column grid, no overlaps; every panel type listed in ``__requires``;
- every raw SQL reads only tables and views the store has (store/tables.py, store/views.py);
- a query reading a time-bucketed table or view filters it with ``$__timeFilter(<its time column>)``;
- a query reading per-API data uses the ``api`` variable, as ``api_name IN ($api)`` (it is multi-value);
- a time-series query returns a ``time`` column, and its panel's min interval is at least the
  granularity of the fact table it groups (usage_hour -> 1h);
- a histogram query lists lat_b00 .. lat_b56 in order;
- no ``$`` inside SQL comments (newer Grafana strips comments before expanding macros, older ones expand
  them inside comments: the SQL must mean the same either way);
- every macro and variable expands (nothing with ``$`` is left for PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from store.latency import BUCKET_COUNT, histogram_column
from store.tables import metadata
from store.views import VIEWS
from tests.support.grafana_macros import (
    ALL,
    MacroError,
    Variable,
    expand_macros,
    go_float,
    parse_interval,
    render,
)

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "grafana"
DASHBOARD_FILES = sorted(GRAFANA_DIR.glob("*.json"))
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "${DS_APIM}"}

# relations the store has: name -> columns
RELATIONS: dict[str, set[str]] = {
    **{name: {c.name for c in table.columns} for name, table in metadata.tables.items()},
    **{v.name: set(v.columns) for v in VIEWS},
}
TIME_COLUMN = {name: next(c for c in ("bucket_start", "day", "month") if c in cols)
               for name, cols in RELATIONS.items() if cols & {"bucket_start", "day", "month"}}
PER_API = {name for name, cols in RELATIONS.items() if "api_name" in cols}
GRANULARITY_SECONDS = {"usage_minute": 60, "usage_hour": 3600, "usage_day": 86400}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(where, panel or None, rawSql) for every panel target and every query variable."""
    out: list[tuple[str, dict[str, Any] | None, str]] = []
    for p in panels(dashboard):
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} {p.get('title')!r} target {t.get('refId')}", p, t.get("rawSql", "")))
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]
            out.append((f"variable {v['name']}", None, q["rawSql"] if isinstance(q, dict) else q))
    return out


def strip_comments_and_strings(sql: str) -> str:
    sql = re.sub(r"--[^\n]*", " ", sql)
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.DOTALL)
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def relations(sql: str) -> set[str]:
    """Tables and views a query reads (FROM / JOIN targets that are not CTEs or functions)."""
    body = strip_comments_and_strings(sql)
    ctes = set(re.findall(r"(?:\bWITH|,)\s*([a-z_]\w*)\s+AS\s*\(", body, flags=re.IGNORECASE))
    names = re.findall(r"\b(?:FROM|JOIN)\s+(?:LATERAL\s+)?(?!LATERAL\b)([a-z_]\w*)\b(?!\s*\()", body,
                       flags=re.IGNORECASE)
    return {n for n in names if n not in ctes}


def all_queries() -> list[tuple[str, str, dict[str, Any] | None, str]]:
    return [(path.name, where, panel, sql) for path in DASHBOARD_FILES for where, panel, sql in queries(load(path))]


QUERY_IDS = [f"{f}:{w}" for f, w, _, _ in all_queries()]


def test_there_are_dashboards() -> None:
    assert DASHBOARD_FILES, f"no dashboards in {GRAFANA_DIR}"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_is_importable(path: Path) -> None:
    d = load(path)
    assert d["schemaVersion"] == 39
    assert d["title"] and d["uid"] and d["id"] is None
    assert d["__inputs"] == [{"name": "DS_APIM", "label": d["__inputs"][0]["label"],
                              "description": d["__inputs"][0]["description"], "type": "datasource",
                              "pluginId": "grafana-postgresql-datasource", "pluginName": "PostgreSQL"}]
    required = {(r["type"], r["id"]) for r in d["__requires"]}
    assert ("datasource", "grafana-postgresql-datasource") in required
    assert ("grafana", "grafana") in required
    assert {("panel", p["type"]) for p in panels(d) if p["type"] != "row"} <= required
    # the only data source anywhere is the input (the built-in annotation query aside)
    uids = re.findall(r'"uid":\s*"([^"]*)"', path.read_text(encoding="utf-8"))
    assert set(uids) - {d["uid"], "-- Grafana --"} == {"${DS_APIM}"}


def test_dashboard_uids_are_unique() -> None:
    uids = [load(p)["uid"] for p in DASHBOARD_FILES]
    assert len(uids) == len(set(uids))


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_panels_have_unique_ids_datasource_and_place(path: Path) -> None:
    d = load(path)
    ps = panels(d)
    ids = [p["id"] for p in ps]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: dict[tuple[int, int], int] = {}
    for p in ps:
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("h", "w", "x", "y")), p["title"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['id']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("description"), p["id"]
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            assert t["rawQuery"] is True and t["editorMode"] == "code" and t["rawSql"].strip(), p["title"]
            assert t["format"] in ("time_series", "table"), p["title"]


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_api_variable(path: Path) -> None:
    d = load(path)
    api = [v for v in d["templating"]["list"] if v["name"] == "api"]
    assert len(api) == 1
    v = api[0]
    assert v["type"] == "query" and v["datasource"] == DATASOURCE
    assert v["multi"] is True and v["includeAll"] is True and not v.get("allValue")
    assert v["refresh"] in (1, 2)  # on load / on time range change
    query = v["query"]["rawSql"] if isinstance(v["query"], dict) else v["query"]
    assert relations(query) == {"api_catalog"}
    assert v["current"]["value"] == [ALL]


@pytest.mark.parametrize(("file", "where", "panel", "sql"), all_queries(), ids=QUERY_IDS)
def test_queries_read_known_relations(file: str, where: str, panel: dict[str, Any] | None, sql: str) -> None:
    read = relations(sql)
    assert read, f"{where}: reads nothing?"
    assert read <= set(RELATIONS), f"{where}: unknown table(s) {sorted(read - set(RELATIONS))}"


@pytest.mark.parametrize(("file", "where", "panel", "sql"), all_queries(), ids=QUERY_IDS)
def test_time_bucketed_reads_use_time_filter(file: str, where: str, panel: dict[str, Any] | None, sql: str) -> None:
    if panel is None:
        return  # variables list the catalog for any range
    body = strip_comments_and_strings(sql)
    filtered = {c.split(".")[-1].strip() for c in re.findall(r"\$__timeFilter\(([^)]*)\)", body)}
    for rel in relations(sql) & set(TIME_COLUMN):
        assert TIME_COLUMN[rel] in filtered, f"{where}: reads {rel} without $__timeFilter({TIME_COLUMN[rel]})"


@pytest.mark.parametrize(("file", "where", "panel", "sql"), all_queries(), ids=QUERY_IDS)
def test_per_api_reads_use_the_api_variable(file: str, where: str, panel: dict[str, Any] | None, sql: str) -> None:
    if panel is None:
        return  # the variable's own query
    body = strip_comments_and_strings(sql)
    if relations(sql) & PER_API:
        assert re.search(r"\bapi_name\s+IN\s*\(\s*(?:\$api|\$\{api\}|\$\{api:sqlstring\})\s*\)", body), \
            f"{where}: reads per-API data without api_name IN ($api)"
    uses = re.findall(r"\$\{?api\b[^)\s]*", body)
    assert len(uses) == len(re.findall(r"\bIN\s*\(\s*\$\{?api\b", body)), f"{where}: $api outside an IN list"


@pytest.mark.parametrize(("file", "where", "panel", "sql"), all_queries(), ids=QUERY_IDS)
def test_time_series_queries(file: str, where: str, panel: dict[str, Any] | None, sql: str) -> None:
    if panel is None or not any(t["format"] == "time_series" for t in panel["targets"]):
        return
    body = strip_comments_and_strings(sql)
    assert re.search(r'\$__timeGroupAlias\(|\$__time\(|AS "time"', body), f"{where}: no time column"
    grouped = re.findall(r"\$__timeGroup(?:Alias)?\(\s*\w+\s*,\s*([^,)]+)", body)
    assert grouped, f"{where}: a time series should group by $__timeGroup"
    finest = max((GRANULARITY_SECONDS[r] for r in relations(sql) if r in GRANULARITY_SECONDS), default=0)
    if any(g.strip() == "$__interval" for g in grouped):
        assert parse_interval(panel.get("interval") or "1s") >= finest, \
            f"{where}: min interval {panel.get('interval')!r} finer than the table's buckets"


@pytest.mark.parametrize(("file", "where", "panel", "sql"), all_queries(), ids=QUERY_IDS)
def test_histogram_queries_list_every_bucket_in_order(file: str, where: str, panel: dict[str, Any] | None,
                                                      sql: str) -> None:
    listed = re.findall(r"\blat_b\d\d\b", strip_comments_and_strings(sql))
    if listed:
        assert listed == [histogram_column(i) for i in range(BUCKET_COUNT)], where


@pytest.mark.parametrize(("file", "where", "panel", "sql"), all_queries(), ids=QUERY_IDS)
def test_no_macros_in_comments_and_everything_expands(file: str, where: str, panel: dict[str, Any] | None,
                                                      sql: str) -> None:
    comments = re.findall(r"--[^\n]*|/\*.*?\*/", sql, flags=re.DOTALL)
    assert not any("$" in c for c in comments), where
    api = Variable("api", [ALL], multi=True, include_all=True, options=["A", "B's"])
    expanded = render(sql, start=dt.datetime(2024, 1, 1), end=dt.datetime(2024, 1, 2), interval="1h",
                      variables=[api])
    assert "$" not in expanded, where


# --- the expander, against Grafana's own expectations (macros_test.go, SqlDatasource.ts) ----------------------

FROM = dt.datetime(2018, 4, 12, 18, 0, 0)
TO = FROM + dt.timedelta(minutes=5)


@pytest.mark.parametrize(("sql", "want"), [
    ("select $__time(time_column)", 'select time_column AS "time"'),
    ("select min($__time(time_column))", 'select min(time_column AS "time")'),
    ("WHERE $__timeFilter(time_column)", "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"),
    ("select $__timeFrom()", "select '2018-04-12T18:00:00Z'"),
    ("select $__timeTo()", "select '2018-04-12T18:05:00Z'"),
    ("SELECT $__timeGroup(time_column,'5m'), value",
     'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'),
    ("SELECT $__timeGroup(time_column,'5m') as time, value",
     "SELECT floor(extract(epoch from time_column)/300)*300 as time, value"),
    ("SELECT $__timeGroup(time_column,'5m')", "SELECT floor(extract(epoch from time_column)/300)*300"),
    ("SELECT $__timeGroupAlias(time_column,'5m')", 'SELECT floor(extract(epoch from time_column)/300)*300 AS "time"'),
    ("$__timeGroup(time_column , '5m')", "floor(extract(epoch from time_column)/300)*300"),
    ("$__timeGroup(time_column, 1h, NULL)", "floor(extract(epoch from time_column)/3600)*3600"),
    ("$__timeGroup(t, 12d)", "floor(extract(epoch from t)/1.0368e+06)*1.0368e+06"),
    ("select $__unixEpochFilter(time)", "select time >= 1523556000 AND time <= 1523556300"),
    ("select $__unixEpochNanoFilter(time)", "select time >= 1523556000000000000 AND time <= 1523556300000000000"),
    ("select $__unixEpochNanoFrom()", "select 1523556000000000000"),
    ("SELECT $__unixEpochGroup(time_column+time_adjustment,'5m')",
     "SELECT floor((time_column+time_adjustment)/300)*300"),
    ("SELECT $__unixEpochGroupAlias(c,'5m')", 'SELECT floor((c)/300)*300 AS "time"'),
])
def test_macros_expand_as_grafana_does(sql: str, want: str) -> None:
    assert expand_macros(sql, FROM, TO) == want


def test_timescaledb_time_groups_and_fractional_times() -> None:
    assert expand_macros("GROUP BY $__timeGroup(time_column , '12d')", FROM, TO, timescaledb=True) == \
        "GROUP BY time_bucket('1036800.000s',time_column)"
    assert expand_macros("GROUP BY $__timeGroup(c,'20ms')", FROM, TO, timescaledb=True) == \
        "GROUP BY time_bucket('0.020s',c)"
    frm, to = dt.datetime(1960, 2, 1, 7, 0, 0, 500_000), dt.datetime(1980, 2, 3, 8, 0, 0, 500_000)
    assert expand_macros("$__timeFilter(c)", frm, to) == \
        "c BETWEEN '1960-02-01T07:00:00.5Z' AND '1980-02-03T08:00:00.5Z'"
    aware = dt.datetime(2018, 4, 12, 20, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert expand_macros("$__timeFrom()", aware, TO) == "'2018-04-12T18:00:00Z'"


def test_unknown_macros_and_bad_intervals_fail() -> None:
    with pytest.raises(MacroError, match="unknown macro"):
        expand_macros("$__nope(x)", FROM, TO)
    with pytest.raises(MacroError, match="needs time column and interval"):
        expand_macros("$__timeGroup(x)", FROM, TO)
    with pytest.raises(MacroError, match="calendar"):
        parse_interval("1M")
    with pytest.raises(MacroError, match="parsing interval"):
        parse_interval("fortnight")
    assert [parse_interval(t) for t in ("1h", "30m", "2d", "1w", "1h30m", "500ms")] == \
        [3600, 1800, 172800, 604800, 5400, 0.5]
    assert [go_float(x) for x in (300.0, 3600.0, 86400.0, 604800.0, 1209600.0, 0.5, 1e-05)] == \
        ["300", "3600", "86400", "604800", "1.2096e+06", "0.5", "1e-05"]


def test_variables_are_quoted_as_the_sql_data_sources_do() -> None:
    def expand(sql: str, var: Variable) -> str:
        return render(sql, start=FROM, end=TO, variables=[var])

    multi = Variable("api", ["A", "Bob's"], multi=True, include_all=True, options=["A", "Bob's", "C"])
    assert expand("x IN ($api)", multi) == "x IN ('A','Bob''s')"
    assert expand("x IN (${api})", multi) == "x IN ('A','Bob''s')"
    assert expand("x IN ([[api]])", multi) == "x IN ('A','Bob''s')"
    assert expand("x IN (${api:sqlstring})", multi) == "x IN ('A','Bob''s')"
    assert expand("'${api:csv}'", multi) == "'A,Bob's'"
    assert expand("${api:pipe} ${api:json} ${api:singlequote}", multi) == "A|Bob's [\"A\",\"Bob's\"] 'A','Bob\\'s'"
    everything = Variable("api", [ALL], multi=True, include_all=True, options=["A", "Bob's", "C"])
    assert expand("x IN ($api)", everything) == "x IN ('A','Bob''s','C')"
    custom_all = Variable("api", ALL, multi=True, include_all=True, all_value="x IS NOT NULL OR 1=1")
    assert expand("$api", custom_all) == "x IS NOT NULL OR 1=1"
    one_of_multi = Variable("api", "Bob's", multi=True)
    assert expand("x IN ($api)", one_of_multi) == "x IN ('Bob''s')"
    single = Variable("api", "Bob's")
    assert expand("x = '$api'", single) == "x = 'Bob''s'"
    # names that are not variables are left for the backend (or for PostgreSQL, as Grafana does)
    assert expand("$other $__timeFilter(t)", single) == \
        "$other t BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"
    with pytest.raises(MacroError, match="no 'All' option"):
        expand("$api", Variable("api", ALL))


def test_builtin_interval_and_range_variables() -> None:
    got = render("$__interval $__interval_ms $__from $__to $__unixEpochFrom() $__unixEpochTo()",
                 start=FROM, end=TO, interval="1h")
    assert got == "1h 3600000 1523556000000 1523556300000 1523556000 1523556300"
    assert render("$__timeGroupAlias(t, $__interval)", start=FROM, end=TO, interval="1d") == \
        'floor(extract(epoch from t)/86400)*86400 AS "time"'
