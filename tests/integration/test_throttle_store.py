"""The throttle-quota store on both real stores: counters, decisions, status and the CLI."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select

from apim_analytics.cli import main
from store import throttle
from store.engine import create_schema, make_engine
from store.tables import throttle_counters, throttle_decisions, throttle_policies
from store.throttle import (
    ThrottleAssignment,
    ThrottleCount,
    ThrottlePolicy,
    ThrottleStatus,
    api_key,
    application_key,
    apply_counts,
    ensure_default_policies,
    load_policies,
    store_policies,
    subscription_key,
    throttle_status,
    throttled_keys,
)

pytestmark = pytest.mark.integration

SUB = subscription_key("app-1", "/pizzashack", "1.0.0")  # app-1:/pizzashack:1.0.0
T12 = datetime(2024, 5, 1, 12, 0)


def _at(minute: int, second: int = 0, hour: int = 12) -> datetime:
    return datetime(2024, 5, 1, hour, minute, second)


@pytest.fixture(autouse=True)
def _log_handler_on_this_tests_stderr() -> Iterator[None]:
    """main() installs its log handler once, on the sys.stderr of the first test that ran it; capsys closes
    that stream afterwards, so drop the handler around each test and let main() bind the current one."""
    def drop() -> None:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_apim", False)]:
            root.removeHandler(handler)
    drop()
    yield
    drop()


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    eng = make_engine(store_url)
    create_schema(eng)
    assert ensure_default_policies(eng) == 13
    yield eng
    eng.dispose()


def _apply(engine: Engine, counts: Sequence[ThrottleCount], now: datetime = T12) -> int:
    with engine.begin() as conn:
        return apply_counts(conn, counts, now=now)


def _counters(engine: Engine) -> dict[tuple[str, str, str, datetime], tuple[str, int, int]]:
    with engine.connect() as conn:
        return {(r.level, r.throttle_key, r.window_unit, r.window_start): (r.policy, r.requests, r.bytes)
                for r in conn.execute(select(throttle_counters))}


def _decision(engine: Engine, level: str, key: str) -> dict | None:
    d = throttle_decisions.c
    with engine.connect() as conn:
        row = conn.execute(select(throttle_decisions).where(d.level == level, d.throttle_key == key)).first()
    return None if row is None else dict(row._mapping)


def _sub(n: int, minute: datetime = T12, policy: str = "Bronze", nbytes: int = 0) -> ThrottleCount:
    return ThrottleCount("subscription", SUB, policy, minute, n, nbytes)


def test_bronze_quota_near_limit_throttled_and_reset(engine: Engine) -> None:
    # two counts for the same minute in one call are summed before the upsert
    assert _apply(engine, [_sub(500, nbytes=5000), _sub(299, nbytes=2990)], now=_at(0, 20)) == 1
    d = _decision(engine, "subscription", SUB)
    assert (d["policy"], d["used"], d["quota"], d["throttled"], d["near_limit"]) == ("Bronze", 799, 1000, False, False)
    assert (d["window_start"], d["window_end"], d["updated_at"]) == (_at(0), _at(1), _at(0, 20))

    _apply(engine, [_sub(1)])
    d = _decision(engine, "subscription", SUB)
    assert (d["used"], d["throttled"], d["near_limit"]) == (800, False, True)

    _apply(engine, [_sub(199)])
    assert throttle_status(engine, "subscription", SUB, _at(0, 30)) == ThrottleStatus(
        "subscription", SUB, "Bronze", 1000, 999, 1, False, True, _at(1), _at(0))
    assert throttled_keys(engine, _at(0, 30)) == []

    _apply(engine, [_sub(1)])
    throttled = ThrottleStatus("subscription", SUB, "Bronze", 1000, 1000, 0, True, True, _at(1), _at(0))
    assert throttle_status(engine, "subscription", SUB, _at(0, 59)) == throttled
    assert throttled_keys(engine, _at(0, 59)) == [throttled]
    # the minute is over: the quota is back
    assert throttle_status(engine, "subscription", SUB, _at(1)) == ThrottleStatus(
        "subscription", SUB, "Bronze", 1000, 0, 1000, False, False, _at(2), _at(1))
    assert throttled_keys(engine, _at(1)) == []

    _apply(engine, [_sub(10, _at(1), nbytes=100)])
    d = _decision(engine, "subscription", SUB)
    assert (d["window_start"], d["used"], d["throttled"], d["near_limit"]) == (_at(1), 10, False, False)

    # a late event for 12:00 lands in its own window and does not move the decision back
    _apply(engine, [_sub(5, _at(0, 0))])
    assert _counters(engine) == {
        ("subscription", SUB, "1min", _at(0)): ("Bronze", 1005, 7990),
        ("subscription", SUB, "1min", _at(1)): ("Bronze", 10, 100),
    }
    d = _decision(engine, "subscription", SUB)
    assert (d["window_start"], d["window_end"], d["used"]) == (_at(1), _at(2), 10)


def test_bandwidth_policy_per_hour(engine: Engine) -> None:
    with engine.begin() as conn:
        store_policies(conn, [ThrottlePolicy("subscription", "Data1MB", "bandwidthVolume", 1_000_000, 1, "hour")])
    _apply(engine, [_sub(3, _at(5), "Data1MB", 600_000)])
    assert throttle_status(engine, "subscription", SUB, _at(6)) == ThrottleStatus(
        "subscription", SUB, "Data1MB", 1_000_000, 600_000, 400_000, False, False, _at(0, hour=13), _at(0))
    _apply(engine, [_sub(2, _at(40), "Data1MB", 250_000), _sub(1, _at(41), "Data1MB", 150_000)])
    assert _counters(engine) == {("subscription", SUB, "1hour", _at(0)): ("Data1MB", 6, 1_000_000)}
    assert throttle_status(engine, "subscription", SUB, _at(59, 59)) == ThrottleStatus(
        "subscription", SUB, "Data1MB", 1_000_000, 1_000_000, 0, True, True, _at(0, hour=13), _at(0))
    assert throttle_status(engine, "subscription", SUB, _at(10, hour=13)) == ThrottleStatus(
        "subscription", SUB, "Data1MB", 1_000_000, 0, 1_000_000, False, False, _at(0, hour=14), _at(0, hour=13))


def test_api_level_policy_comes_from_the_assignment(engine: Engine) -> None:
    assigned, unassigned = api_key("/pizzashack", "1.0.0"), api_key("/menu", "2.0")
    with engine.begin() as conn:
        store_policies(conn, [ThrottlePolicy("api", "100Per5Min", "requestCount", 100, 5, "min")],
                       [ThrottleAssignment("api", assigned, "100Per5Min")])
    assert throttle_status(engine, "api", assigned, _at(2)) == ThrottleStatus(
        "api", assigned, "100Per5Min", 100, 0, 100, False, False, _at(5), _at(0))
    counts = [ThrottleCount("api", assigned, "", _at(m), 30, 0) for m in (1, 3, 4)]
    counts.append(ThrottleCount("api", unassigned, "", _at(1), 500, 0))
    assert _apply(engine, counts) == 1
    assert _counters(engine) == {("api", assigned, "5min", _at(0)): ("100Per5Min", 90, 0)}
    assert _decision(engine, "api", unassigned) is None
    assert throttle_status(engine, "api", unassigned, _at(2)) == ThrottleStatus(
        "api", unassigned, None, None, 0, None, False, False, _at(3), _at(2))
    _apply(engine, [ThrottleCount("api", assigned, "", _at(4, 59), 10, 0)])
    assert throttled_keys(engine, _at(4, 59)) == [ThrottleStatus(
        "api", assigned, "100Per5Min", 100, 100, 0, True, True, _at(5), _at(0))]
    assert throttled_keys(engine, _at(5)) == []


def test_unknown_policy_counts_as_unlimited_and_is_logged_once(engine: Engine, caplog: pytest.LogCaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throttle, "_warned_unknown", set())
    with caplog.at_level(logging.WARNING, logger="store.throttle"):
        _apply(engine, [_sub(7000, _at(0), "Platinum")])
        _apply(engine, [_sub(3000, _at(0), "Platinum")])
    assert [r.getMessage() for r in caplog.records] == ["unknown throttle policy; counting it as Unlimited"]
    assert _counters(engine) == {("subscription", SUB, "1min", _at(0)): ("Unlimited", 10000, 0)}
    assert throttle_status(engine, "subscription", SUB, _at(0, 30)) == ThrottleStatus(
        "subscription", SUB, "Unlimited", None, 10000, None, False, False, _at(1), _at(0))


def test_application_keys(engine: Engine) -> None:
    alice, bob, carol = (application_key("app-1", u) for u in ("alice", "bob", "carol"))
    _apply(engine, [ThrottleCount("application", alice, "50PerMin", _at(0), 50, 0),
                    ThrottleCount("application", bob, "50PerMin", _at(0), 40, 0),
                    ThrottleCount("application", carol, "10PerMin", _at(0), 9, 0)])
    status = {k: throttle_status(engine, "application", k, _at(0, 1)) for k in (alice, bob, carol)}
    assert {k: (s.policy, s.used, s.remaining, s.throttled, s.near_limit) for k, s in status.items()} == {
        alice: ("50PerMin", 50, 0, True, True),
        bob: ("50PerMin", 40, 10, False, True),
        carol: ("10PerMin", 9, 1, False, True),
    }
    assert [s.throttle_key for s in throttled_keys(engine, _at(0, 1))] == [alice]
    # a never-counted application key: no policy known yet
    assert throttle_status(engine, "application", "app-9:dave", _at(0, 1)) == ThrottleStatus(
        "application", "app-9:dave", None, None, 0, None, False, False, _at(1), _at(0))


def test_stop_on_quota_reach_false_reports_but_does_not_throttle(engine: Engine) -> None:
    with engine.begin() as conn:
        store_policies(conn, [ThrottlePolicy("subscription", "Overage", "requestCount", 10, 1, "day",
                                             stop_on_quota_reach=False)])
    _apply(engine, [_sub(12, _at(0), "Overage")])
    assert throttle_status(engine, "subscription", SUB, _at(30)) == ThrottleStatus(
        "subscription", SUB, "Overage", 10, 12, 0, False, True, datetime(2024, 5, 2), datetime(2024, 5, 1))


def test_monthly_policy_rolls_over_at_the_calendar_month(engine: Engine) -> None:
    with engine.begin() as conn:
        store_policies(conn, [ThrottlePolicy("subscription", "1KPerMonth", "requestCount", 1000, 1, "month")])
    _apply(engine, [_sub(600, datetime(2023, 12, 1), "1KPerMonth"),
                    _sub(400, datetime(2023, 12, 31, 23, 59), "1KPerMonth")])
    assert throttle_status(engine, "subscription", SUB, datetime(2023, 12, 31, 23, 59, 59)) == ThrottleStatus(
        "subscription", SUB, "1KPerMonth", 1000, 1000, 0, True, True, datetime(2024, 1, 1), datetime(2023, 12, 1))
    _apply(engine, [_sub(1, datetime(2024, 1, 1), "1KPerMonth")])
    assert _counters(engine) == {
        ("subscription", SUB, "1month", datetime(2023, 12, 1)): ("1KPerMonth", 1000, 0),
        ("subscription", SUB, "1month", datetime(2024, 1, 1)): ("1KPerMonth", 1, 0),
    }
    d = _decision(engine, "subscription", SUB)
    assert (d["window_start"], d["window_end"], d["used"], d["throttled"]) == (
        datetime(2024, 1, 1), datetime(2024, 2, 1), 1, False)


def test_thousands_of_keys_in_one_call(engine: Engine) -> None:
    """More keys than one IN-list chunk: every key gets its own exact decision."""
    counts = [ThrottleCount("subscription", subscription_key(f"app-{i}", "/a", "1"), "Gold", _at(0), i, 0)
              for i in range(1200)]
    counts += [ThrottleCount("subscription", subscription_key("app-7", "/a", "1"), "Gold", _at(0), 4993, 0)]
    assert _apply(engine, counts) == 1200
    with engine.connect() as conn:
        rows = {r.throttle_key: (r.used, r.throttled, r.near_limit)
                for r in conn.execute(select(throttle_decisions))}
    assert len(rows) == 1200
    assert rows["app-0:/a:1"] == (0, False, False)
    assert rows["app-7:/a:1"] == (5000, True, True)
    assert rows["app-1199:/a:1"] == (1199, False, False)
    assert [s.throttle_key for s in throttled_keys(engine, _at(0, 30))] == ["app-7:/a:1"]


def test_defaults_never_overwrite_a_users_edit(engine: Engine) -> None:
    with engine.begin() as conn:
        store_policies(conn, [ThrottlePolicy("subscription", "Gold", "requestCount", 10000, 1, "min")])
    assert ensure_default_policies(engine) == 0
    with engine.connect() as conn:
        policies = load_policies(conn)
        assert conn.execute(select(throttle_policies.c.name)).all().__len__() == 13
    assert policies[("subscription", "Gold")].quota == 10000
    assert policies[("subscription", "Silver")].quota == 2000


# --- the CLI -------------------------------------------------------------------------------------

def _err_lines(err: str) -> list[str]:
    """stderr without the JSON log lines other components (migrations) write."""
    return [line for line in err.splitlines() if not line.startswith("{")]


def test_cli_status_table_and_json(engine: Engine, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _apply(engine, [_sub(1000)])
    assert main(["throttle", "status", "--store", store_url, "--level", "subscription", SUB,
                 "--now", "2024-05-01T12:00:30Z"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["LEVEL", "KEY", "POLICY", "USED", "QUOTA", "REMAINING", "THROTTLED", "NEAR_LIMIT", "WINDOW_START",
         "RESETS_AT"],
        ["subscription", SUB, "Bronze", "1000", "1000", "0", "yes", "yes", "2024-05-01", "12:00:00", "2024-05-01",
         "12:01:00"],
    ]
    # an offset in --now is honoured: 14:01:30+02:00 is 12:01:30 UTC, after the window
    assert main(["throttle", "status", "--store", store_url, "--level", "subscription", SUB,
                 "--now", "2024-05-01T14:01:30+02:00", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "level": "subscription", "throttle_key": SUB, "policy": "Bronze", "quota": 1000, "used": 0,
        "remaining": 1000, "throttled": False, "near_limit": False, "resets_at": "2024-05-01T12:02:00Z",
        "window_start": "2024-05-01T12:01:00Z"}


def test_cli_throttled_uses_the_env_store(engine: Engine, store_url: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIM_STORE_URL", store_url)
    _apply(engine, [_sub(1000), ThrottleCount("application", "app-1:alice", "10PerMin", T12, 3, 0)])
    assert main(["throttle", "throttled", "--now", "2024-05-01T12:00:10", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{
        "level": "subscription", "throttle_key": SUB, "policy": "Bronze", "quota": 1000, "used": 1000,
        "remaining": 0, "throttled": True, "near_limit": True, "resets_at": "2024-05-01T12:01:00Z",
        "window_start": "2024-05-01T12:00:00Z"}]
    assert main(["throttle", "throttled", "--now", "2024-05-01T12:01:00"]) == 0
    assert capsys.readouterr().out == "no throttled keys at 2024-05-01 12:01:00 UTC\n"


def test_cli_policies_load_and_list(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text("policies:\n"
                    "  - {level: api, name: 5PerDay, quota_type: requestCount, quota: 5, unit_time: 1,"
                    " time_unit: day, description: trial}\n"
                    "assignments:\n"
                    "  - {level: api, throttle_key: '/ctx:1.0', policy: 5PerDay}\n"
                    "  - {level: api, throttle_key: '/big:2.0', policy: 50KPerMin}\n", encoding="utf-8")
    assert main(["throttle", "policies", "load", str(path), "--store", store_url]) == 0  # a fresh store
    assert capsys.readouterr().out == "throttle policies: 1 policies and 2 assignments written to the store\n"
    assert main(["throttle", "policies", "list", "--store", store_url, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed["policies"]) == 14
    assert {"level": "api", "name": "5PerDay", "quota_type": "requestCount", "quota": 5, "unit_time": 1,
            "time_unit": "day", "stop_on_quota_reach": True, "description": "trial"} in listed["policies"]
    assert listed["assignments"] == [{"level": "api", "throttle_key": "/big:2.0", "policy": "50KPerMin"},
                                     {"level": "api", "throttle_key": "/ctx:1.0", "policy": "5PerDay"}]
    assert main(["throttle", "policies", "list", "--store", store_url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["LEVEL", "NAME", "QUOTA_TYPE", "QUOTA", "WINDOW", "STOP_ON_QUOTA_REACH", "DESCRIPTION"]
    assert out[1].split() == ["api", "10KPerMin", "requestCount", "10000", "1min", "yes", "Allows", "10000",
                              "requests", "per", "minute"]
    assert ["api", "5PerDay", "requestCount", "5", "1day", "yes", "trial"] in [line.split() for line in out]
    assert out[-3:] == ["LEVEL  THROTTLE_KEY  POLICY", "api    /big:2.0      50KPerMin", "api    /ctx:1.0      5PerDay"]
    # the assignment is in force for status
    assert main(["throttle", "status", "--store", store_url, "--level", "api", "/ctx:1.0", "--now",
                 "2024-05-01T12:00:00", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "level": "api", "throttle_key": "/ctx:1.0", "policy": "5PerDay", "quota": 5, "used": 0, "remaining": 5,
        "throttled": False, "near_limit": False, "resets_at": "2024-05-02T00:00:00Z",
        "window_start": "2024-05-01T00:00:00Z"}


@pytest.mark.parametrize(("argv", "message"), [
    (["throttle", "status", "--level", "tenant", "k"],
     "apim-analytics: --level: expected subscription, application or api, got 'tenant'"),
    (["throttle", "status", "--level", "api", "k", "--now", "noon"],
     "apim-analytics: --now 'noon' is not an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z)"),
    (["throttle", "throttled", "--format", "xml"], "apim-analytics: --format: expected table or json, got 'xml'"),
])
def test_cli_bad_arguments_exit_2(store_url: str, argv: list[str], message: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--store", store_url]) == 2
    captured = capsys.readouterr()
    assert (captured.out, _err_lines(captured.err)) == ("", [message])


def test_cli_bad_policy_files_exit_2(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    absent = tmp_path / "absent.yaml"
    assert main(["throttle", "policies", "load", str(absent), "--store", store_url]) == 2
    assert _err_lines(capsys.readouterr().err) == [f"apim-analytics: policies file {absent} does not exist"]

    invalid = tmp_path / "p.json"
    invalid.write_text(json.dumps({"policies": [{"level": "api", "name": "X", "quota_type": "requestCount",
                                                 "quota": 1, "unit_time": 2, "time_unit": "month"}]}))
    assert main(["throttle", "policies", "load", str(invalid), "--store", store_url]) == 2
    assert _err_lines(capsys.readouterr().err) == [
        f"apim-analytics: {invalid}: policies[0] ('X'): month windows are calendar months: unit_time must be 1, not 2"]

    broken = tmp_path / "p.yaml"
    broken.write_text("policies: [\n", encoding="utf-8")
    assert main(["throttle", "policies", "load", str(broken), "--store", store_url]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"apim-analytics: {broken}: not valid YAML at line 2, column 1: ")
    # nothing was written by the refused files: each was refused before the store was opened
    engine = make_engine(store_url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()


def test_cli_unusable_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["throttle", "throttled", "--store", "mysql://u:secret@h/db"]) == 2  # the URL: a usage error
    assert _err_lines(capsys.readouterr().err) == [
        "apim-analytics: store URL 'mysql://u:***@h/db': only sqlite and postgresql are supported, not mysql"]
    bad = f"sqlite:///{tmp_path}/no/such/dir/x.db"
    assert main(["throttle", "throttled", "--store", bad]) == 1  # the store's state: a runtime failure
    assert _err_lines(capsys.readouterr().err) == [
        f"apim-analytics: store '{bad}' does not exist; check --store / APIM_STORE_URL, or fill it with "
        "'apim-analytics pipeline run'"]
    assert not (tmp_path / "no").exists()
