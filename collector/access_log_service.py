"""The collector's Istio 1.8+ endpoints: Envoy's access-log service and OpenTelemetry log export.

``/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs``: one client
stream per sidecar. ALS has no per-message acknowledgement and Envoy never
resends, so each message's entries are made safe (Kafka acknowledged, or the
spool fsync'd) *before* the next message is read. The stream's flow control
then holds Envoy back, and a stream's memory is one message plus one read ahead.
A message whose entries cannot be made safe within
``--access-log-safe-timeout-s`` ends the stream with UNAVAILABLE; its entries
are counted as lost. On SIGTERM a stream is served until it falls idle for
``--drain-idle-s`` (at the latest ``--shutdown-grace-s``), then closed with OK,
and Envoy reconnects to another replica.

``/opentelemetry.proto.collector.logs.v1.LogsService/Export``: unary, like
HandleMetric. It answers only once its events are safe, UNAVAILABLE when they
cannot be (OTLP exporters retry that), and a retry of an answered export is
recognised by its bytes. Records that are not counted (no API, malformed) are
reported as OTLP partial success.

The call id an ALS message's events carry is a digest of a per-stream random id
and the message's position in the stream: unique, so the pipeline's
once-per-call accounting holds for access logs too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import Counter as Tally
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_pb2
from prometheus_client import Counter, Gauge, Histogram

from collector import access_log
from collector.access_log import AccessLogBatch, AccessLogMapper, Attributes
from collector.dedup import RecentCalls
from collector.delivery import SafeDelivery
from collector.errors import MalformedCall
from collector.mapping import Rejection
from collector.publisher import Record
from collector.records import build_records
from collector.settings import CollectorSettings
from collector.spool import SpoolFull
from schemas.apim.usage.v1 import usage_event_pb2 as usage_pb2
from schemas.envoy.data.accesslog.v3 import accesslog_pb2 as log_pb
from schemas.envoy.service.accesslog.v3 import als_pb2

log = logging.getLogger(__name__)

ALS_SERVICE = als_pb2.DESCRIPTOR.services_by_name["AccessLogService"].full_name
OTLP_LOGS_SERVICE = otlp_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name

STREAMS = Gauge("apim_collector_access_log_streams_open", "ALS streams open now")
STREAMS_ENDED = Counter("apim_collector_access_log_streams_total", "ALS streams ended, by gRPC status", ["code"])
MESSAGES = Counter("apim_collector_access_log_messages_total", "ALS messages and OTLP exports handled",
                   ["protocol"])
ENTRIES = Counter("apim_collector_access_log_entries_total", "access-log entries received", ["protocol", "kind"])
ENTRY_EVENTS = Counter("apim_collector_access_log_events_total", "usage events made safe from access logs",
                       ["protocol"])
DEAD_LETTERED = Counter("apim_collector_access_log_entries_rejected_total",
                        "access-log entries dead-lettered, by reason", ["protocol", "reason"])
DROPPED = Counter("apim_collector_access_log_entries_dropped_total",
                  "access-log entries not counted on purpose (TCP_UNMAPPED, NO_API_DROPPED)", ["protocol", "reason"])
LOST = Counter("apim_collector_access_log_entries_lost_total",
               "ALS entries received but never made safe (the stream ended with UNAVAILABLE)", ["reason"])
SAFE_SECONDS = Histogram("apim_collector_access_log_safe_seconds",
                         "receipt of an ALS message or OTLP export to its events being safe", ["protocol"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class _Deliverer:
    """What the two endpoints share: catalog mapping, records, delivery."""

    protocol = ""

    def __init__(self, settings: CollectorSettings, mapper: AccessLogMapper, delivery: SafeDelivery,
                 partitions: int, producer_id: str) -> None:
        self.settings = settings
        self.mapper = mapper
        self.delivery = delivery
        self.partitions = partitions
        self.producer_id = producer_id
        self.max_bytes = settings.max_message_mb << 20
        credential = mapper.mapper.mappings.get(access_log.ACCESS_LOG_INSTANCE)
        self.credential_dims = {credential.credential} if credential and credential.credential else set()

    def _records(self, batch: AccessLogBatch, call_id: str, dedup_id: str) -> list[Record]:
        return build_records(batch.mapped, settings=self.settings, partitions=self.partitions, call_id=call_id,
                             producer_id=self.producer_id, dedup_id=dedup_id,
                             source=usage_pb2.ENVOY_ACCESS_LOG,
                             instance_of=lambda r: access_log.attributes_message(r.instance[2]),
                             credential_dims=self.credential_dims)

    def _count(self, batch: AccessLogBatch) -> None:
        ENTRY_EVENTS.labels(self.protocol).inc(len(batch.mapped.events))
        for r in batch.mapped.rejected:
            DEAD_LETTERED.labels(self.protocol, r.code).inc()
        for reason, n in batch.dropped.items():
            DROPPED.labels(self.protocol, reason).inc(n)


class AlsHandler(_Deliverer):
    """``StreamAccessLogs``: registered with raw-bytes deserialization, so a malformed message gets
    INVALID_ARGUMENT with the reason and one malformed entry costs only itself."""

    protocol = "als"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = asyncio.Event()

    async def __call__(self, requests: AsyncIterator[bytes],
                       context: grpc.aio.ServicerContext) -> als_pb2.StreamAccessLogsResponse:
        STREAMS.inc()
        code, details = grpc.StatusCode.INTERNAL, "the stream ended unexpectedly"
        try:
            code, details = await self._serve(requests)
        except Exception as exc:  # a bug must end one stream with a reason, never the server
            log.exception("ALS stream failed")
            details = f"internal error: {type(exc).__name__}: {str(exc)[:200]}"
        finally:
            STREAMS.dec()
            STREAMS_ENDED.labels(code.name).inc()
        if code is not grpc.StatusCode.OK:
            context.set_code(code)
            context.set_details(details)
        return als_pb2.StreamAccessLogsResponse()

    async def _serve(self, requests: AsyncIterator[bytes]) -> tuple[grpc.StatusCode, str]:
        stream_id = uuid.uuid4().hex
        node: Attributes | None = None
        sequence = 0
        pending: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)  # one message read ahead, no more
        reader = asyncio.create_task(self._read(requests, pending))
        try:
            while True:
                raw = await self._next(pending)
                if raw is None:
                    return grpc.StatusCode.OK, ""
                received = time.perf_counter()
                MESSAGES.labels(self.protocol).inc()
                if len(raw) > self.max_bytes:
                    return grpc.StatusCode.INVALID_ARGUMENT, \
                        f"message {sequence} is {len(raw)} bytes; the limit is {self.max_bytes}"
                try:
                    message = access_log.split_message(raw)
                    if message.identifier is not None:
                        ident = access_log.parse_identifier(message.identifier)
                        node = access_log.node_attributes(ident)
                    if node is None:
                        raise MalformedCall("the stream's first message has no identifier (node and log_name)")
                except MalformedCall as exc:
                    return grpc.StatusCode.INVALID_ARGUMENT, f"message {sequence}: {exc}"
                call_id = hashlib.blake2b(f"{stream_id}/{sequence}".encode(), digest_size=16).hexdigest()
                entries = _decode_entries(message, node)
                batch = self.mapper.map_entries(entries, call_id)
                records = self._records(batch, call_id, f"als:{stream_id}/{sequence}")
                if not await self._make_safe(records, batch.entries):
                    return grpc.StatusCode.UNAVAILABLE, (
                        f"entries of message {sequence} could not be made safe within "
                        f"{self.settings.access_log_safe_timeout_s:g} s (Kafka unreachable and the spool full)")
                SAFE_SECONDS.labels(self.protocol).observe(time.perf_counter() - received)
                self._count(batch)
                sequence += 1
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    @staticmethod
    async def _read(requests: AsyncIterator[bytes], pending: asyncio.Queue[bytes | None]) -> None:
        try:
            async for raw in requests:
                await pending.put(raw)
        except Exception as exc:  # noqa: BLE001 - a broken stream (Envoy gone): serve what was read, then end
            log.info("ALS stream broken", extra={"error": repr(exc)[:200]})
        await pending.put(None)  # the end of the stream

    async def _next(self, pending: asyncio.Queue[bytes | None]) -> bytes | None:
        """The next message; None at the stream's end, or once draining and no message came for drain_idle_s."""
        if not self.draining.is_set():
            get = asyncio.ensure_future(pending.get())
            drain = asyncio.ensure_future(self.draining.wait())
            await asyncio.wait((get, drain), return_when=asyncio.FIRST_COMPLETED)
            drain.cancel()
            if get.done():
                return get.result()
            get.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await get
        try:
            return await asyncio.wait_for(pending.get(), self.settings.drain_idle_s)
        except TimeoutError:
            return None

    async def _make_safe(self, records: list[Record], entries: int) -> bool:
        """Deliver, retrying while the spool is full, for at most access_log_safe_timeout_s."""
        deadline = time.monotonic() + self.settings.access_log_safe_timeout_s
        pause = 0.05
        while True:
            try:
                await self.delivery.deliver(records)
                return True
            except (SpoolFull, OSError) as exc:
                if time.monotonic() + pause > deadline:
                    LOST.labels("UNSAFE").inc(entries)
                    log.error("ALS entries could not be made safe; closing the stream",
                              extra={"entries": entries, "error": str(exc)[:200]})
                    return False
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)


def _decode_entries(message: access_log.StreamMessage, node: Attributes) -> list[Attributes | Rejection]:
    """Each entry's attributes, or the rejection of one that does not decode; HTTP entries first."""
    out: list[Attributes | Rejection] = []
    for raw in message.http:
        try:
            out.append(access_log.http_attributes(log_pb.HTTPAccessLogEntry.FromString(raw), node))
        except (DecodeError, RuntimeError, ValueError) as exc:
            out.append(access_log.malformed_entry(len(out), raw, exc))
    for raw in message.tcp:
        try:
            out.append(access_log.tcp_attributes(log_pb.TCPAccessLogEntry.FromString(raw), node))
        except (DecodeError, RuntimeError, ValueError) as exc:
            out.append(access_log.malformed_entry(len(out), raw, exc))
    ENTRIES.labels("als", "http").inc(len(message.http))
    if message.tcp:
        ENTRIES.labels("als", "tcp").inc(len(message.tcp))
    return out


class OtlpLogsHandler(_Deliverer):
    """``LogsService/Export``: answered only when its events are safe; unusable records are partial success."""

    protocol = "otlp"

    def __init__(self, *args: Any, recent: RecentCalls, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recent = recent

    async def __call__(self, raw: bytes, context: grpc.aio.ServicerContext) -> otlp_pb2.ExportLogsServiceResponse:
        received = time.perf_counter()
        MESSAGES.labels(self.protocol).inc()
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if len(raw) > self.max_bytes:
            return _refuse(context, invalid, f"request is {len(raw)} bytes; the limit is {self.max_bytes}")
        try:
            request = otlp_pb2.ExportLogsServiceRequest.FromString(raw)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return _refuse(context, invalid, f"malformed ExportLogsServiceRequest (not protobuf, or invalid UTF-8): "
                                             f"{str(exc)[:200]}")
        entries = access_log.otlp_attributes(request)
        ENTRIES.labels(self.protocol, "log_record").inc(len(entries))
        if len(entries) > self.settings.max_instances_per_call:
            return _refuse(context, invalid, f"{len(entries)} log records in one export; the limit is "
                                             f"{self.settings.max_instances_per_call}")
        call_id = hashlib.blake2b(raw, digest_size=16).hexdigest()
        key = call_id.encode()
        if not await self.recent.claim(key):  # an exporter's retry of an export already answered
            return otlp_pb2.ExportLogsServiceResponse()
        acknowledged = False
        try:
            batch = self.mapper.map_entries(entries, call_id)
            try:
                await self.delivery.deliver(self._records(batch, call_id, f"otlp:{call_id}"))
            except (SpoolFull, OSError) as exc:
                return _refuse(context, grpc.StatusCode.UNAVAILABLE, f"cannot make events safe now: {exc}")
            acknowledged = True
        finally:
            self.recent.finish(key, acknowledged)
        SAFE_SECONDS.labels(self.protocol).observe(time.perf_counter() - received)
        self._count(batch)
        return partial_success(batch)


def partial_success(batch: AccessLogBatch) -> otlp_pb2.ExportLogsServiceResponse:
    """OTLP's answer: records not counted as usage are ``rejected_log_records``, with the reasons."""
    response = otlp_pb2.ExportLogsServiceResponse()
    reasons: Tally[str] = Tally(r.code for r in batch.mapped.rejected)
    reasons.update(batch.dropped)
    rejected = sum(reasons.values())
    if rejected:
        response.partial_success.rejected_log_records = rejected
        message = "not counted: " + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        if set(reasons) - set(batch.dropped):
            message += " (dead-lettered records are on the dead-letter topic"
            message += "; NO_API: load the API with `apim-analytics apis load`)" if "NO_API" in reasons else ")"
        response.partial_success.error_message = message
    return response


def _refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode,
            details: str) -> otlp_pb2.ExportLogsServiceResponse:
    context.set_code(code)
    context.set_details(details)
    return otlp_pb2.ExportLogsServiceResponse()


def handlers(als: AlsHandler, otlp: OtlpLogsHandler) -> Sequence[grpc.GenericRpcHandler]:
    """The two services, with raw-bytes request deserialization."""
    return (
        grpc.method_handlers_generic_handler(ALS_SERVICE, {
            "StreamAccessLogs": grpc.stream_unary_rpc_method_handler(
                als.__call__, request_deserializer=None,
                response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString),
        }),
        grpc.method_handlers_generic_handler(OTLP_LOGS_SERVICE, {
            "Export": grpc.unary_unary_rpc_method_handler(
                otlp.__call__, request_deserializer=None,
                response_serializer=otlp_pb2.ExportLogsServiceResponse.SerializeToString),
        }),
    )
