"""Retention: how long each granularity is kept, and the purge step that enforces it.

Defaults follow WSO2 APIM Analytics' Siddhi ``@purge`` settings (domain.md
3.1): minutes 72 hours, hours 90 days, days 1 year, months 10 years. Finer
tables are what grow with traffic, so they are the ones pruned soonest; the
coarser rollups keep answering long-range questions after the detail is gone.

Bookkeeping tables are pruned too: throttle counters once no policy window
can still need them, and the run log after ``runs_days``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, delete

from apim_analytics.settings import SettingsError, setting
from store import tables as t


@dataclass(frozen=True)
class RetentionSettings:
    minute_days: float = setting(3.0, env="APIM_RETENTION_MINUTE_DAYS",
                                 help="days of per-minute facts kept (WSO2: 72 hours)")
    hour_days: float = setting(90.0, env="APIM_RETENTION_HOUR_DAYS",
                               help="days of per-hour facts kept (WSO2: 90 days)")
    day_days: float = setting(365.0, env="APIM_RETENTION_DAY_DAYS",
                              help="days of per-day facts kept, incl. per-user and resource folds (WSO2: 1 year)")
    month_days: float = setting(3650.0, env="APIM_RETENTION_MONTH_DAYS",
                                help="days of per-month facts kept (WSO2: 10 years)")
    throttle_days: float = setting(62.0, env="APIM_RETENTION_THROTTLE_DAYS",
                                   help="days of throttle counters kept (must cover the longest policy window)")
    runs_days: float = setting(90.0, env="APIM_RETENTION_RUNS_DAYS", help="days of the pipeline_runs log kept")

    def validate(self) -> None:
        for name in ("minute_days", "hour_days", "day_days", "month_days", "throttle_days", "runs_days"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"--{name.replace('_', '-')} must be positive")
        if self.throttle_days < 32:
            raise SettingsError("--throttle-days must be at least 32: month windows need their counters")


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
