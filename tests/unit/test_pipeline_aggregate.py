"""aggregate_chunk / merge / finish against a plain-Python reference that aggregates one event at a time."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from collector.columns import build_columns
from pipeline.aggregate import DESTINATION_KEY, THROTTLE_KEY, USAGE_KEY, USER_DAY_KEY, aggregate_chunk, finish, merge
from pipeline.builders import new_builder
from pipeline.resources import OTHER, resource_of
from store.latency import BUCKET_COUNT, bucket_bounds, histogram_column
from store.tables import DESTINATION_SUM_COLUMNS, USAGE_SUM_COLUMNS, USER_DAY_SUM_COLUMNS

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
LOWER_EDGES = [bucket_bounds(k)[0] for k in range(1, BUCKET_COUNT)]


def _ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def _month(ms: int) -> int:
    d = datetime.fromtimestamp(ms / 1000, UTC)
    return _ms(d.year, d.month, 1)


FLOORS = {"minute": lambda t: t - t % MINUTE, "hour": lambda t: t - t % HOUR, "day": lambda t: t - t % DAY,
          "month": _month}

# --- random events ----------------------------------------------------------------------------

APIS = [("PizzaShack", "1.0.0", "/pizzashack/1.0.0"), ("PizzaShack", "2.0.0", "/pizzashack/2.0.0"),
        ("Orders", "v1", "/orders/v1"), ("Orders", "v1", "/orders-eu/v1"), ("", "", "")]
TEMPLATES = ["", "", "/menu", "/order/{orderId}", "/orders"]
PATHS = ["/menu", "/order/123", "/order/123?x=1", "/order/0b9a8c1e-2f3d-4a5b-8c7d-112233445566", "", "/a/b/",
         "/users/jo@ex.com/orders", "/v1/orders/deadbeefdeadbeef00", "/menu/"]
CODES = [200, 201, 204, 302, 304, 400, 404, 429, 500, 503, 0, 99, 199, 599, 600, -1]
LATENCIES = [0.0, 0.0004, 0.0005, 0.0015, 0.3, 0.9999, 1.0, 1.2222, 5.5, 250.0, 61_999.0, 1e7, 1e13, math.nan,
             math.inf, -3.0]
BOUNDARIES = [_ms(2023, 12, 31, 23, 59, 59) + 999, _ms(2024, 1, 1), _ms(2024, 1, 31, 23, 59, 30),
              _ms(2024, 2, 29, 23, 0), _ms(2024, 3, 10, 13, 59, 59)]


def random_events(rng: random.Random, n: int) -> list[dict]:
    events = []
    for i in range(n):
        api, version, context = rng.choice(APIS)
        lat = rng.choice(LATENCIES) if rng.random() < 0.5 else rng.uniform(0, 3000)
        events.append({
            "call_index": i, "request_timestamp_ms": rng.choice(BOUNDARIES) + rng.randint(-90_000, 90_000),
            "api_name": api, "api_version": version, "api_context": context,
            "api_id": rng.choice(["id-1", "id-2"]), "api_creator": rng.choice(["admin", "ädmin"]),
            "api_creator_tenant_domain": rng.choice(["carbon.super", ""]),
            "api_resource_template": rng.choice(TEMPLATES), "api_resource_path": rng.choice(PATHS),
            "api_method": rng.choice(["GET", "POST", ""]),
            "application_id": rng.choice(["app-1", "app-2", "anonymous", ""]),
            "application_name": rng.choice(["App One", "Ápp"]), "application_owner": rng.choice(["alice", "bob"]),
            "application_tier": rng.choice(["50PerMin", "Unlimited", ""]), "key_type": rng.choice([0, 1, 2, 7, -1]),
            "subscription_tier": rng.choice(["Gold", "Bronze", "Unauthenticated", ""]),
            "user_name": rng.choice(["", "alice", "bob@carbon.super", "ü"]),
            "destination": rng.choice(["http://pizza:8080", "orders.default.svc", ""]),
            "response_code": rng.choice(CODES), "throttled_out": rng.random() < 0.2, "fault": rng.random() < 0.15,
            "response_latency_ms": lat, "backend_latency_ms": rng.choice([lat, 0.5, math.nan, 1e15]),
            "request_size_bytes": rng.choice([0, 1, 512, 10**9, -1]), "response_size_bytes": rng.randint(0, 10**6),
        })
    return events


# --- the reference ------------------------------------------------------------------------------

def _clean_ms(x: float) -> float:
    return min(max(x, 0.0), 1e12) if math.isfinite(x) else 0.0


def _bucket(ms: float) -> int:
    return sum(1 for edge in LOWER_EDGES if ms >= edge)


def _add(table: dict, key: tuple, measures: dict) -> None:
    row = table.setdefault(key, {})
    for k, v in measures.items():
        if k == "latency_min_us":
            row[k] = min(row.get(k, v), v)
        elif k == "latency_max_us":
            row[k] = max(row.get(k, v), v)
        else:
            row[k] = row.get(k, 0) + v


def reference(events: list[dict], fold=None) -> dict:
    out: dict = {"usage": {g: {} for g in FLOORS}, "user_day": {}, "destination": {"hour": {}, "day": {}},
                 "throttle": {}, "apis": {}, "applications": {}, "folds": {}}
    for e in events:
        ts, cls = e["request_timestamp_ms"], e["response_code"] // 100
        api, version, context = e["api_name"], e["api_version"], e["api_context"]
        resource = resource_of(e["api_resource_template"], e["api_resource_path"])
        if fold and resource != OTHER and fold(api, version, resource):
            _add(out["folds"], (FLOORS["day"](ts), api, version), {"folded_requests": 1})
            resource = OTHER
        kt = e["key_type"]
        dims = (api, version, context, e["application_id"], e["subscription_tier"],
                ["UNKNOWN", "PRODUCTION", "SANDBOX"][kt] if 0 <= kt <= 2 else "UNKNOWN", resource, e["api_method"])
        lat = _clean_ms(e["response_latency_ms"])
        lat_us, backend_us = round(lat * 1000), round(_clean_ms(e["backend_latency_ms"]) * 1000)
        sums = dict.fromkeys(USAGE_SUM_COLUMNS, 0)
        sums.update(requests=1, faults=int(e["fault"]), throttled_out=int(e["throttled_out"]),
                    request_bytes=e["request_size_bytes"], response_bytes=e["response_size_bytes"],
                    latency_sum_us=lat_us, backend_latency_sum_us=backend_us, latency_min_us=lat_us,
                    latency_max_us=lat_us)
        if 2 <= cls <= 5:
            sums[f"count_{cls}xx"] = 1
        sums[histogram_column(_bucket(lat))] = 1
        for g, floor in FLOORS.items():
            _add(out["usage"][g], (floor(ts), *dims), sums)
        _add(out["user_day"], (FLOORS["day"](ts), api, version, e["application_id"], e["user_name"]),
             {"requests": 1, "count_4xx": int(cls == 4), "count_5xx": int(cls == 5),
              "throttled_out": int(e["throttled_out"]), "response_bytes": e["response_size_bytes"]})
        for g in ("hour", "day"):
            _add(out["destination"][g], (FLOORS[g](ts), api, version, e["destination"]),
                 {"requests": 1, "count_5xx": int(cls == 5), "faults": int(e["fault"]), "latency_sum_us": lat_us,
                  "backend_latency_sum_us": backend_us})
        if not e["throttled_out"]:
            app, minute = e["application_id"], FLOORS["minute"](ts)
            nbytes = {"requests": 1, "bytes": e["request_size_bytes"] + e["response_size_bytes"]}
            _add(out["throttle"], ("subscription", f"{app}:{context}:{version}", e["subscription_tier"], minute),
                 nbytes)
            if e["application_tier"]:
                _add(out["throttle"], ("application", f"{app}:{e['user_name']}", e["application_tier"], minute),
                     nbytes)
            _add(out["throttle"], ("api", f"{context}:{version}", "", minute), nbytes)
        for name, key, attrs in (
                ("apis", (api, version), (context, e["api_id"], e["api_creator"], e["api_creator_tenant_domain"])),
                ("applications", (e["application_id"],),
                 (e["application_name"], e["application_owner"], e["application_tier"]))):
            seen = out[name].get(key)
            latest = (ts, attrs) if seen is None else max(seen["latest"], (ts, attrs))  # ties: greatest attrs
            out[name][key] = {"first_ms": ts if seen is None else min(seen["first_ms"], ts),
                              "last_ms": latest[0], "latest": latest}
    for name in ("apis", "applications"):
        out[name] = {k: (*v["latest"][1], v["first_ms"], v["last_ms"]) for k, v in out[name].items()}
    return out


# --- the implementation's frames as the reference's dicts --------------------------------------

def rows(frame: pd.DataFrame, key: tuple, measures) -> dict:
    measures = list(measures)
    keys = zip(*(frame[c].astype(np.int64).tolist() if c == "bucket_ms" else frame[c].tolist() for c in key))
    values = zip(*(frame[m].astype(np.int64).tolist() for m in measures))
    out = {k: dict(zip(measures, v)) for k, v in zip(keys, values)}
    assert len(out) == len(frame), "duplicate rows"
    return out


def facts_as_dicts(facts) -> dict:
    usage_measures = [*USAGE_SUM_COLUMNS, "latency_min_us", "latency_max_us"]

    def catalog(frame: pd.DataFrame, key: tuple, attrs: tuple) -> dict:
        out = {}
        for rec in frame.to_dict("records"):
            k = tuple(rec[c] for c in key)
            assert k not in out, f"duplicate catalog row {k}"
            out[k] = (*(rec[a] for a in attrs), int(rec["first_ms"]), int(rec["last_ms"]))
        return out

    return {
        "usage": {g: rows(f, USAGE_KEY, usage_measures) for g, f in facts.usage.items()},
        "user_day": rows(facts.user_day, USER_DAY_KEY, USER_DAY_SUM_COLUMNS),
        "destination": {g: rows(f, DESTINATION_KEY, DESTINATION_SUM_COLUMNS) for g, f in facts.destination.items()},
        "throttle": rows(facts.throttle, THROTTLE_KEY, ("requests", "bytes")),
        "apis": catalog(facts.apis, ("api_name", "api_version"),
                        ("api_context", "api_id", "api_creator", "api_creator_tenant_domain")),
        "applications": catalog(facts.applications, ("application_id",),
                                ("application_name", "application_owner", "application_tier")),
        "folds": rows(facts.folds, ("bucket_ms", "api_name", "api_version"), ("folded_requests",)),
    }


def chunks(events: list[dict], sizes: list[int], record: int = 7) -> list:
    """Events -> columnar records (``record`` events each) -> builder chunks of ``sizes`` events."""
    out, start = [], 0
    for size in sizes:
        builder = new_builder()
        for lo in range(start, start + size, record):
            part = events[lo:min(lo + record, start + size)]
            builder.add(build_columns(part, call_id=f"c{lo}", producer_id="p", produced_ms=0).SerializeToString())
            builder.accept()
        out.append(builder.take())
        start += size
    assert start == len(events)
    return out


def random_sizes(rng: random.Random, n: int) -> list[int]:
    sizes = []
    while sum(sizes) < n:
        sizes.append(min(rng.randint(1, max(n // 3, 1)), n - sum(sizes)))
    return sizes


# --- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2])
def test_finish_of_merged_chunks_equals_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    events = random_events(rng, 600)
    want = reference(events)
    assert len(want["usage"]["month"]) < len(want["usage"]["day"]) < len(want["usage"]["minute"])
    for split, sizes in enumerate(([600], [1] * 5 + [595], random_sizes(rng, 600))):
        partials = [aggregate_chunk(c) for c in chunks(events, sizes)]
        facts = finish(merge(partials), {}, 0)
        assert facts.events == 600
        got = facts_as_dicts(facts)
        for name in want:
            assert got[name] == want[name], name
        everything: dict = {}  # guard off (0): every resource seen is admitted, nothing folded
        for k in want["usage"]["minute"]:
            if k[7] != OTHER:
                everything.setdefault((k[1], k[2]), set()).add(k[7])
        assert facts.admitted == everything and facts.folded_requests == 0
        assert sorted(map(tuple, facts.last_access.to_numpy().tolist())) == sorted(
            (k[0], k[1], v[0], v[-1]) for k, v in want["apis"].items())
        if split < 2:
            continue
        shuffled = partials[:]
        rng.shuffle(shuffled)
        regrouped = merge([merge(shuffled[:2]), merge(shuffled[2:])])  # any order, any grouping
        assert facts_as_dicts(finish(regrouped, {}, 0)) == got


def test_catalog_ties_and_single_chunk_keep_one_row_per_key() -> None:
    base = {"call_index": 0, "api_name": "A", "api_version": "1", "application_id": "app",
            "request_timestamp_ms": _ms(2024, 1, 1)}
    events = [{**base, "api_context": "/z", "application_name": "Zed"},
              {**base, "api_context": "/a", "application_name": "Ann"},
              {**base, "api_context": "/m", "application_name": "Max", "request_timestamp_ms": _ms(2023, 12, 31)}]
    events = [{**e, **{k: e.get(k, "") for k in ("api_id", "api_creator", "api_creator_tenant_domain",
                                                 "application_owner", "application_tier")}} for e in events]
    for order in (events, events[::-1]):
        for sizes in ([3], [1, 1, 1]):
            facts = finish(merge([aggregate_chunk(c) for c in chunks(order, sizes)]), {}, 0)
            got = facts_as_dicts(facts)
            assert got["apis"] == {("A", "1"): ("/z", "", "", "", _ms(2023, 12, 31), _ms(2024, 1, 1))}
            assert got["applications"] == {("app",): ("Zed", "", "", _ms(2023, 12, 31), _ms(2024, 1, 1))}


def test_sums_are_exact_beyond_float_precision() -> None:
    event = {"call_index": 0, "request_timestamp_ms": _ms(2024, 1, 1), "api_name": "A",
             "response_latency_ms": 1e12, "request_size_bytes": 2**53 + 1}
    events = [dict(event) for _ in range(10)] + [{**event, "response_latency_ms": 0.001, "request_size_bytes": 1}]
    usage = facts_as_dicts(finish(merge([aggregate_chunk(c) for c in chunks(events, [11])]), {}, 0))["usage"]
    (row,) = usage["minute"].values()
    assert row["latency_sum_us"] == 10 * 10**15 + 1
    assert row["request_bytes"] == 10 * (2**53 + 1) + 1
    assert row["latency_min_us"] == 1 and row["latency_max_us"] == 10**15


def _guard_events(rng: random.Random) -> list[dict]:
    events = random_events(rng, 300)
    for e in events[::2]:  # half of them on one API with five resources (and some already folded)
        e.update(api_name="Big", api_version="v1", api_context="/big/v1",
                 api_resource_template=rng.choice(["/r1", "/r2", "/r3", "/r4", "/r5", OTHER]))
    return events


@pytest.mark.parametrize("admitted, new, allowed", [
    ({}, {"/r1", "/r2", "/r3"}, {"/r1", "/r2", "/r3"}),
    ({("Big", "v1"): frozenset({"/r5"})}, {"/r1", "/r2"}, {"/r1", "/r2", "/r5"}),
    ({("Big", "v1"): frozenset({"/r4", "/r5", "/x", "/y"})}, set(), {"/r4", "/r5", "/x", "/y"}),
])
def test_cardinality_guard_folds_into_other(admitted: dict, new: set, allowed: set) -> None:
    rng = random.Random(7)
    events = _guard_events(rng)
    partials = [aggregate_chunk(c) for c in chunks(events, random_sizes(rng, len(events)))]
    facts = finish(merge(partials), admitted, 3)
    capped = {(a, v) for a, v, r in ((e["api_name"], e["api_version"],
                                      resource_of(e["api_resource_template"], e["api_resource_path"]))
                                     for e in events) if r != OTHER}
    keys = {}  # the reference admission, per API version: sorted new resources up to the cap
    for e in sorted(events, key=lambda e: resource_of(e["api_resource_template"], e["api_resource_path"])):
        r = resource_of(e["api_resource_template"], e["api_resource_path"])
        have = admitted.get((e["api_name"], e["api_version"]), frozenset())
        got = keys.setdefault((e["api_name"], e["api_version"]), set())
        if r != OTHER and r not in have and r not in got and len(have) + len(got) < 3:
            got.add(r)
    assert facts.admitted.get(("Big", "v1"), set()) == new
    assert facts.admitted == {k: v for k, v in keys.items() if v and k in capped}

    def fold(api: str, version: str, resource: str) -> bool:
        ok = set(admitted.get((api, version), ())) | keys.get((api, version), set())
        return resource not in ok

    want = reference(events, fold)
    got = facts_as_dicts(facts)
    for name in want:
        assert got[name] == want[name], name
    big = {k[7] for k in got["usage"]["minute"] if k[1:3] == ("Big", "v1")}
    assert big == (allowed & {"/r1", "/r2", "/r3", "/r4", "/r5"}) | {OTHER}
    assert facts.folded_requests == sum(v["folded_requests"] for v in want["folds"].values())


def test_keep_mask_drops_exactly_the_masked_events() -> None:
    rng = random.Random(11)
    events = random_events(rng, 400)
    sizes = random_sizes(rng, 400)
    masks = [np.array([rng.random() < 0.6 for _ in range(s)]) for s in sizes]
    masks[0][:] = False  # a chunk with nothing kept
    kept = [e for e, k in zip(events, np.concatenate(masks)) if k]
    partials = [aggregate_chunk(c, keep=m) for c, m in zip(chunks(events, sizes), masks)]
    facts = finish(merge(partials), {}, 0)
    assert facts.events == len(kept)
    got, want = facts_as_dicts(facts), reference(kept)
    for name in want:
        assert got[name] == want[name], name
