"""The collector's configuration: flags, ``APIM_COLLECTOR_*`` variables, or the
``collector:`` section of the config file (see apim_analytics.settings)."""

from __future__ import annotations

from dataclasses import dataclass
from apim_analytics.settings import SettingsError, parse_host_port, setting


@dataclass(frozen=True)
class CollectorSettings:
    listen: str = setting("127.0.0.1:9091", env="APIM_COLLECTOR_LISTEN",
                          help="gRPC address Mixer calls (HOST:PORT)")
    kafka: str = setting("127.0.0.1:9092", env="APIM_KAFKA_BOOTSTRAP",
                         help="Kafka bootstrap servers (comma-separated HOST:PORT)")
    topic: str = setting("apim.usage.v1", env="APIM_TOPIC", help="Kafka topic for usage events")
    topic_partitions: int = setting(6, env="APIM_TOPIC_PARTITIONS",
                                    help="partitions when the collector creates the topic")
    subscriptions: str = setting("", env="APIM_COLLECTOR_SUBSCRIPTIONS",
                                 help="subscription catalog file (JSON lines or CSV) for opaque tokens and API keys")
    metrics_listen: str = setting("127.0.0.1:9102", env="APIM_COLLECTOR_METRICS_LISTEN",
                                  help="HTTP address of the Prometheus /metrics endpoint (empty: off)")
    max_message_mb: int = setting(16, env="APIM_COLLECTOR_MAX_MESSAGE_MB",
                                  help="largest gRPC request accepted, in MiB")
    max_concurrent_calls: int = setting(64, env="APIM_COLLECTOR_MAX_CONCURRENT_CALLS",
                                        help="calls handled at once; more wait in gRPC's queue")
    kafka_linger_ms: int = setting(5, env="APIM_KAFKA_LINGER_MS", help="producer linger (batching delay), ms")
    kafka_compression: str = setting("lz4", env="APIM_KAFKA_COMPRESSION",
                                     help="producer compression: lz4, gzip, zstd or none")
    ack_timeout_s: float = setting(30.0, env="APIM_COLLECTOR_ACK_TIMEOUT_S",
                                   help="how long a call waits for Kafka's acknowledgement")
    dedup_window_s: float = setting(600.0, env="APIM_COLLECTOR_DEDUP_WINDOW_S",
                                    help="how long an acknowledged call is remembered to recognise Mixer retries "
                                         "(0: off)")
    dedup_max_calls: int = setting(100_000, env="APIM_COLLECTOR_DEDUP_MAX_CALLS",
                                   help="most calls remembered for retry recognition")
    shutdown_grace_s: float = setting(10.0, env="APIM_COLLECTOR_SHUTDOWN_GRACE_S",
                                      help="grace period for in-flight calls on shutdown")

    def validate(self) -> None:
        parse_host_port("--listen", self.listen)
        if self.metrics_listen:
            parse_host_port("--metrics-listen", self.metrics_listen)
        if self.topic_partitions < 1:
            raise SettingsError("--topic-partitions must be at least 1")
        if self.kafka_compression not in ("lz4", "gzip", "zstd", "snappy", "none"):
            raise SettingsError(f"--kafka-compression: unknown codec {self.kafka_compression!r}")
