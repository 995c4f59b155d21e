"""Create the usage topic (and later the dead-letter topic) when it is missing."""

from __future__ import annotations

import logging
import time

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


def ensure_topic(bootstrap: str, topic: str, partitions: int, replication: int = 1,
                 timeout_s: float = 30.0) -> int:
    """Create ``topic`` if absent; returns its partition count (existing topics keep theirs)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="apim-topics",
                             bootstrap_timeout_ms=int(timeout_s * 1000))
    try:
        try:
            admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": replication}},
                                wait_for_metadata=True)
            log.info("created topic", extra={"topic": topic, "partitions": partitions})
        except TopicAlreadyExistsError:
            pass
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                desc = admin.describe_topics([topic])
                parts = desc[0].get("partitions") if desc else None
                if parts:
                    return len(parts)
            except KafkaError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic!r} not visible on {bootstrap} after {timeout_s}s")
            time.sleep(0.2)
    finally:
        admin.close()
