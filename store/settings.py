"""Where the store is: the one ``--store`` setting every command that opens the store shares.

Kept free of SQLAlchemy so that building the CLI's parser (and its ``--help``)
stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.settings import SettingsError, setting

DEFAULT_STORE_URL = "sqlite:///apim-analytics.db"
STORE_URL_ENV = "APIM_STORE_URL"
STORE_URL_KEY = "store.url"


def store_setting(help: str) -> Any:
    """The store URL as a field of a component's settings: one flag, env var, config key and default for all."""
    return setting(DEFAULT_STORE_URL, env=STORE_URL_ENV, secret=True, key=STORE_URL_KEY, help=help)


@dataclass(frozen=True)
class StoreSettings:
    """The analytics store's URL (config-file key ``store.url``; the field is named for its flag, ``--store``,
    so it never collides with a subcommand's own ``--url``)."""

    store: str = store_setting("SQLAlchemy URL of the analytics store (sqlite:///FILE or "
                               "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB; kept out of logs)")


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
