"""The latency histogram (store/latency.py) and the resource dimension's normalisation and admission
(pipeline/resources.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.resources import OTHER, admit, normalise_path, resource_of
from store.latency import (
    ALPHA,
    BUCKET_COUNT,
    GAMMA,
    bucket_bounds,
    bucket_estimate,
    bucket_of,
    bucket_rows,
    histogram_column,
    percentile,
    percentiles,
)

# --- buckets ------------------------------------------------------------------------------------


def test_bucket_layout() -> None:
    assert BUCKET_COUNT == 57 and GAMMA == 1.1 / 0.9
    assert bucket_bounds(0) == (0.0, 1.0)
    assert bucket_bounds(1) == (1.0, GAMMA)
    assert bucket_bounds(56) == (GAMMA ** 55, None)
    assert round(bucket_bounds(56)[0], 6) == 62124.036264
    assert [histogram_column(i) for i in (0, 9, 56)] == ["lat_b00", "lat_b09", "lat_b56"]
    assert bucket_estimate(0) == 0.5 and bucket_estimate(56) == GAMMA ** 55
    assert bucket_estimate(1) == pytest.approx(1.1, rel=1e-15)
    rows = bucket_rows()
    assert len(rows) == 57
    assert rows[0] == {"bucket": 0, "lower_ms": 0.0, "upper_ms": 1.0, "estimate_ms": 0.5}
    assert all(rows[k]["upper_ms"] == rows[k + 1]["lower_ms"] for k in range(56))  # contiguous
    assert rows[56]["upper_ms"] is None


@pytest.mark.parametrize("k", range(1, BUCKET_COUNT))
def test_exact_bucket_edges(k: int) -> None:
    """bucket k holds [GAMMA**(k-1), GAMMA**k): its lower bound is in it, the float below is not."""
    lower, upper = bucket_bounds(k)
    just_below = np.nextafter(lower, 0.0)
    got = bucket_of(np.array([lower, just_below])).tolist()
    assert got == [k, k - 1]
    if upper is not None:
        assert bucket_of(np.array([np.nextafter(upper, 0.0), upper])).tolist() == [k, k + 1]


def test_bucket_of_special_values() -> None:
    x = np.array([0.0, -0.0, 5e-324, 0.0004, 0.5, 0.999999, 1.0, -1.0, -1e300, math.nan, -math.inf, math.inf,
                  1.2222, 1.2223, 10.0, 100.0, 1000.0, 60_000.0, 62_124.04, 1e12, 1e300])
    assert bucket_of(x).tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 56, 1, 2, 12, 23, 35, 55, 56, 56, 56]
    assert bucket_of(np.array([], dtype=np.float64)).tolist() == []
    assert bucket_of([3.0]).dtype == np.int64


def _histogram(values) -> np.ndarray:
    return np.bincount(bucket_of(np.asarray(values, dtype=np.float64)), minlength=BUCKET_COUNT)


LATENCY = st.floats(min_value=1.0, max_value=60_000.0)


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@settings(max_examples=300, deadline=None)
@given(st.lists(LATENCY, min_size=1, max_size=60), st.sampled_from([0.01, 0.5, 0.9, 0.95, 0.99, 1.0]))
def test_percentile_within_ten_percent_of_nearest_rank(values: list[float], q: float) -> None:
    estimate = percentile(_histogram(values).tolist(), q)
    true = _nearest_rank(values, q)
    assert abs(estimate - true) <= ALPHA * true * (1 + 1e-12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(LATENCY, st.floats(allow_nan=True)), max_size=40),
       st.lists(st.one_of(LATENCY, st.floats(allow_nan=True)), max_size=40))
def test_histogram_of_union_is_sum_of_histograms(a: list[float], b: list[float]) -> None:
    union = _histogram(a + b)
    assert union.tolist() == (_histogram(a) + _histogram(b)).tolist()
    assert int(union.sum()) == len(a) + len(b)
    for q in (0.5, 0.99):  # percentiles of a rollup are those of the events counted together
        assert percentile((_histogram(a) + _histogram(b)).tolist(), q) == percentile(union.tolist(), q)


def test_percentile_edge_cases() -> None:
    assert percentile([0] * BUCKET_COUNT, 0.5) is None
    assert percentile([], 0.99) is None
    one = _histogram([250.0]).tolist()
    assert percentile(one, 0.01) == percentile(one, 1.0) == bucket_estimate(28)
    assert bucket_of(np.array([250.0])).tolist() == [28]
    sub_ms = _histogram([0.2, 0.3, 0.9, 5.0]).tolist()
    assert percentile(sub_ms, 0.75) == 0.5 and percentile(sub_ms, 1.0) == bucket_estimate(9)
    huge = _histogram([1.0, 10 ** 7, 10 ** 8]).tolist()
    assert percentile(huge, 0.99) == GAMMA ** 55  # beyond ~62 s: the last bucket's lower bound
    counts = [0] * BUCKET_COUNT
    counts[3], counts[40] = 99, 1
    assert percentile(counts, 0.99) == bucket_estimate(3) and percentile(counts, 0.991) == bucket_estimate(40)


# --- resources ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, template", [
    ("/orders/8812", "/orders/{id}"),
    ("/orders/8812?x=1&y=2", "/orders/{id}"),
    ("/orders/123/items/456", "/orders/{id}/items/{id}"),
    ("/2024", "/{id}"),
    ("/d/0b9a8c1e-2f3d-4a5b-8c7d-112233445566", "/d/{id}"),
    ("/d/0B9A8C1E-2F3D-4A5B-8C7D-112233445566/x", "/d/{id}/x"),
    ("/blobs/deadbeefdeadbeef", "/blobs/{id}"),
    ("/blobs/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "/blobs/{id}"),
    ("/users/jo@example.com/orders", "/users/{id}/orders"),
    ("/users/a.b+c@d", "/users/{id}"),
    ("/t/AbCdEfGhIjKlMnOpQrSt1", "/t/{id}"),
    ("/t/eyJhbGciOiJIUzI1NiJ9-abc_DEF", "/t/{id}"),
    ("/posts/my-first-post-2024-01-01-hello", "/posts/{id}"),
    ("/orders?id=5", "/orders"),
    ("/menu#top", "/menu"),
    ("/menu/", "/menu/"),
    ("/v1/orders/", "/v1/orders/"),
    ("/orders/42/", "/orders/{id}/"),
    ("", ""),
    ("?x=1", ""),
    ("#frag", ""),
    ("/", "/"),
    ("//", "//"),
])
def test_normalise_path(path: str, template: str) -> None:
    assert normalise_path(path) == template


@pytest.mark.parametrize("path", [
    "/menu", "/v1", "/v2.1", "/orders", "/api/v1/orders", "/health", "/blobs/deadbeef", "/blobs/cafe1234",
    "/t/abcdefghijklmnopqrstuvwxyz", "/docs/getting-started-with-the-api", "/pizzashack/1.0.0x", "/a//b",
])
def test_normal_words_are_kept(path: str) -> None:
    assert normalise_path(path) == path


def test_resource_of_prefers_the_template() -> None:
    assert resource_of("/order/{orderId}", "/order/8812") == "/order/{orderId}"
    assert resource_of("", "/order/8812?x=1") == "/order/{id}"
    assert resource_of("", "") == ""


def test_admit_in_sorted_order_up_to_the_cap() -> None:
    candidates = [("A", "1", r) for r in ("/e", "/d", "/c", "/b", "/a", OTHER, "/a")] + [("B", "1", "/z")]
    assert admit({}, candidates, 3) == {("A", "1"): {"/a", "/b", "/c"}, ("B", "1"): {"/z"}}
    assert admit({("A", "1"): frozenset({"/e", "/x"})}, candidates, 3) == {("A", "1"): {"/a"}, ("B", "1"): {"/z"}}
    assert admit({("A", "1"): frozenset({"/a", "/b", "/c"})}, candidates, 3) == {("B", "1"): {"/z"}}
    assert admit({}, candidates, 0) == {("A", "1"): {"/a", "/b", "/c", "/d", "/e"}, ("B", "1"): {"/z"}}
    assert admit({}, [("A", "1", OTHER)], 3) == {}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 5), min_size=BUCKET_COUNT, max_size=BUCKET_COUNT), min_size=0, max_size=8),
       st.sampled_from([0.01, 0.5, 0.95, 0.99, 1.0]))
def test_vectorised_percentiles_equal_the_row_by_row_rule(rows: list[list[int]], q: float) -> None:
    matrix = np.array(rows, dtype=np.int64).reshape(len(rows), BUCKET_COUNT)
    got = percentiles(matrix, q)
    expected = [percentile(row, q) for row in rows]
    assert [None if np.isnan(v) else float(v) for v in got] == expected
