"""The Kafka side of the collector: one producer, records awaited from asyncio.

The producer is kafka-python's, set for safety: ``acks=all``, idempotent,
unlimited retries within ``delivery_timeout``; batching with a short linger and
lz4 compression. The record key is the call id (the same for a retried or
replayed call, so consumers can recognise one), and the partition is chosen
explicitly by collector.columns: from the call id by default (one record per
call), or from the application (``--partition-by application``). Headers name
the schema and the source.

Kafka's errors enter the collector here and leave as ours (see :meth:`KafkaPublisher.translate`):
:class:`~collector.errors.RecordRejected` when the cluster will never take the record,
:class:`~collector.errors.KafkaUnavailable` (retriable) when Kafka is away or slow, and
:class:`~core.kafka_errors.KafkaRefused` for a refusal a retry will not fix. Classification reads
the clients' error types and codes, never their message text.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer

from collector.errors import KafkaUnavailable, RecordRejected
from core.errors import ApimError
from core.kafka_errors import KAFKA_HINT, kafka_place, kafka_reason, record_too_large, translate_kafka
from core.record_format import USAGE_RECORD_SCHEMA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One Kafka record to write."""

    topic: str
    partition: int | None
    key: bytes
    value: bytes
    schema: bytes = USAGE_RECORD_SCHEMA


@dataclass(frozen=True)
class ProducerSettings:
    bootstrap: str
    linger_ms: int = 2
    batch_size: int = 1 << 20
    compression: str | None = "lz4"
    request_timeout_ms: int = 10_000
    # How long the producer keeps retrying a record before giving up on it. A
    # record the collector spooled after an ack timeout may still arrive within
    # this window (the pipeline counts its call id once).
    delivery_timeout_ms: int = 30_000
    max_request_size: int = 16 << 20
    client_id: str = "apim-collector"
    source: str = "mixer-metric-adapter"


class KafkaPublisher:
    """Thin async facade over kafka-python's thread-based producer.

    After a failure the collector *resets* the publisher: the old producer is
    closed without waiting, which discards the copies it still held (their
    records are in the spool by then), and a fresh producer with a fresh
    idempotence id is built when Kafka answers again. A producer that lived
    through a broker crash can otherwise keep retrying stale batches for its
    whole delivery timeout.
    """

    def __init__(self, settings: ProducerSettings) -> None:
        self.settings = settings
        self._source = settings.source.encode()
        self._producer: KafkaProducer | None = None

    def _build(self) -> KafkaProducer:
        s = self.settings
        return KafkaProducer(
            bootstrap_servers=s.bootstrap,
            client_id=s.client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=s.linger_ms,
            batch_size=s.batch_size,
            compression_type=s.compression,
            request_timeout_ms=s.request_timeout_ms,
            delivery_timeout_ms=max(s.delivery_timeout_ms, s.request_timeout_ms + s.linger_ms),
            max_request_size=s.max_request_size,
            # send() runs on the event loop: never let it block for long when the
            # buffer is full; the call falls back to the spool instead.
            max_block_ms=200,
            bootstrap_timeout_ms=5000,
        )

    @property
    def ready(self) -> bool:
        return self._producer is not None

    @property
    def delivery_timeout_s(self) -> float:
        s = self.settings
        return max(s.delivery_timeout_ms, s.request_timeout_ms + s.linger_ms) / 1000.0

    def translate(self, exc: BaseException, doing: str = "sending to") -> ApimError:
        """Our error for what the Kafka client raised or reported (returned, for ``raise ... from``).

        A record too large for the producer or the broker (by error type or code) becomes
        :class:`RecordRejected`, not retriable: no retry or new producer can send it. Anything
        else Kafka-side follows the client's own retriable flag (``core.kafka_errors``).
        """
        if isinstance(exc, ApimError):
            return exc
        place = kafka_place(self.settings.bootstrap)
        if record_too_large(exc):
            return RecordRejected(f"{place} refuses the record for good: {kafka_reason(exc)}",
                                  hint="raise the topic's max.message.bytes (and the collector's "
                                       "--kafka-max-record-bytes) or send smaller batches")
        translated = translate_kafka(exc, bootstrap=self.settings.bootstrap, doing=doing)
        if translated.retriable:
            return KafkaUnavailable(str(translated), hint=translated.hint)
        return translated

    def connect(self) -> None:
        """Build the producer (blocking).

        Raises:
            KafkaUnavailable: Kafka does not answer (retriable).
            core.kafka_errors.KafkaRefused: Kafka refuses the client (configuration, authorization).
        """
        if self._producer is None:
            try:
                self._producer = self._build()
            except Exception as exc:
                raise self.translate(exc, doing="connecting to") from exc

    async def ensure(self) -> None:
        """Build the producer if there is none, off the event loop."""
        if self._producer is None:
            await asyncio.get_running_loop().run_in_executor(None, self.connect)

    async def reset(self) -> None:
        """Drop the current producer and everything it still holds."""
        old, self._producer = self._producer, None
        if old is not None:
            await asyncio.get_running_loop().run_in_executor(None, lambda: old.close(timeout=0))

    async def send(self, records: Sequence[Record], timeout_s: float) -> None:
        """Write ``records`` and wait until Kafka acknowledged every one of them.

        Raises:
            KafkaUnavailable: no producer is connected, Kafka is away, or a record was not
                acknowledged within ``timeout_s`` (retriable).
            RecordRejected: a record Kafka will never accept (too large).
            core.kafka_errors.KafkaRefused: Kafka refused for another reason a retry will not fix.
        """
        if not records:
            return
        producer = self._producer
        if producer is None:
            raise KafkaUnavailable(f"no producer connected to {kafka_place(self.settings.bootstrap)}",
                                   hint=KAFKA_HINT)
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[None]] = []
        try:
            for r in records:
                fut: asyncio.Future[None] = loop.create_future()
                waiters.append(fut)
                self._submit(producer, r, fut, loop)  # kafka-python raises here for a too-large record
            await asyncio.wait_for(asyncio.gather(*waiters), timeout_s)
        except BaseException as exc:
            for w in waiters:  # nobody will look at the others now
                if not w.done():
                    w.cancel()
                elif not w.cancelled():
                    w.exception()
            if isinstance(exc, TimeoutError):  # asyncio.wait_for's own: no acknowledgement in time
                raise KafkaUnavailable(f"{kafka_place(self.settings.bootstrap)} did not acknowledge "
                                       f"{len(records)} records within {timeout_s:g}s", hint=KAFKA_HINT) from exc
            if isinstance(exc, Exception) and not isinstance(exc, ApimError):
                # what the client raised in send() or reported for a record (its delivery callback)
                raise self.translate(exc) from exc
            raise  # ours already, or cancellation

    def _submit(self, producer: Any, r: Record, fut: asyncio.Future[None],
                loop: asyncio.AbstractEventLoop) -> None:
        """Hand one record to the client; ``fut`` is resolved from its delivery report."""
        kfut = producer.send(r.topic, value=r.value, key=r.key, partition=r.partition,
                             headers=[("schema", r.schema), ("source", self._source)])
        kfut.add_callback(lambda _md: loop.call_soon_threadsafe(_resolve, fut, None))
        kfut.add_errback(lambda exc: loop.call_soon_threadsafe(_resolve, fut, exc))

    def close(self, timeout_s: float = 30.0) -> None:
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)
            self._producer = None


def _resolve(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)


class ConfluentPublisher(KafkaPublisher):
    """The same contract on confluent-kafka (librdkafka), the optional faster client.

    kafka-python spends 40-80 us of pure Python per record and wakes its IO
    thread for every send; librdkafka does that work in C threads. Delivery
    reports arrive through ``poll()``, run by a small thread of our own.
    Installed with ``pip install 'istio-apim-analytics[bench]'`` and chosen
    with ``--kafka-client confluent``.
    """

    def __init__(self, settings: ProducerSettings) -> None:
        super().__init__(settings)
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()

    def _build(self):
        from confluent_kafka import Producer

        s = self.settings
        producer = Producer({
            "bootstrap.servers": s.bootstrap, "client.id": s.client_id, "acks": "all",
            "enable.idempotence": True, "linger.ms": s.linger_ms,
            "compression.type": s.compression or "none", "message.max.bytes": s.max_request_size,
            "request.timeout.ms": s.request_timeout_ms,
            "delivery.timeout.ms": int(self.delivery_timeout_s * 1000),
            "queue.buffering.max.kbytes": 65536,
        })
        # Fail fast when the cluster does not answer, as kafka-python's constructor does.
        producer.list_topics(timeout=5.0)
        self._stop_polling = threading.Event()
        stop = self._stop_polling
        def poll_reports() -> None:
            while not stop.is_set():
                producer.poll(0.05)

        self._poller = threading.Thread(target=poll_reports, name="kafka-delivery-reports", daemon=True)
        self._poller.start()
        return producer

    async def reset(self) -> None:
        old, self._producer = self._producer, None
        self._stop_polling.set()
        if old is not None:
            await asyncio.get_running_loop().run_in_executor(None, lambda: (old.purge(), old.flush(0)))

    def _submit(self, producer: Any, r: Record, fut: asyncio.Future[None],
                loop: asyncio.AbstractEventLoop) -> None:
        from confluent_kafka import KafkaException

        def report(err, _msg) -> None:
            # the KafkaError itself travels (wrapped as the client raises it), so send() can
            # translate it by its code; see translate()
            loop.call_soon_threadsafe(_resolve, fut, None if err is None else KafkaException(err))

        kwargs = {} if r.partition is None else {"partition": r.partition}
        producer.produce(r.topic, value=r.value, key=r.key, headers=[("schema", r.schema), ("source", self._source)],
                         on_delivery=report, **kwargs)

    def close(self, timeout_s: float = 30.0) -> None:
        if self._producer is not None:
            self._producer.flush(timeout_s)
            self._stop_polling.set()
            self._producer = None


def make_publisher(client: str, settings: ProducerSettings) -> KafkaPublisher:
    """``kafka-python`` (the default) or ``confluent`` (optional, faster)."""
    if client == "confluent":
        return ConfluentPublisher(settings)
    return KafkaPublisher(settings)
