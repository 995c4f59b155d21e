"""The dashboard's pure parts: bucket arithmetic, the granularity choice, the embedded JSON,
request parameters and subscription keys."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from dashboards.data import _subscription, bucket_count, ceil_to, choose_granularity, floor_to, next_bucket
from dashboards.page import embedded_json, render_page
from dashboards.server import BadRequest, request_options

T = dt.datetime(2026, 12, 31, 23, 59, 30, 5)


def test_floor_ceil_and_next_at_every_granularity_including_the_year_end() -> None:
    assert floor_to(T, "minute") == dt.datetime(2026, 12, 31, 23, 59)
    assert floor_to(T, "hour") == dt.datetime(2026, 12, 31, 23)
    assert floor_to(T, "day") == dt.datetime(2026, 12, 31)
    assert floor_to(T, "month") == dt.datetime(2026, 12, 1)
    assert ceil_to(T, "month") == dt.datetime(2027, 1, 1)
    assert ceil_to(dt.datetime(2026, 5, 1), "month") == dt.datetime(2026, 5, 1)
    assert next_bucket(dt.datetime(2026, 12, 1), "month") == dt.datetime(2027, 1, 1)
    assert next_bucket(dt.datetime(2026, 11, 1), "month") == dt.datetime(2026, 12, 1)
    assert bucket_count(dt.datetime(2025, 11, 1), dt.datetime(2027, 2, 1), "month") == 15
    assert bucket_count(dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2), "minute") == 1440


def test_auto_granularity_is_the_finest_that_holds_the_range_and_fits() -> None:
    start, end = dt.datetime(2026, 11, 1, 6, 0), dt.datetime(2026, 11, 1, 12, 0)
    every = {g: dt.datetime(2026, 1, 1) for g in ("minute", "hour", "day", "month")}
    assert choose_granularity(start, end, every, 400) == "minute"  # 360 minutes
    assert choose_granularity(start, end, every, 300) == "hour"
    purged = every | {"minute": dt.datetime(2026, 11, 1, 8, 0)}  # retention took the first two hours' minutes
    assert choose_granularity(start, end, purged, 400) == "hour"
    assert choose_granularity(start, end, dict.fromkeys(every), 400) == "month"  # nothing stored
    assert choose_granularity(dt.datetime(2020, 1, 1), dt.datetime(2026, 1, 1), every, 400) == "month"


def test_embedded_json_cannot_close_its_script_element() -> None:
    doc = {"apis": ["</script><script>alert(1)</script>", "line\u2028break"], "n": 1}
    text = embedded_json(doc)
    assert "</" not in text and "\u2028" not in text
    assert json.loads(text) == doc
    page = render_page({"format": 1, "apis": ["</script>"], "buckets": []})
    assert page.count("</script>") == 2  # the data element's and the script's own
    with pytest.raises(ValueError):
        embedded_json({"p50": float("nan")})


def test_request_options_are_checked_with_the_reason() -> None:
    assert request_options("from=2026-11-01T00:00:00Z&to=2026-11-02&api=CartAPI&granularity=hour") == {
        "start": dt.datetime(2026, 11, 1), "end": dt.datetime(2026, 11, 2), "api": "CartAPI", "granularity": "hour"}
    assert request_options("") == {"start": None, "end": None, "api": None}
    assert request_options("from=2026-11-01T01:00:00%2B01:00")["start"] == dt.datetime(2026, 11, 1)
    for query, reason in (("x=1", "unknown parameter(s) x"), ("api=a&api=b", "given more than once: api"),
                          ("to=soon", "to 'soon' is not an ISO 8601 timestamp")):
        with pytest.raises(BadRequest, match=re.escape(reason)):
            request_options(query)


def test_subscription_keys_resolve_to_application_api_and_version() -> None:
    contexts = {("/cart/2.0.0", "2.0.0"): "CartAPI", ("/a:b", "v1"): "ColonAPI"}
    assert _subscription("app-1:/cart/2.0.0:2.0.0", contexts) == ("app-1", "CartAPI", "2.0.0")
    assert _subscription("app-1:/a:b:v1", contexts) == ("app-1", "ColonAPI", "v1")
    assert _subscription("app-1:/gone/1:1", contexts) is None
