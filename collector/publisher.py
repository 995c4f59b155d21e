"""Putting usage events on Kafka, one record per (call, partition).

Partitioning: an event's partition is ``murmur2(application_id) % partitions``,
the same hash as Kafka's default partitioner, so all of an application's events
land on one partition, in order. The events of one Mixer call that share a
partition travel as one ``UsageEventBatch`` record: kafka-python costs ~40-80 us
per record in pure Python (engineering.md e), so packing is what lets one
collector process keep up with a mesh.

Mixer gets its answer only after Kafka acknowledged every record of the call
(``acks=all``, idempotent producer).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from schemas.apim.usage.v1 import usage_event_pb2 as pb

log = logging.getLogger(__name__)

SCHEMA_HEADER = ("schema", b"apim.usage.v1.UsageEventBatch")
CONTENT_TYPE_HEADER = ("content-type", b"application/x-protobuf")


def partition_for(application_id: str, partitions: int) -> int:
    """Kafka's default partitioner hash, applied to the application id."""
    return (murmur2(application_id.encode("utf-8", "surrogatepass")) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class ProducerSettings:
    bootstrap: str
    topic: str
    linger_ms: int = 5
    batch_size: int = 1 << 20
    compression: str | None = "lz4"
    request_timeout_ms: int = 30_000
    max_request_size: int = 8 << 20
    client_id: str = "apim-collector"


class KafkaPublisher:
    """Thin async facade over kafka-python's thread-based producer."""

    def __init__(self, settings: ProducerSettings, source: str = "mixer-metric-adapter") -> None:
        self.settings = settings
        self.producer_id = f"{socket.gethostname()}"
        self._headers = [SCHEMA_HEADER, CONTENT_TYPE_HEADER, ("source", source.encode())]
        self._producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id=settings.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=settings.linger_ms,
            batch_size=settings.batch_size,
            compression_type=settings.compression,
            request_timeout_ms=settings.request_timeout_ms,
            max_request_size=settings.max_request_size,
        )
        self._partitions = self._discover_partitions()

    def _discover_partitions(self) -> int:
        deadline = time.monotonic() + 30
        while True:
            parts = self._producer.partitions_for(self.settings.topic)
            if parts:
                return len(parts)
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {self.settings.topic!r} has no partitions on {self.settings.bootstrap}")
            time.sleep(0.2)

    @property
    def partitions(self) -> int:
        return self._partitions

    def encode(self, events: Sequence[pb.UsageEvent]) -> dict[int, bytes]:
        """Group ``events`` by partition and serialize one batch per partition."""
        by_partition: dict[int, list[pb.UsageEvent]] = defaultdict(list)
        for ev in events:
            by_partition[partition_for(ev.application_id, self._partitions)].append(ev)
        now_ms = int(time.time() * 1000)
        out = {}
        for partition, group in by_partition.items():
            batch = pb.UsageEventBatch(producer_id=self.producer_id, produced_timestamp_ms=now_ms)
            batch.events.extend(group)
            out[partition] = batch.SerializeToString()
        return out

    async def publish(self, events: Sequence[pb.UsageEvent], timeout_s: float = 30.0) -> int:
        """Send ``events`` and wait until Kafka acknowledged all of them; returns records sent.

        Raises:
            asyncio.TimeoutError / KafkaError: not acknowledged; the caller must not answer OK.
        """
        if not events:
            return 0
        loop = asyncio.get_running_loop()
        waiters = []
        for partition, payload in self.encode(events).items():
            fut: asyncio.Future[None] = loop.create_future()
            kfut = self._producer.send(
                self.settings.topic, value=payload, partition=partition, headers=self._headers
            )
            kfut.add_callback(lambda _md, f=fut: loop.call_soon_threadsafe(_resolve, f, None))
            kfut.add_errback(lambda exc, f=fut: loop.call_soon_threadsafe(_resolve, f, exc))
            waiters.append(fut)
        await asyncio.wait_for(asyncio.gather(*waiters), timeout_s)
        return len(waiters)

    def flush(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        self._producer.close(timeout=timeout_s)


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
