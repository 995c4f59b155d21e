"""The pipeline's configuration: flags, ``APIM_PIPELINE_*`` variables, or the
``pipeline:`` section of the config file. Flags not listed here are Beam
PipelineOptions (``--runner``, ``--direct_num_workers``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import SettingsError, parse_host_port, setting
from store.settings import store_setting


@dataclass(frozen=True)
class PipelineSettings:
    kafka: str = setting("127.0.0.1:9092", env="APIM_KAFKA_BOOTSTRAP",
                         help="Kafka bootstrap servers (comma-separated HOST:PORT)")
    topic: str = setting("apim.usage.v1", env="APIM_TOPIC", help="Kafka topic of usage events")
    store: str = store_setting("SQLAlchemy URL of the analytics store (may hold a password: kept out of logs)")
    follow: bool = setting(False, env="APIM_PIPELINE_FOLLOW",
                           help="keep running: a new bounded run every --interval seconds (default: --once)")
    interval_s: float = setting(2.0, env="APIM_PIPELINE_INTERVAL_S", flag="--interval",
                                help="seconds between runs in follow mode when there is no backlog")
    max_records_per_run: int = setting(10_000, env="APIM_PIPELINE_MAX_RECORDS_PER_RUN",
                                       help="Kafka records (event batches) read per run; bounds memory: a backlog "
                                            "is worked off in runs of at most this many records (a collector's "
                                            "record holds one call, up to 100 Mixer events; runs of 50,000 "
                                            "such records peaked at 1.36 GB)")
    kafka_client: str = setting("kafka-python", env="APIM_PIPELINE_KAFKA_CLIENT",
                                help="kafka-python (pure Python) or confluent (confluent-kafka, optional; "
                                     "far less CPU per record)")
    chunk_events: int = setting(200_000, env="APIM_PIPELINE_CHUNK_EVENTS",
                                help="events decoded into one numpy chunk before it is pre-aggregated")
    dead_letter_topic: str = setting("apim.usage.v1.dead-letter", env="APIM_DEAD_LETTER_TOPIC",
                                     help="where records that cannot be counted are copied, with the reason "
                                          "('' to only count and log them)")
    dedup_horizon_s: float = setting(3600.0, env="APIM_PIPELINE_DEDUP_HORIZON_S",
                                     help="how long a counted producer call is remembered, so a second copy of "
                                          "it (a timed-out send plus its spooled copy) is not counted again")
    max_resources_per_api: int = setting(200, env="APIM_PIPELINE_MAX_RESOURCES_PER_API",
                                         help="distinct resources admitted per API version; the rest are folded "
                                              "into 'other' and counted in resource_folds (0: no cap)")
    near_limit_ratio: float = setting(0.8, env="APIM_PIPELINE_NEAR_LIMIT_RATIO",
                                      help="a throttle key is near its limit at this share of its quota")
    policies_file: str = setting("", env="APIM_THROTTLE_POLICIES_FILE",
                                 help="throttle policies and API assignments (YAML/JSON) loaded before each run "
                                      "(default: the WSO2 default policies)")
    purge_every_runs: int = setting(100, env="APIM_PIPELINE_PURGE_EVERY_RUNS",
                                    help="in follow mode, enforce retention after this many runs (0: never)")
    metrics_listen: str = setting("127.0.0.1:9103", env="APIM_PIPELINE_METRICS_LISTEN",
                                  help="follow mode: HOST:PORT serving Prometheus /metrics and /healthz "
                                       "('' to disable)")
    unhealthy_after_s: float = setting(300.0, env="APIM_PIPELINE_UNHEALTHY_AFTER_S",
                                       help="/healthz turns 503 when records have waited this long with no run "
                                            "committing")
    consumer_group: str = setting("apim-pipeline", env="APIM_PIPELINE_CONSUMER_GROUP",
                                  help="Kafka consumer group given the store's offsets after each run, for lag "
                                       "tools only; the store's offsets stay the truth (empty: off)")

    # --- streaming (``--streaming``): an unbounded job on Flink through Beam's portable runner
    streaming: bool = setting(False, env="APIM_PIPELINE_STREAMING",
                              help="run one unbounded Beam job on Flink until SIGTERM, committing every partition "
                                   "at least every --commit-interval (default: bounded runs, --once)")
    commit_interval_s: float = setting(1.0, env="APIM_PIPELINE_COMMIT_INTERVAL_S", flag="--commit-interval",
                                       help="streaming: seconds a partition's read events may wait for their commit")
    commit_groups: int = setting(1, env="APIM_PIPELINE_COMMIT_GROUPS",
                                 help="streaming: partitions are committed in this many groups (partition modulo "
                                      "groups), each group's due chunks in one transaction; raise it with the "
                                      "parallelism")
    job_endpoint: str = setting("127.0.0.1:8099", env="APIM_PIPELINE_JOB_ENDPOINT",
                                help="streaming: the Beam Flink job server (deploy/local/flink-jobserver.sh)")
    flink_rest: str = setting("127.0.0.1:8281-8299", env="APIM_PIPELINE_FLINK_REST",
                              help="streaming: HOST:PORT (or HOST:FIRST-LAST) of the Flink REST API that runs the "
                                   "job, used to stop it (the embedded mini-cluster binds one port of the range; a "
                                   "standalone cluster listens on 8081)")
    environment_type: str = setting("LOOPBACK", env="APIM_PIPELINE_ENVIRONMENT_TYPE",
                                    help="streaming: where Beam's Python workers run: LOOPBACK (in this process) or "
                                         "EXTERNAL (a worker pool, --environment-config HOST:PORT)")
    environment_config: str = setting("", env="APIM_PIPELINE_ENVIRONMENT_CONFIG",
                                      help="streaming: the worker pool's HOST:PORT when --environment-type EXTERNAL")
    parallelism: int = setting(0, env="APIM_PIPELINE_PARALLELISM",
                               help="streaming: Flink parallelism (0: the cluster's default)")
    checkpoint_interval_ms: int = setting(5000, env="APIM_PIPELINE_CHECKPOINT_INTERVAL_MS",
                                          help="streaming: Flink checkpoint interval; a restarted job resumes "
                                               "from the last checkpoint")
    max_bundle_ms: int = setting(200, env="APIM_PIPELINE_MAX_BUNDLE_MS",
                                 help="streaming: longest a Beam bundle stays open on Flink (latency vs overhead)")
    partition_discovery_s: float = setting(10.0, env="APIM_PIPELINE_PARTITION_DISCOVERY_S",
                                           help="streaming: seconds between looks for new partitions")
    stall_resubmit_s: float = setting(180.0, env="APIM_PIPELINE_STALL_RESUBMIT_S",
                                      help="streaming: a job Flink lists RUNNING that commits nothing for this long "
                                           "while records wait is cancelled and submitted again (0: never)")

    def validate(self) -> None:
        if self.max_records_per_run < 1:
            raise SettingsError("--max-records-per-run must be at least 1")
        if self.kafka_client not in ("kafka-python", "confluent"):
            raise SettingsError(f"--kafka-client must be kafka-python or confluent, not {self.kafka_client!r}")
        if self.kafka_client == "confluent":
            try:
                import confluent_kafka  # noqa: F401
            except ImportError as exc:
                raise SettingsError("--kafka-client confluent needs the confluent-kafka package "
                                    "(pip install 'istio-apim-analytics[bench]')") from exc
        if self.chunk_events < 1:
            raise SettingsError("--chunk-events must be at least 1")
        if self.interval_s <= 0:
            raise SettingsError("--interval must be positive")
        if self.max_resources_per_api < 0:
            raise SettingsError("--max-resources-per-api must be 0 (no cap) or more")
        if not 0 < self.near_limit_ratio <= 1:
            raise SettingsError("--near-limit-ratio must be in (0, 1]")
        if self.metrics_listen:
            parse_host_port("--metrics-listen", self.metrics_listen)
        if self.streaming:
            if self.follow:
                raise SettingsError("--streaming and --follow are two ways to keep running: choose one")
            if self.commit_interval_s <= 0:
                raise SettingsError("--commit-interval must be positive")
            if self.commit_groups < 1:
                raise SettingsError("--commit-groups must be at least 1")
            if self.environment_type not in ("LOOPBACK", "EXTERNAL"):
                raise SettingsError(f"--environment-type must be LOOPBACK or EXTERNAL, not {self.environment_type!r}")
            if self.environment_type == "EXTERNAL":
                parse_host_port("--environment-config", self.environment_config)
            parse_host_port("--job-endpoint", self.job_endpoint)
            flink_rest_ports(self.flink_rest)
            if self.parallelism < 0 or self.checkpoint_interval_ms < 100 or self.max_bundle_ms < 1:
                raise SettingsError("--parallelism must be 0 or more, --checkpoint-interval-ms at least 100 and "
                                    "--max-bundle-ms at least 1")


def flink_rest_ports(value: str) -> tuple[str, list[int]]:
    """``HOST:PORT`` or ``HOST:FIRST-LAST`` -> (host, ports)."""
    host, _, ports = value.rpartition(":")
    first, _, last = ports.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise SettingsError(f"--flink-rest must be HOST:PORT or HOST:FIRST-LAST, not {value!r}") from None
    if not host or not 0 < lo <= hi < 65536 or hi - lo >= 100:
        raise SettingsError(f"--flink-rest must be HOST:PORT or HOST:FIRST-LAST (at most 100 ports), not {value!r}")
    return host, list(range(lo, hi + 1))
