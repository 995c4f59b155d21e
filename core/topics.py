"""Create the usage topic (and later the dead-letter topic) when it is missing."""

from __future__ import annotations

import logging
import time

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from core.kafka_errors import KAFKA_HINT, KafkaUnavailable, kafka_place, translate_kafka

log = logging.getLogger(__name__)


def ensure_topic(bootstrap: str, topic: str, partitions: int, replication: int = 1,
                 timeout_s: float = 30.0) -> int:
    """Create ``topic`` if absent; returns its partition count (existing topics keep theirs).

    Raises:
        core.kafka_errors.KafkaUnavailable: Kafka cannot be reached, or the topic did not show up
            within ``timeout_s`` (retriable).
        core.kafka_errors.KafkaRefused: Kafka refused to create it (authorization, invalid name, ...).
    """
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="apim-topics",
                                 bootstrap_timeout_ms=int(timeout_s * 1000))
    except (KafkaError, OSError) as exc:
        raise translate_kafka(exc, bootstrap=bootstrap, topic=topic, doing="connecting to") from exc
    try:
        try:
            admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": replication}},
                                wait_for_metadata=True)
            log.info("created topic", extra={"topic": topic, "partitions": partitions})
        except TopicAlreadyExistsError:
            pass
        except (KafkaError, OSError) as exc:
            raise translate_kafka(exc, bootstrap=bootstrap, topic=topic, doing="creating the topic on") from exc
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                desc = admin.describe_topics([topic])
                parts = desc[0].get("partitions") if desc else None
                if parts:
                    return len(parts)
            except KafkaError:
                pass  # metadata still propagating (or the broker briefly away): asked again until the deadline
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"{kafka_place(bootstrap, topic)}: the topic is not visible after {timeout_s:g}s", hint=KAFKA_HINT)
            time.sleep(0.2)
    finally:
        admin.close()
