"""The dashboard's configuration: flags, ``APIM_DASHBOARD_*`` variables, or the ``dashboard:``
section of the config file."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import SettingsError, parse_host_port, setting
from store.settings import store_setting

GRANULARITY_CHOICES = ("auto", "minute", "hour", "day", "month")


@dataclass(frozen=True)
class DashboardSettings:
    store: str = store_setting("SQLAlchemy URL of the analytics store (opened read-only)")
    listen: str = setting("127.0.0.1:9104", env="APIM_DASHBOARD_LISTEN",
                          help="serve: HOST:PORT of the page, /data.json, /healthz and /metrics")
    granularity: str = setting("auto", env="APIM_DASHBOARD_GRANULARITY",
                               help="time bucket of the charts: auto (the finest stored one giving at most "
                                    "--max-buckets buckets), minute, hour, day or month")
    max_buckets: int = setting(400, env="APIM_DASHBOARD_MAX_BUCKETS",
                               help="auto granularity: at most this many time buckets per chart")
    quota_keys: int = setting(20, env="APIM_DASHBOARD_QUOTA_KEYS",
                              help="subscriptions shown in the quota panel (those with the highest peak use "
                                   "of their quota in the range)")
    refresh_s: float = setting(0.0, env="APIM_DASHBOARD_REFRESH_S",
                               help="serve: the page reloads itself every this many seconds (0: never)")

    def validate(self) -> None:
        if self.granularity not in GRANULARITY_CHOICES:
            raise SettingsError(f"--granularity must be one of {', '.join(GRANULARITY_CHOICES)}, "
                                f"not {self.granularity!r}")
        if self.max_buckets < 1:
            raise SettingsError("--max-buckets must be at least 1")
        if self.quota_keys < 1:
            raise SettingsError("--quota-keys must be at least 1")
        if self.refresh_s < 0:
            raise SettingsError("--refresh-s must not be negative")
        parse_host_port("--listen", self.listen)
