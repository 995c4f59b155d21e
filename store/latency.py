"""The fixed-boundary latency histogram every usage row carries.

Why fixed boundaries: histograms with the same boundaries add bucket by
bucket, so p50/p95/p99 can be computed from any rollup (an hour from its
minutes, a month from its days, many APIs together) exactly as if the events
had been counted there directly. Quantile sketches with data-dependent
boundaries (t-digest) do not merge exactly in SQL.

The scheme (DDSketch-style, relative accuracy ALPHA = 10%):
- bucket 0 holds [0, 1 ms);
- bucket k (1 <= k < BUCKET_COUNT - 1) holds [GAMMA**(k-1), GAMMA**k) ms with
  GAMMA = (1 + ALPHA) / (1 - ALPHA) = 1.2222...;
- the last bucket holds everything from GAMMA**(BUCKET_COUNT - 2) ms (about
  62 s) upwards.

Error bound: a percentile is reported as its bucket's estimate
``2 * lower * upper / (lower + upper)``, which is within ALPHA (10%) of every
value in the bucket, so the reported p50/p95/p99 is within 10% of the true
nearest-rank percentile for latencies between 1 ms and 62 s; below 1 ms it is
reported as 0.5 ms (absolute error under 0.5 ms); above 62 s it is reported as
the 62 s lower bound.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where arrays are made: store.tables needs only the names
    import numpy as np

ALPHA = 0.10
GAMMA = (1 + ALPHA) / (1 - ALPHA)
BUCKET_COUNT = 57


def histogram_column(index: int) -> str:
    """The usage-table column counting bucket ``index``."""
    return f"lat_b{index:02d}"


def bucket_bounds(index: int) -> tuple[float, float | None]:
    """``[lower, upper)`` of a bucket in milliseconds; upper is None for the last."""
    if index == 0:
        return 0.0, 1.0
    upper = GAMMA ** index if index < BUCKET_COUNT - 1 else None
    return GAMMA ** (index - 1), upper


def bucket_estimate(index: int) -> float:
    """The value reported for a percentile that falls in bucket ``index`` (ms)."""
    lower, upper = bucket_bounds(index)
    if index == 0:
        return 0.5
    if upper is None:
        return lower
    return 2 * lower * upper / (lower + upper)


# The lower bounds of buckets 1 .. BUCKET_COUNT - 1, the very floats bucket_bounds reports: a latency's
# bucket is the number of them it reaches (a log-based index misplaces values at the edges).
@functools.cache
def _edges() -> tuple[np.ndarray, np.ndarray]:
    """(estimates, lower edges) as arrays."""
    import numpy as np

    return (np.array([bucket_estimate(index) for index in range(BUCKET_COUNT)]),
            np.array([GAMMA ** (index - 1) for index in range(1, BUCKET_COUNT)]))


def bucket_of(latency_ms: np.ndarray) -> np.ndarray:
    """Bucket index per latency (vectorised; negative and NaN latencies go to bucket 0)."""
    import numpy as np

    x = np.asarray(latency_ms, dtype=np.float64)
    k = np.searchsorted(_edges()[1], x, side="right")
    return np.where(x >= 1.0, k, 0).astype(np.int64)


def percentile(counts: Sequence[int], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0 < q <= 1) from bucket counts; None when there are none."""
    total = int(sum(counts))
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    running = 0
    for index, c in enumerate(counts):
        running += int(c)
        if running >= rank:
            return bucket_estimate(index)
    return bucket_estimate(len(counts) - 1)


def percentiles(counts: np.ndarray, q: float) -> np.ndarray:
    """``percentile`` for every row of a (rows x buckets) count matrix at once; NaN where a row is empty.

    Why: an analyst's group-by can return tens of thousands of rows; a Python loop per row costs
    seconds where this costs milliseconds, with the very same nearest-rank rule.
    """
    return percentiles_at(counts, (q,))[0]


def percentiles_at(counts: np.ndarray, qs: Sequence[float]) -> list[np.ndarray]:
    """:func:`percentiles` for several ``qs`` over one cumulative sum of the matrix (p50, p95 and p99 of
    thousands of rows of 57 buckets: the cumulative sum is most of the work)."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2:
        raise ValueError(f"expected a (rows x buckets) matrix, got shape {counts.shape}")
    running = counts.cumsum(axis=1)
    total = running[:, -1] if counts.shape[1] else np.zeros(counts.shape[0], dtype=np.int64)
    out = []
    for q in qs:
        rank = np.maximum(1, np.ceil(q * total))
        below = (running < rank[:, None]).sum(axis=1)
        index = np.minimum(below, counts.shape[1] - 1)
        out.append(np.where(total > 0, _edges()[0][index], np.nan))
    return out


def bucket_rows() -> list[dict[str, float | int | None]]:
    """Rows for the ``latency_buckets`` table."""
    rows = []
    for i in range(BUCKET_COUNT):
        lower, upper = bucket_bounds(i)
        rows.append({"bucket": i, "lower_ms": lower, "upper_ms": upper, "estimate_ms": bucket_estimate(i)})
    return rows
