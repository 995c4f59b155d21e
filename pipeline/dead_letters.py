"""Copying poison records to the dead-letter topic: a step of its own, after decoding, before the commit.

At least once: the commit of a range waits for its dead letters' acknowledgement
(:class:`~pipeline.elements.DeadLettersWritten`), so a crash between the two
copies a dead letter again on the replay, under the same key
(topic/partition/offset), and never loses one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import apache_beam as beam
from kafka import KafkaProducer
from kafka.errors import KafkaError

from core.kafka_errors import translate_kafka
from pipeline.elements import DeadLettersWritten, DeadRecord
from pipeline.offsets import BOOTSTRAP_TIMEOUT_MS
from pipeline.transforms import DeadBatch


class DeadLetters:
    """Copies poison records to the dead-letter topic with their reason.

    At least once: a run that crashes after this step and is replayed copies
    its dead records again, under the same key (topic/partition/offset), so a
    consumer of the dead-letter topic can tell the copies apart.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer: KafkaProducer | None = None

    def publish(self, dead: Sequence[DeadRecord]) -> None:
        """Copy ``dead`` to the topic and wait for Kafka's acknowledgement of every copy.

        Raises:
            core.kafka_errors.KafkaUnavailable: Kafka away or slow (retriable: the run is planned
                again, and its dead records copied again).
            core.kafka_errors.KafkaRefused: Kafka refuses the topic or a copy.
        """
        if not dead or not self.topic:
            return
        try:
            self._publish(dead)
        except (KafkaError, OSError) as exc:
            raise translate_kafka(exc, bootstrap=self.bootstrap, topic=self.topic,
                                  doing="copying dead letters to") from exc

    def _publish(self, dead: Sequence[DeadRecord]) -> None:
        from core.record_format import DEAD_LETTER_SCHEMA
        from schemas.apim.usage.v1.dead_letter_pb2 import DeadLetter

        if self._producer is None:  # most runs have no dead records and need no producer
            from core.topics import ensure_topic

            ensure_topic(self.bootstrap, self.topic, partitions=1)
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                           client_id="apim-pipeline-dead-letters", max_request_size=16 << 20,
                                           bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
        now_ms = int(time.time() * 1000)
        sent = []
        for d in dead:
            letter = DeadLetter(reason=d.reason, reason_code=d.code, stage="pipeline", rejected_timestamp_ms=now_ms,
                                topic=d.topic, partition=d.partition, offset=d.offset, record_value=d.value or b"")
            sent.append(self._producer.send(self.topic, value=letter.SerializeToString(),
                                            key=f"{d.topic}/{d.partition}/{d.offset}".encode(),
                                            headers=[("schema", DEAD_LETTER_SCHEMA)]))
        self._producer.flush(timeout=30)
        for future in sent:  # flush() does not raise for a copy Kafka refused; its future holds the error
            if future.failed():
                raise future.exception

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None


class WriteDeadLetters(beam.DoFn):
    """DeadBatch -> its records on the dead-letter topic -> DeadLettersWritten (the commit waits for it)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._dead_letters: DeadLetters | None = None

    def setup(self) -> None:
        self._dead_letters = DeadLetters(self.bootstrap, self.topic)

    def teardown(self) -> None:
        if self._dead_letters is not None:
            self._dead_letters.close()

    def process(self, dead: DeadBatch) -> Iterator[DeadLettersWritten]:
        assert self._dead_letters is not None  # setup() ran
        self._dead_letters.publish(sorted(dead.records))
        yield DeadLettersWritten(dead.topic, dead.partition, dead.start, dead.end, len(dead.records))
