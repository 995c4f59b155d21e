"""The pipeline's configuration: flags, ``APIM_PIPELINE_*`` variables, or the
``pipeline:`` section of the config file. Flags not listed here are Beam
PipelineOptions (``--runner``, ``--direct_num_workers``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from apim_analytics.settings import SettingsError, setting
from store.engine import DEFAULT_STORE_URL


@dataclass(frozen=True)
class PipelineSettings:
    kafka: str = setting("127.0.0.1:9092", env="APIM_KAFKA_BOOTSTRAP",
                         help="Kafka bootstrap servers (comma-separated HOST:PORT)")
    topic: str = setting("apim.usage.v1", env="APIM_TOPIC", help="Kafka topic of usage events")
    store: str = setting(DEFAULT_STORE_URL, env="APIM_STORE_URL",
                         help="SQLAlchemy URL of the analytics store")
    follow: bool = setting(False, env="APIM_PIPELINE_FOLLOW",
                           help="keep running: a new bounded run every --interval seconds (default: --once)")
    interval_s: float = setting(2.0, env="APIM_PIPELINE_INTERVAL_S", flag="--interval",
                                help="seconds between runs in follow mode when there is no backlog")
    max_records_per_run: int = setting(50_000, env="APIM_PIPELINE_MAX_RECORDS_PER_RUN",
                                       help="Kafka records (event batches) read per run; bounds memory")
    dedup_horizon_s: float = setting(3600.0, env="APIM_PIPELINE_DEDUP_HORIZON_S",
                                     help="how long a counted producer call is remembered, so a second copy of "
                                          "it (a timed-out send plus its spooled copy) is not counted again")
    consumer_group: str = setting("apim-pipeline", env="APIM_PIPELINE_CONSUMER_GROUP",
                                  help="group whose Kafka offsets mirror the store's, for lag dashboards only")

    def validate(self) -> None:
        if self.max_records_per_run < 1:
            raise SettingsError("--max-records-per-run must be at least 1")
        if self.interval_s <= 0:
            raise SettingsError("--interval must be positive")
