"""Throttle-quota logic without a store: windows, keys, policy validation, defaults."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from store.throttle import (
    DEFAULT_POLICIES,
    PolicyError,
    ThrottleAssignment,
    ThrottlePolicy,
    api_key,
    application_key,
    load_policies_file,
    subscription_key,
    window_for,
)


def _policy(unit_time: int = 1, time_unit: str = "min") -> ThrottlePolicy:
    return ThrottlePolicy("subscription", "P", "requestCount", 10, unit_time, time_unit)


# --- windows -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("unit_time", "time_unit", "ts", "expected"), [
    (1, "min", datetime(2024, 5, 1, 12, 0, 0), ("1min", datetime(2024, 5, 1, 12, 0), datetime(2024, 5, 1, 12, 1))),
    (1, "min", datetime(2024, 5, 1, 12, 0, 59, 999999),
     ("1min", datetime(2024, 5, 1, 12, 0), datetime(2024, 5, 1, 12, 1))),
    (1, "min", datetime(2024, 5, 1, 23, 59, 30), ("1min", datetime(2024, 5, 1, 23, 59), datetime(2024, 5, 2, 0, 0))),
    (5, "min", datetime(2024, 5, 1, 12, 4, 59), ("5min", datetime(2024, 5, 1, 12, 0), datetime(2024, 5, 1, 12, 5))),
    (5, "min", datetime(2024, 5, 1, 12, 5, 0), ("5min", datetime(2024, 5, 1, 12, 5), datetime(2024, 5, 1, 12, 10))),
    (5, "min", datetime(2024, 5, 1, 23, 58), ("5min", datetime(2024, 5, 1, 23, 55), datetime(2024, 5, 2, 0, 0))),
    # 7 minutes does not divide an hour: windows are multiples of 7 min since the epoch, not hour-aligned
    (7, "min", datetime(1970, 1, 1, 0, 15), ("7min", datetime(1970, 1, 1, 0, 14), datetime(1970, 1, 1, 0, 21))),
    (1, "hour", datetime(2024, 5, 1, 12, 59, 59), ("1hour", datetime(2024, 5, 1, 12), datetime(2024, 5, 1, 13))),
    (1, "hour", datetime(2024, 12, 31, 23, 0, 1), ("1hour", datetime(2024, 12, 31, 23), datetime(2025, 1, 1, 0))),
    (3, "hour", datetime(2024, 5, 1, 14, 30), ("3hour", datetime(2024, 5, 1, 12), datetime(2024, 5, 1, 15))),
    (1, "day", datetime(2024, 2, 28, 23, 59), ("1day", datetime(2024, 2, 28), datetime(2024, 2, 29))),
    (1, "day", datetime(2024, 2, 29, 0, 0), ("1day", datetime(2024, 2, 29), datetime(2024, 3, 1))),
    (1, "day", datetime(2023, 12, 31, 12), ("1day", datetime(2023, 12, 31), datetime(2024, 1, 1))),
    (1, "month", datetime(2023, 12, 31, 23, 59, 59), ("1month", datetime(2023, 12, 1), datetime(2024, 1, 1))),
    (1, "month", datetime(2024, 1, 1, 0, 0), ("1month", datetime(2024, 1, 1), datetime(2024, 2, 1))),
    (1, "month", datetime(2024, 2, 29, 18), ("1month", datetime(2024, 2, 1), datetime(2024, 3, 1))),
    (1, "month", datetime(2023, 2, 28, 18), ("1month", datetime(2023, 2, 1), datetime(2023, 3, 1))),
    (1, "month", datetime(2024, 3, 1, 0, 0), ("1month", datetime(2024, 3, 1), datetime(2024, 4, 1))),
])
def test_window_for(unit_time: int, time_unit: str, ts: datetime, expected: tuple[str, datetime, datetime]) -> None:
    assert window_for(_policy(unit_time, time_unit), ts) == expected


def test_aware_timestamps_are_converted_to_utc() -> None:
    ts = datetime(2024, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))  # 23:30 UTC on Dec 31
    assert window_for(_policy(1, "day"), ts) == ("1day", datetime(2023, 12, 31), datetime(2024, 1, 1))


# --- keys ----------------------------------------------------------------------------------------

def test_throttle_keys_follow_wso2() -> None:
    assert subscription_key("app-1", "/pizzashack", "1.0.0") == "app-1:/pizzashack:1.0.0"
    assert application_key("app-1", "alice@carbon.super") == "app-1:alice@carbon.super"
    assert api_key("/pizzashack", "1.0.0") == "/pizzashack:1.0.0"


# --- defaults ------------------------------------------------------------------------------------

def test_defaults_are_wso2s() -> None:
    quotas = {(p.level, p.name): p.quota for p in DEFAULT_POLICIES}
    assert quotas == {
        ("subscription", "Gold"): 5000, ("subscription", "Silver"): 2000, ("subscription", "Bronze"): 1000,
        ("subscription", "Unauthenticated"): 500, ("subscription", "Unlimited"): None,
        ("application", "50PerMin"): 50, ("application", "20PerMin"): 20, ("application", "10PerMin"): 10,
        ("application", "Unlimited"): None,
        ("api", "50KPerMin"): 50000, ("api", "20KPerMin"): 20000, ("api", "10KPerMin"): 10000,
        ("api", "Unlimited"): None,
    }
    assert {(p.quota_type, p.unit_time, p.time_unit, p.stop_on_quota_reach) for p in DEFAULT_POLICIES} == {
        ("requestCount", 1, "min", True)}
    assert {p.window_unit for p in DEFAULT_POLICIES} == {"1min"}


# --- the policies file ---------------------------------------------------------------------------

GOOD = {
    "policies": [
        {"level": "subscription", "name": "Platinum", "quota_type": "requestCount", "quota": 100000,
         "unit_time": 1, "time_unit": "hour", "description": "big customers"},
        {"level": "subscription", "name": "Data10MB", "quota_type": "bandwidthVolume", "quota": 10_485_760,
         "unit_time": 1, "time_unit": "month", "stop_on_quota_reach": False},
        {"level": "api", "name": "5PerDay", "quota_type": "requestCount", "quota": 5, "unit_time": 1,
         "time_unit": "day"},
    ],
    "assignments": [
        {"level": "api", "throttle_key": "/ctx:1.0", "policy": "50KPerMin"},
        {"level": "api", "throttle_key": "/other:2.0", "policy": "5PerDay"},
    ],
}


def _write(tmp_path: Path, doc: object, name: str = "policies.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else str(doc), encoding="utf-8")
    return path


def test_a_good_file_loads_from_json(tmp_path: Path) -> None:
    policies, assignments = load_policies_file(_write(tmp_path, GOOD))
    assert policies == [
        ThrottlePolicy("subscription", "Platinum", "requestCount", 100000, 1, "hour", True, "big customers"),
        ThrottlePolicy("subscription", "Data10MB", "bandwidthVolume", 10_485_760, 1, "month", False, ""),
        ThrottlePolicy("api", "5PerDay", "requestCount", 5, 1, "day", True, ""),
    ]
    assert assignments == [ThrottleAssignment("api", "/ctx:1.0", "50KPerMin"),
                           ThrottleAssignment("api", "/other:2.0", "5PerDay")]


def test_a_good_file_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "policies.yaml"
    path.write_text(
        "policies:\n"
        "  - {level: application, name: 100PerHour, quota_type: requestCount, quota: 100, unit_time: 1,"
        " time_unit: hour}\n"
        "  - {level: subscription, name: Free, quota_type: requestCount, quota: null, unit_time: 1,"
        " time_unit: min}\n"
        "assignments:\n"
        "  - {level: api, throttle_key: '/ctx:1.0', policy: 10KPerMin}\n", encoding="utf-8")
    policies, assignments = load_policies_file(path)
    assert policies == [ThrottlePolicy("application", "100PerHour", "requestCount", 100, 1, "hour"),
                        ThrottlePolicy("subscription", "Free", "requestCount", None, 1, "min")]
    assert assignments == [ThrottleAssignment("api", "/ctx:1.0", "10KPerMin")]


def _with_policy(**changes: object) -> dict:
    entry = {"level": "subscription", "name": "Custom", "quota_type": "requestCount", "quota": 10,
             "unit_time": 1, "time_unit": "min", **changes}
    return {"policies": [GOOD["policies"][0], {k: v for k, v in entry.items() if v is not ...}]}


@pytest.mark.parametrize(("doc", "message"), [
    (_with_policy(level="tenant"), r"policies\[1\] \('Custom'\): unknown level 'tenant' \(expected subscription"),
    (_with_policy(time_unit="week"), r"policies\[1\] \('Custom'\): unknown time_unit 'week' \(expected min, hour"),
    (_with_policy(quota_type="requests"), r"policies\[1\] \('Custom'\): unknown quota_type 'requests'"),
    (_with_policy(quota=-1), r"policies\[1\] \('Custom'\): negative quota -1$"),
    (_with_policy(quota="many"), r"policies\[1\] \('Custom'\): quota must be an integer or null"),
    (_with_policy(unit_time=0), r"policies\[1\] \('Custom'\): unit_time must be an integer >= 1, not 0"),
    (_with_policy(unit_time=3, time_unit="month"),
     r"policies\[1\] \('Custom'\): month windows are calendar months: unit_time must be 1, not 3"),
    (_with_policy(name=""), r"policies\[1\] \(''\): policy name must be a non-empty string"),
    (_with_policy(stop_on_quota_reach="sometimes"), r"policies\[1\] \('Custom'\): stop_on_quota_reach must be"),
    (_with_policy(quota=...), r"policies\[1\]: missing quota$"),
    (_with_policy(quata=5), r"policies\[1\]: unknown field\(s\) quata$"),
    (_with_policy(name="Platinum"),
     r"policies\[1\]: duplicate policy 'Platinum' at level subscription \(first defined at policies\[0\]\)"),
    ({"assignments": [{"level": "api", "throttle_key": "/ctx:1.0", "policy": "Gold"}]},
     r"assignments\[0\]: unknown policy 'Gold' at level api$"),
    ({"assignments": [{"level": "api", "throttle_key": "/a:1", "policy": "10KPerMin"},
                      {"level": "api", "throttle_key": "/b:1", "policy": "1PerYear"}]},
     r"assignments\[1\]: unknown policy '1PerYear' at level api$"),
    ({"assignments": [{"level": "subscription", "throttle_key": "app:/a:1", "policy": "Gold"}]},
     r"assignments\[0\]: assignments are for level 'api' only"),
    ({"assignments": [{"level": "api", "throttle_key": "/a:1", "policy": "10KPerMin"},
                      {"level": "api", "throttle_key": "/a:1", "policy": "20KPerMin"}]},
     r"assignments\[1\]: '/a:1' is already assigned at assignments\[0\]"),
    ({"assignments": [{"level": "api", "policy": "10KPerMin"}]}, r"assignments\[0\]: missing throttle_key$"),
    ({"policies": {"name": "Gold"}}, r"'policies' must be a list$"),
    ({"policies": ["Gold"]}, r"policies\[0\]: expected a mapping, got 'Gold'$"),
    ({"tiers": []}, r"expected a mapping with 'policies' and/or 'assignments'$"),
    ({"policies": [], "tiers": []}, r"unknown top-level key\(s\) 'tiers'$"),
    ([1, 2], r"expected a mapping with 'policies' and/or 'assignments'$"),
])
def test_invalid_files_are_refused_naming_file_entry_and_problem(tmp_path: Path, doc: object,
                                                                 message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(PolicyError, match=message) as exc:
        load_policies_file(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert "\n" not in str(exc.value)


def test_assignment_may_name_an_already_stored_policy(tmp_path: Path) -> None:
    path = _write(tmp_path, {"assignments": [{"level": "api", "throttle_key": "/a:1", "policy": "Stored"}]})
    with pytest.raises(PolicyError, match="unknown policy 'Stored'"):
        load_policies_file(path)
    _, assignments = load_policies_file(path, known_policies={("api", "Stored")})
    assert assignments == [ThrottleAssignment("api", "/a:1", "Stored")]


def test_unreadable_and_unparsable_files(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(PolicyError, match=r"absent.yaml: cannot read: No such file or directory$"):
        load_policies_file(missing)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"policies": [', encoding="utf-8")
    with pytest.raises(PolicyError, match=r"bad\.json: not valid JSON at line 1, column 15: Expecting value$") as exc:
        load_policies_file(bad_json)
    assert "\n" not in str(exc.value)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("policies: [\n  - {level: api\n", encoding="utf-8")
    expected = r"bad\.yaml: not valid YAML at line 2, column 3: expected the node content, but found '-'$"
    with pytest.raises(PolicyError, match=expected) as exc:
        load_policies_file(bad_yaml)
    assert "\n" not in str(exc.value)


def test_policy_is_validated_however_it_is_built() -> None:
    with pytest.raises(ValueError, match="negative quota -5"):
        ThrottlePolicy("api", "X", "requestCount", -5)
    with pytest.raises(ValueError, match="quota must be an integer or null"):
        ThrottlePolicy("api", "X", "requestCount", True)
