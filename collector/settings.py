"""The collector's configuration: flags, ``APIM_*`` variables, or the
``collector:`` section of the config file (see core.settings).
``apim-analytics config show`` prints every setting with its default."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import SettingsError, parse_host_port, setting

# Producer codecs: kafka-python needs python-snappy for snappy and zstandard for zstd (the kafka-python
# extras in pyproject.toml); the pipeline's consumers decode all four.
KAFKA_COMPRESSIONS = ("lz4", "gzip", "zstd", "snappy", "none")


@dataclass(frozen=True)
class CollectorSettings:
    # -- serving -------------------------------------------------------------------
    listen: str = setting("127.0.0.1:9091", env="APIM_COLLECTOR_LISTEN",
                          help="gRPC address Mixer calls (HOST:PORT)")
    metrics_listen: str = setting("127.0.0.1:9102", env="APIM_COLLECTOR_METRICS_LISTEN",
                                  help="HTTP address of the Prometheus /metrics endpoint (empty: off)")
    max_message_mb: int = setting(16, env="APIM_COLLECTOR_MAX_MESSAGE_MB",
                                  help="largest HandleMetric request accepted, in MiB")
    max_instances_per_call: int = setting(20_000, env="APIM_COLLECTOR_MAX_INSTANCES_PER_CALL",
                                          help="most instances in one HandleMetric call")
    max_concurrent_calls: int = setting(256, env="APIM_COLLECTOR_MAX_CONCURRENT_CALLS",
                                        help="calls handled at once; beyond it gRPC answers RESOURCE_EXHAUSTED "
                                             "(Mixer retries)")
    max_connection_age_s: float = setting(300.0, env="APIM_COLLECTOR_MAX_CONNECTION_AGE_S",
                                          help="close client connections after this long (with a grace period), "
                                               "so Mixer reconnects and load spreads to new replicas (0: never)")
    shutdown_grace_s: float = setting(10.0, env="APIM_COLLECTOR_SHUTDOWN_GRACE_S",
                                      help="grace period for in-flight calls on shutdown")
    tls_cert: str = setting("", env="APIM_COLLECTOR_TLS_CERT", help="PEM server certificate: serve TLS when set")
    tls_key: str = setting("", env="APIM_COLLECTOR_TLS_KEY", help="PEM private key of --tls-cert")
    tls_client_ca: str = setting("", env="APIM_COLLECTOR_TLS_CLIENT_CA",
                                 help="PEM CA bundle: require client certificates signed by it (mutual TLS)")
    # -- Kafka -----------------------------------------------------------------------
    kafka: str = setting("127.0.0.1:9092", env="APIM_KAFKA_BOOTSTRAP",
                         help="Kafka bootstrap servers (comma-separated HOST:PORT)")
    topic: str = setting("apim.usage.v1", env="APIM_TOPIC", help="Kafka topic for usage events")
    dead_letter_topic: str = setting("apim.usage.v1.dead-letter", env="APIM_DEAD_LETTER_TOPIC",
                                     help="Kafka topic for instances that could not be mapped")
    topic_partitions: int = setting(6, env="APIM_TOPIC_PARTITIONS",
                                    help="partitions when the collector creates the topic")
    partition_by: str = setting("call", env="APIM_COLLECTOR_PARTITION_BY",
                                help="how events are spread over partitions: call (one record per call, on the "
                                     "partition of its call id; fewest records) or application (one record per "
                                     "partition the call's applications hash to; an application's events in order "
                                     "on one partition, for consumers that need that)")
    kafka_client: str = setting("kafka-python", env="APIM_KAFKA_CLIENT",
                                help="producer library: kafka-python, or confluent (optional extra, faster)")
    kafka_max_record_bytes: int = setting(1_000_000, env="APIM_KAFKA_MAX_RECORD_BYTES",
                                          help="largest record written; bigger batches are split (keep it at or "
                                               "below the broker's message.max.bytes)")
    kafka_linger_ms: int = setting(2, env="APIM_KAFKA_LINGER_MS", help="producer linger (batching delay), ms")
    kafka_compression: str = setting("lz4", env="APIM_KAFKA_COMPRESSION",
                                     help="producer compression: lz4, gzip, zstd, snappy or none")
    ack_timeout_s: float = setting(5.0, env="APIM_COLLECTOR_ACK_TIMEOUT_S",
                                   help="how long a call waits for Kafka before its records go to the spool")
    # -- spool -------------------------------------------------------------------------
    spool_dir: str = setting(".local/spool", env="APIM_COLLECTOR_SPOOL_DIR",
                             help="folder of the durable spool used while Kafka is unreachable")
    spool_drain_timeout_s: float = setting(10.0, env="APIM_COLLECTOR_SPOOL_DRAIN_TIMEOUT_S",
                                           help="how long one spool drain batch waits for Kafka before a fresh "
                                                "producer retries it")
    spool_max_mb: float = setting(1024.0, env="APIM_COLLECTOR_SPOOL_MAX_MB",
                                  help="spool size limit in MiB (fractions allowed); beyond it calls get UNAVAILABLE")
    # -- mapping and validation --------------------------------------------------------------
    mapping: str = setting("", env="APIM_COLLECTOR_MAPPING",
                           help="instance mapping YAML (default: the shipped collector/mappings/default.yaml)")
    max_string_bytes: int = setting(4096, env="APIM_COLLECTOR_MAX_STRING_BYTES",
                                    help="longest dimension string kept; longer instances are dead-lettered")
    max_event_age_s: int = setting(7 * 24 * 3600, env="APIM_COLLECTOR_MAX_EVENT_AGE_S",
                                   help="oldest request time accepted, seconds before now")
    max_event_future_s: int = setting(300, env="APIM_COLLECTOR_MAX_EVENT_FUTURE_S",
                                      help="latest request time accepted, seconds after now (clock skew)")
    dedup_window_s: float = setting(600.0, env="APIM_COLLECTOR_DEDUP_WINDOW_S",
                                    help="how long an acknowledged call is remembered to recognise Mixer retries "
                                         "(0: off)")
    dedup_max_calls: int = setting(100_000, env="APIM_COLLECTOR_DEDUP_MAX_CALLS",
                                   help="most calls remembered for retry recognition")
    # -- Istio 1.8+: Envoy access logs (ALS v3 and OpenTelemetry) ---------------------------------
    apis_store: str = setting("", env="APIM_COLLECTOR_APIS_STORE",
                              help="SQLAlchemy URL whose API catalog (apim-analytics apis load) access-log entries "
                                   "are matched against (empty: --subscriptions-store); re-read every "
                                   "--apis-refresh-s")
    apis_refresh_s: float = setting(60.0, env="APIM_COLLECTOR_APIS_REFRESH_S",
                                    help="how often the API catalog is re-read (0: only at start)")
    unmatched_requests: str = setting("dead-letter", env="APIM_COLLECTOR_UNMATCHED_REQUESTS",
                                      help="access-log entries that match no API: dead-letter (reason NO_API), drop "
                                           "(counted in a metric) or unmanaged (counted under API 'unmanaged')")
    access_log_safe_timeout_s: float = setting(30.0, env="APIM_COLLECTOR_ACCESS_LOG_SAFE_TIMEOUT_S",
                                               help="how long an ALS stream waits for a message's entries to become "
                                                    "safe (Kafka or spool) before it is closed with UNAVAILABLE")
    drain_idle_s: float = setting(0.5, env="APIM_COLLECTOR_DRAIN_IDLE_S",
                                  help="on SIGTERM, an ALS stream is closed once no message came for this long "
                                       "(at the latest after --shutdown-grace-s)")
    # -- callers ---------------------------------------------------------------------------------
    subscriptions: str = setting("", env="APIM_COLLECTOR_SUBSCRIPTIONS",
                                 help="subscription catalog file (YAML, CSV or JSON lines) for opaque tokens and "
                                      "API keys")
    subscriptions_store: str = setting("", env="APIM_COLLECTOR_SUBSCRIPTIONS_STORE",
                                       help="SQLAlchemy URL whose subscription_catalog table is loaded (and "
                                            "re-read every --subscriptions-refresh-s)")
    subscriptions_refresh_s: float = setting(60.0, env="APIM_COLLECTOR_SUBSCRIPTIONS_REFRESH_S",
                                             help="how often the subscription catalog is re-read")
    credential_cache_ttl_s: float = setting(300.0, env="APIM_COLLECTOR_CREDENTIAL_CACHE_TTL_S",
                                            help="how long a resolved credential is cached")
    jwt_jwks: str = setting("", env="APIM_COLLECTOR_JWT_JWKS",
                            help="JWKS file: verify JWT signatures against its keys")
    jwt_certificate: str = setting("", env="APIM_COLLECTOR_JWT_CERTIFICATE",
                                   help="PEM certificate (the API manager's): verify JWT signatures against it")
    jwt_issuer: str = setting("", env="APIM_COLLECTOR_JWT_ISSUER", help="required JWT issuer (empty: any)")
    jwt_reload_s: float = setting(300.0, env="APIM_COLLECTOR_JWT_RELOAD_S",
                                  help="how often the JWT key files are re-read, so rotated keys apply without a "
                                       "restart (SIGHUP re-reads them too; 0: only on SIGHUP)")
    # -- privacy ---------------------------------------------------------------------------------
    user_ip: str = setting("keep", env="APIM_COLLECTOR_USER_IP",
                           help="user IPs: keep, truncate (IPv4 /24, IPv6 /48) or hash")
    user_name: str = setting("keep", env="APIM_COLLECTOR_USER_NAME", help="user names: keep or hash")

    def validate(self) -> None:
        parse_host_port("--listen", self.listen)
        if self.metrics_listen:
            parse_host_port("--metrics-listen", self.metrics_listen)
        if self.topic_partitions < 1:
            raise SettingsError("--topic-partitions must be at least 1")
        if self.partition_by not in ("call", "application"):
            raise SettingsError(f"--partition-by: call or application, not {self.partition_by!r}")
        if self.kafka_compression not in KAFKA_COMPRESSIONS:
            raise SettingsError(f"--kafka-compression: unknown codec {self.kafka_compression!r}")
        if self.kafka_client not in ("kafka-python", "confluent"):
            raise SettingsError(f"--kafka-client: kafka-python or confluent, not {self.kafka_client!r}")
        if self.kafka_client == "confluent":
            try:
                import confluent_kafka  # noqa: F401
            except ImportError as exc:
                raise SettingsError("--kafka-client confluent needs confluent-kafka "
                                    "(pip install 'istio-apim-analytics[bench]')") from exc
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.user_ip not in ("keep", "truncate", "hash"):
            raise SettingsError(f"--user-ip: keep, truncate or hash, not {self.user_ip!r}")
        if self.user_name not in ("keep", "hash"):
            raise SettingsError(f"--user-name: keep or hash, not {self.user_name!r}")
        for name in ("max_message_mb", "max_instances_per_call", "max_string_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.jwt_reload_s >= 0:
            raise SettingsError("--jwt-reload-s must be 0 (off) or more")
        if not self.spool_max_mb > 0:
            raise SettingsError("--spool-max-mb must be above 0")
        if self.unmatched_requests not in ("dead-letter", "drop", "unmanaged"):
            raise SettingsError("--unmatched-requests: dead-letter, drop or unmanaged, "
                                f"not {self.unmatched_requests!r}")
        if not self.access_log_safe_timeout_s > 0:
            raise SettingsError("--access-log-safe-timeout-s must be above 0")
        if not self.spool_dir:
            raise SettingsError("--spool-dir must name a folder")
