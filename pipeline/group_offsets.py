"""The advisory Kafka commit: the consumer group's offsets mirror the store's, for lag tooling.

The store's ``source_offsets`` are the only truth for where the pipeline reads
(pipeline.commit); the pipeline never reads a consumer group's offsets back.
But operators watch Kafka lag with standard tools (``kafka-consumer-groups.sh
--describe --group apim-pipeline``, Burrow, lag exporters), which only know
consumer groups. So after each run's store transaction has committed, the
store's offsets for the topic are written to the group ``--consumer-group``
(Kafka's OffsetCommit through the admin API; the group has no members, the
pipeline reads assigned ranges). A failure is logged and otherwise ignored: the
run is already committed, and the next run writes all of the topic's offsets
again. An empty ``--consumer-group`` turns this off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from kafka import TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    KafkaError,
    NoError,
    NotCoordinatorError,
)
from kafka.structs import OffsetAndMetadata
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from core.errors import ApimError
from pipeline.offsets import BOOTSTRAP_TIMEOUT_MS, stored_offsets

log = logging.getLogger(__name__)

#: Attempts when the group's coordinator is not ready (the first time a broker sees a group, while it
#: creates __consumer_offsets, or while the coordinator moves); other failures are not retried.
ATTEMPTS = 3
_COORDINATOR_NOT_READY = (CoordinatorNotAvailableError, CoordinatorLoadInProgressError, NotCoordinatorError)
RETRY_PAUSE_S = 0.5


def mirror_store_offsets(engine: Engine, bootstrap: str, group: str, topic: str) -> bool:
    """After a run's store commit: give ``group`` the store's offsets for every partition of ``topic``.

    Every partition, not only the run's: a partition whose earlier advisory commit failed is caught up
    by the next one. Never raises for the store or Kafka being away (returns False and logs).
    """
    if not group:
        return True
    try:
        offsets = stored_offsets(engine, topic)
    except (SQLAlchemyError, ApimError) as exc:
        log.warning("advisory Kafka commit skipped: the store's offsets could not be read",
                    extra={"group": group, "topic": topic, "error": f"{type(exc).__name__}: {exc}"[:500]})
        return False
    return mirror_group_offsets(bootstrap, group, topic, offsets)


def mirror_group_offsets(bootstrap: str, group: str, topic: str, offsets: Mapping[int, int]) -> bool:
    """Set ``group``'s committed offsets on ``topic`` to ``offsets`` (partition -> next offset).

    Never raises (bar programming errors): returns False, and logs a warning, when Kafka did not
    take them.
    """
    if not group or not offsets:
        return True  # off, or nothing to mirror
    wanted = {TopicPartition(topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
    problem = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(RETRY_PAUSE_S)
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="apim-pipeline-group-offsets",
                                     bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
            try:
                answers = admin.alter_group_offsets(group, wanted)
            finally:
                admin.close()
        except (KafkaError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, _COORDINATOR_NOT_READY):
                continue
            break
        refused = {tp.partition: err for tp, err in answers.items() if err is not NoError}
        if not refused:
            return True
        problem = f"refused for partitions {({p: e.__name__ for p, e in refused.items()})}"
        if not all(issubclass(e, _COORDINATOR_NOT_READY) for e in refused.values()):
            break
    log.warning("advisory Kafka commit of the store's offsets failed (lag tools show stale offsets until a "
                "later run succeeds; the store's offsets are unaffected)",
                extra={"group": group, "topic": topic, "error": problem})
    return False
