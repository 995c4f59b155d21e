"""Retention: how long each granularity is kept, and the purge step that enforces it.

Defaults follow WSO2 APIM Analytics' Siddhi ``@purge`` settings (docs/wso2-analytics.md
section 3): minutes 72 hours, hours 90 days, days 1 year, months 10 years. Finer
tables are what grow with traffic, so they are the ones pruned soonest; the
coarser rollups keep answering long-range questions after the detail is gone.

Bookkeeping tables are pruned too: throttle counters once no policy window
can still need them, and the run log after ``runs_days``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, delete

from store import tables as t
from store.settings import RetentionSettings

__all__ = ["RetentionSettings", "purge"]


def purge(engine: Engine, retention: RetentionSettings, now: dt.datetime | None = None) -> dict[str, int]:
    """Delete what is older than its retention; returns rows deleted per table (one transaction)."""
    now = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    keep_days = {"minute": retention.minute_days, "hour": retention.hour_days, "day": retention.day_days,
                 "month": retention.month_days}
    deleted: dict[str, int] = {}
    with engine.begin() as conn:
        for granularity, tables in t.RETENTION_TABLES.items():
            cutoff = now - dt.timedelta(days=keep_days[granularity])
            for table in tables:
                deleted[table.name] = conn.execute(
                    delete(table).where(table.c.bucket_start < cutoff)).rowcount or 0
        tc = t.throttle_counters
        deleted[tc.name] = conn.execute(delete(tc).where(
            tc.c.window_start < now - dt.timedelta(days=retention.throttle_days))).rowcount or 0
        runs = t.pipeline_runs
        deleted[runs.name] = conn.execute(delete(runs).where(
            runs.c.committed_at < now - dt.timedelta(days=retention.runs_days))).rowcount or 0
    return deleted
