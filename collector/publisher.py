"""The Kafka side of the collector: one producer, records awaited from asyncio.

The producer is kafka-python's, set for safety: ``acks=all``, idempotent,
unlimited retries within ``delivery_timeout``; batching with a short linger and
lz4 compression. The record key is the call id (the same for a retried or
replayed call, so consumers can recognise one), and the partition is chosen
explicitly from the application (see collector.columns), which keeps each
application's events in order on one partition and spreads applications over
all partitions. Headers name the schema and the source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from kafka import KafkaProducer

log = logging.getLogger(__name__)

USAGE_SCHEMA = b"apim.usage.v1.UsageEventColumns"
DEAD_LETTER_SCHEMA = b"apim.usage.v1.DeadLetter"


@dataclass(frozen=True)
class Record:
    """One Kafka record to write."""

    topic: str
    partition: int | None
    key: bytes
    value: bytes
    schema: bytes = USAGE_SCHEMA


@dataclass(frozen=True)
class ProducerSettings:
    bootstrap: str
    linger_ms: int = 2
    batch_size: int = 1 << 20
    compression: str | None = "lz4"
    request_timeout_ms: int = 10_000
    max_request_size: int = 16 << 20
    client_id: str = "apim-collector"
    source: str = "mixer-metric-adapter"


class KafkaPublisher:
    """Thin async facade over kafka-python's thread-based producer."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.settings = settings
        self._source = settings.source.encode()
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
            max_block_ms=2000,
        )

    def partitions(self, topic: str, timeout_s: float = 30.0) -> int:
        """The topic's partition count, waiting for metadata."""
        deadline = time.monotonic() + timeout_s
        while True:
            parts = self._producer.partitions_for(topic)
            if parts:
                return len(parts)
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic!r} has no partitions on {self.settings.bootstrap}")
            time.sleep(0.2)

    async def send(self, records: Sequence[Record], timeout_s: float) -> None:
        """Write ``records`` and wait until Kafka acknowledged every one of them.

        Raises:
            Exception: any record not acknowledged in time; the records may still
                arrive later, which is why consumers deduplicate by call id.
        """
        if not records:
            return
        loop = asyncio.get_running_loop()
        waiters = []
        for r in records:
            fut: asyncio.Future[None] = loop.create_future()
            kfut = self._producer.send(r.topic, value=r.value, key=r.key, partition=r.partition,
                                       headers=[("schema", r.schema), ("source", self._source)])
            kfut.add_callback(lambda _md, f=fut: loop.call_soon_threadsafe(_resolve, f, None))
            kfut.add_errback(lambda exc, f=fut: loop.call_soon_threadsafe(_resolve, f, exc))
            waiters.append(fut)
        await asyncio.wait_for(asyncio.gather(*waiters), timeout_s)

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
