"""Making a call's records safe: acknowledged by Kafka, or durable in the local spool.

Two modes:

- DIRECT (the spool is empty): records go to Kafka; the call is answered once
  Kafka acknowledged them. If Kafka does not acknowledge within the ack
  timeout, the records are appended to the spool instead (fsync'd), the mode
  switches to SPOOLING, and the call is still answered OK.
- SPOOLING (the spool holds records): new records are appended to the spool
  behind the older ones, so order is kept, and a drain task sends the spool to
  Kafka oldest first, acknowledging spool entries only after Kafka did. When
  the spool is empty again, the mode returns to DIRECT.

When the spool is full, ``deliver`` raises :class:`collector.spool.SpoolFull`;
the server answers UNAVAILABLE and Mixer retries: nothing is dropped silently.

A record whose send timed out may still reach Kafka later (the producer keeps
retrying it) while its spooled copy is drained too. Both copies carry the same
key (the call id), and the pipeline counts a call id once per partition, so the
store never double-counts; the duplicate costs only a little Kafka space.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time

from prometheus_client import Counter, Gauge, Histogram

from collector.errors import RecordRejected
from collector.publisher import KafkaPublisher, Record
from collector.spool import Spool
from core.errors import ApimError

log = logging.getLogger(__name__)

SPOOLED = Counter("apim_collector_records_spooled_total", "records written to the local spool")
DRAINED = Counter("apim_collector_records_drained_total", "spooled records later acknowledged by Kafka")
SPOOL_DEPTH = Gauge("apim_collector_spool_depth_records", "records waiting in the local spool")
SPOOL_BYTES = Gauge("apim_collector_spool_depth_bytes", "bytes waiting in the local spool")
PRODUCE_SECONDS = Histogram("apim_collector_produce_seconds", "time until Kafka acknowledged a call's records",
                            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SET_ASIDE = Counter("apim_collector_records_set_aside_total",
                    "spooled records Kafka refuses for good (too large), kept in <spool>/rejected")
MODE = Gauge("apim_collector_spooling", "1 while records go to the spool instead of Kafka")

_HEAD = struct.Struct(">HiHH")  # topic len, partition (-1: none), key len, schema len


def encode_record(r: Record) -> bytes:
    topic = r.topic.encode()
    return b"".join((_HEAD.pack(len(topic), -1 if r.partition is None else r.partition, len(r.key), len(r.schema)),
                     topic, r.key, r.schema, r.value))


def decode_record(data: bytes) -> Record:
    tlen, partition, klen, slen = _HEAD.unpack_from(data)
    pos = _HEAD.size
    topic = data[pos:pos + tlen].decode()
    pos += tlen
    key = data[pos:pos + klen]
    pos += klen
    schema = data[pos:pos + slen]
    pos += slen
    return Record(topic=topic, partition=None if partition < 0 else partition, key=key, value=data[pos:],
                  schema=schema)


class SafeDelivery:
    """Kafka when it answers, the spool when it does not; drains the spool in order."""

    def __init__(self, publisher: KafkaPublisher, spool: Spool, *, ack_timeout_s: float,
                 drain_timeout_s: float = 10.0, drain_batch: int = 512, drain_bytes: int = 4 << 20,
                 retry_backoff_s: float = 0.5) -> None:
        self.publisher = publisher
        self.spool = spool
        self.ack_timeout_s = ack_timeout_s
        self.drain_batch = drain_batch
        self.drain_bytes = drain_bytes
        # A drain batch not acknowledged in time is not re-sent on the same
        # producer (that would pile up copies behind a stuck one): the producer is
        # abandoned with what it holds and a fresh one sends the batch again.
        self.drain_timeout_s = drain_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self._drainer: asyncio.Task[None] | None = None
        self._resetting: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._update_gauges()

    @property
    def spooling(self) -> bool:
        return not self.spool.empty

    def start(self) -> None:
        """Start the drain task (it drains whatever a previous run left in the spool)."""
        self._drainer = asyncio.get_running_loop().create_task(self._drain_forever(), name="spool-drainer")
        if self.spooling:
            log.info("spool holds records from before; draining", extra={"records": self.spool.depth_entries})
        if self.spooling or not self.publisher.ready:
            self._wake.set()

    async def deliver(self, records: list[Record]) -> str:
        """Make ``records`` safe; returns ``"kafka"`` or ``"spool"``.

        Raises:
            SpoolFull: neither Kafka nor the spool can take them now.
        """
        if not records:
            return "kafka"
        if not self.spooling and self.publisher.ready:
            started = time.perf_counter()
            try:
                await self.publisher.send(records, self.ack_timeout_s)
                PRODUCE_SECONDS.observe(time.perf_counter() - started)
                return "kafka"
            except ApimError as exc:  # Kafka away, slow or refusing (the publisher translated it)
                log.warning("Kafka did not acknowledge; spooling", extra={"records": len(records),
                                                                          "error": exc.one_line()[:300]})
                if not isinstance(exc, RecordRejected):  # a new producer cannot send a rejected record either
                    self._reset_soon()
            except Exception:
                # call's records must still be made safe (the no-loss guarantee), so they go to the spool too
                log.exception("sending to Kafka failed unexpectedly; spooling", extra={"records": len(records)})
                self._reset_soon()
        await self.spool.append([encode_record(r) for r in records])
        SPOOLED.inc(len(records))
        self._update_gauges()
        self._wake.set()
        return "spool"

    def _reset_soon(self) -> None:
        """Abandon the producer once (its pending copies are in the spool now); the drainer builds a new one."""
        if self._resetting is None or self._resetting.done():
            self._resetting = asyncio.get_running_loop().create_task(self._reset_quietly())

    async def _drain_forever(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            while not self._closing and (self.spooling or not self.publisher.ready):
                try:
                    if self._resetting is not None:
                        await self._resetting
                    await self.publisher.ensure()
                except ApimError as exc:  # Kafka still away (or refusing the client): try again later
                    log_at = log.info if exc.retriable else log.error
                    log_at("waiting for Kafka", extra={"error": exc.one_line()[:300],
                                                       "records": self.spool.depth_entries})
                    await asyncio.sleep(self.retry_backoff_s)
                    continue
                except Exception:
                    # not end, or the spooled records (acknowledged to Mixer) would never reach Kafka
                    log.exception("building a producer failed unexpectedly; trying again")
                    await asyncio.sleep(self.retry_backoff_s)
                    continue
                entries = await self.spool.read(self.drain_batch, self.drain_bytes)
                if not entries:
                    break
                try:
                    await self.publisher.send([decode_record(data) for _, data in entries], self.drain_timeout_s)
                except RecordRejected as exc:  # never sendable: must not block the spool
                    await self._set_aside(entries, exc)
                    continue
                except ApimError as exc:  # Kafka still away (or refusing): try again later, keeping the records
                    log_at = log.info if exc.retriable else log.error
                    log_at("spool drain waiting for Kafka", extra={"error": exc.one_line()[:300],
                                                                   "records": self.spool.depth_entries})
                    await self._reset_quietly()
                    await asyncio.sleep(self.retry_backoff_s)
                    continue
                except Exception:
                    # in the spool and the drain goes on (ending this task would strand them)
                    log.exception("spool drain failed unexpectedly; trying again",
                                  extra={"records": self.spool.depth_entries})
                    await self._reset_quietly()
                    await asyncio.sleep(self.retry_backoff_s)
                    continue
                await self.spool.ack(entries[-1][0])
                DRAINED.inc(len(entries))
                self._update_gauges()
                if not self.spooling:
                    log.info("spool drained; back to direct delivery")

    async def _reset_quietly(self) -> None:
        try:
            await self.publisher.reset()
        except Exception as exc:  # noqa: BLE001 - a producer that will not close is dropped anyway
            log.warning("closing the old producer failed", extra={"error": repr(exc)[:200]})

    async def _set_aside(self, entries: list, exc: RecordRejected) -> None:
        """Records Kafka will never accept (too large for the broker) must not block the
        spool forever: they are moved to ``<spool>/rejected/`` for an operator, counted
        and logged as errors, and the drain goes on."""
        folder = self.spool.directory / "rejected"
        folder.mkdir(exist_ok=True)
        for position, data in entries:
            (folder / f"{int(time.time() * 1000)}-{position.segment}-{position.offset}.record").write_bytes(data)
        await self.spool.ack(entries[-1][0])
        SET_ASIDE.inc(len(entries))
        log.error("Kafka refuses these records for good; set aside for an operator",
                  extra={"records": len(entries), "folder": str(folder), "error": exc.one_line()[:300]})
        self._update_gauges()

    def _update_gauges(self) -> None:
        SPOOL_DEPTH.set(self.spool.depth_entries)
        SPOOL_BYTES.set(self.spool.depth_bytes)
        MODE.set(1 if self.spooling else 0)

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Give the drainer a moment to empty the spool, then stop it (the spool keeps the rest)."""
        if self.spooling:
            deadline = time.monotonic() + drain_timeout_s
            while self.spooling and time.monotonic() < deadline:
                self._wake.set()
                await asyncio.sleep(0.05)
        self._closing = True
        self._wake.set()
        if self._drainer is not None:
            self._drainer.cancel()
            try:
                await self._drainer
            except asyncio.CancelledError:
                pass
        await self.spool.close()
