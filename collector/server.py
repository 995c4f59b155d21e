"""The collector's gRPC server (grpc.aio): Mixer's metric handler and adapter lifecycle.

Serves ``/metric.HandleMetricService/HandleMetric`` and
``/istio.mixer.adapter.model.v1beta1.InfrastructureBackend/{Validate,
CreateSession,CloseSession}``, plus gRPC health checking and server
reflection, in plain text or TLS (mutual TLS with a client CA).

A HandleMetric call, in order:

1. reject what is not a well-formed call with INVALID_ARGUMENT and the reason
   (undecodable protobuf, invalid UTF-8, too large, too many instances, bad
   ``adapter_config``);
2. recognise a Mixer retry of an acknowledged call (same bytes) and answer OK;
3. map the instances to events; an instance that cannot be mapped becomes a
   dead letter, with its reason, instead of an event;
4. make the events and dead letters safe (Kafka acknowledged, or the local
   spool fsync'd) and only then answer OK; when neither can take them, answer
   UNAVAILABLE so Mixer retries.

grpc.aio is used because it gave 10-25% more throughput than the sync server
at the same CPU and a better tail (docs/kafka-and-beam.md section 4).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import socket
import time
import uuid
from pathlib import Path

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Histogram, start_http_server

from collector import adapter_config
from collector.access_log import AccessLogMapper
from collector.access_log_service import ALS_SERVICE, OTLP_LOGS_SERVICE, AlsHandler, OtlpLogsHandler
from collector.access_log_service import handlers as access_log_handlers
from collector.credentials import CredentialResolver, SubscriptionCatalog
from collector.decode import MalformedCall, decode_call, instance_message
from collector.dedup import RecentCalls
from collector.delivery import SafeDelivery
from collector.mapping import InstanceMapper, Limits, MappedCall, Privacy, load_mappings
from collector.publisher import KafkaPublisher, ProducerSettings, Record, make_publisher
from collector.records import build_records
from collector.settings import CollectorSettings
from collector.spool import Spool, SpoolFull
from core.api_catalog import ApiCatalog
from core.errors import ApimError
from core.settings import parse_host_port
from core.topics import ensure_topic
from schemas.apim.usage.v1 import usage_event_pb2 as usage_pb2
from schemas.mixer.adapter.model.v1beta1 import (
    infrastructure_backend_pb2 as ib_pb2,
)
from schemas.mixer.adapter.model.v1beta1 import (
    infrastructure_backend_pb2_grpc as ib_grpc,
)
from schemas.mixer.adapter.model.v1beta1 import (
    report_pb2,
)
from schemas.mixer.template.metric import template_handler_service_pb2 as metric_pb2

log = logging.getLogger(__name__)

CALLS = Counter("apim_collector_calls_total", "HandleMetric calls answered, by gRPC status", ["code"])
INSTANCES = Counter("apim_collector_instances_total", "metric instances received")
EVENTS = Counter("apim_collector_events_total", "usage events made safe (Kafka or spool)")
REJECTED = Counter("apim_collector_instances_rejected_total", "instances dead-lettered, by reason", ["reason"])
RETRIES = Counter("apim_collector_retries_recognised_total",
                  "calls answered from the dedup window: Mixer retries of acknowledged calls")
RECORDS = Counter("apim_collector_records_total", "Kafka records written (event batches and dead letters)")
BATCH_EVENTS = Histogram("apim_collector_record_events", "events per Kafka record",
                         buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000))
CALL_SECONDS = Histogram("apim_collector_call_seconds", "HandleMetric latency, receipt to answer",
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

HANDLE_METRIC_SERVICE = metric_pb2.DESCRIPTOR.services_by_name["HandleMetricService"].full_name
INFRA_SERVICE = ib_pb2.DESCRIPTOR.services_by_name["InfrastructureBackend"].full_name


class MetricHandler:
    """``HandleMetric``, registered with raw-bytes deserialization so that a
    malformed request gets INVALID_ARGUMENT with the reason (a failing
    deserializer would only give a bare INTERNAL) and the call id is a digest of
    the exact bytes Mixer sent."""

    def __init__(self, settings: CollectorSettings, mapper: InstanceMapper, delivery: SafeDelivery,
                 recent: RecentCalls, backend: InfrastructureBackend, partitions: int) -> None:
        self.settings = settings
        self.mapper = mapper
        self.delivery = delivery
        self.recent = recent
        self.backend = backend
        self.partitions = partitions
        self.producer_id = socket.gethostname()
        self.max_bytes = settings.max_message_mb << 20
        self.credential_dims = {m.credential for m in mapper.mappings.values() if m.credential}

    async def __call__(self, raw: bytes, context: grpc.aio.ServicerContext) -> report_pb2.ReportResult:
        started = time.perf_counter()
        try:
            return await self._handle(raw, context)
        finally:
            CALL_SECONDS.observe(time.perf_counter() - started)

    @staticmethod
    def _refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> report_pb2.ReportResult:
        """Answer the call with ``code`` (gRPC drops the response message of a non-OK call).

        Not ``context.abort()``: its AbortError, kept by the RPC state, holds this call's frames (the
        request bytes, the mapped events, the records) in a reference cycle that only a full garbage
        collection frees. While the spool is full every call is refused, and the collector's RSS climbed
        ~3.5 MB/s, 110 MB in 30 s, before a full collection (bench/memory.py, collector-spool).
        """
        CALLS.labels(code.name).inc()
        context.set_code(code)
        context.set_details(details)
        return report_pb2.ReportResult()

    async def _handle(self, raw: bytes, context: grpc.aio.ServicerContext) -> report_pb2.ReportResult:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if len(raw) > self.max_bytes:
            return self._refuse(context, invalid, f"request is {len(raw)} bytes; the limit is {self.max_bytes}")
        try:
            decoded = decode_call(raw)
        except MalformedCall as exc:
            return self._refuse(context, invalid, str(exc))
        dedup_id, config_bytes, instances = decoded
        INSTANCES.inc(len(instances))
        if len(instances) > self.settings.max_instances_per_call:
            return self._refuse(context, invalid, f"{len(instances)} instances in one call; the limit is "
                                                  f"{self.settings.max_instances_per_call}")
        gateway_type = ""
        if config_bytes is not None:
            try:
                gateway_type = self.backend.params_for(any_pb2.Any.FromString(config_bytes)).gateway_type
            except (ValueError, DecodeError) as exc:
                return self._refuse(context, invalid, f"adapter_config: {exc}")
        call_id = hashlib.blake2b(raw, digest_size=16).hexdigest()
        key = call_id.encode()
        if not await self.recent.claim(key):
            RETRIES.inc()
            CALLS.labels("OK").inc()
            return report_pb2.ReportResult()
        acknowledged = False
        try:
            mapped = self.mapper.map_call(decoded, call_id)
            if gateway_type:
                for event in mapped.events:
                    event["gateway_type"] = gateway_type
            records = self._records(raw, dedup_id, mapped, call_id)
            try:
                await self.delivery.deliver(records)
            except (SpoolFull, OSError) as exc:
                log.error("Kafka unreachable and spool full; refusing the call",
                          extra={"dedup_id": dedup_id[:64], "error": str(exc)[:200]})
                return self._refuse(context, grpc.StatusCode.UNAVAILABLE, f"cannot make events safe now: {exc}")
            acknowledged = True
        finally:
            self.recent.finish(key, acknowledged)
        EVENTS.inc(len(mapped.events))
        RECORDS.inc(len(records))
        for r in mapped.rejected:
            REJECTED.labels(r.code).inc()
        if mapped.rejected:
            log.warning("instances dead-lettered", extra={"dedup_id": dedup_id[:64],
                                                          "rejected": len(mapped.rejected),
                                                          "first_reason": mapped.rejected[0].reason[:200]})
        CALLS.labels("OK").inc()
        return report_pb2.ReportResult()

    def _records(self, raw: bytes, dedup_id: str, mapped: MappedCall, call_id: str) -> list[Record]:
        return build_records(mapped, settings=self.settings, partitions=self.partitions, call_id=call_id,
                             producer_id=self.producer_id, dedup_id=dedup_id, source=usage_pb2.MIXER_METRIC_ADAPTER,
                             instance_of=lambda r: instance_message(raw, r.instance, r.index),
                             credential_dims=self.credential_dims, on_batch=BATCH_EVENTS.observe)


class InfrastructureBackend(ib_grpc.InfrastructureBackendServicer):
    """Adapter lifecycle: validate the handler params and the instances' inferred
    types against the mapping; remember sessions for session-based set-ups."""

    def __init__(self, mappings: dict) -> None:
        self.mappings = mappings
        self.sessions: dict[str, bytes] = {}

    def params_for(self, config):
        """The params of a HandleMetric call: inline, or those of the session it names."""
        session = self.sessions.get(config.value.decode("utf-8", "replace")) if not config.type_url else None
        if session is not None:
            from google.protobuf import any_pb2

            config = any_pb2.Any.FromString(session)
        return adapter_config.decode_params(config)

    @staticmethod
    def _status(target, problems: list[str]) -> None:
        target.code = grpc.StatusCode.INVALID_ARGUMENT.value[0] if problems else 0
        target.message = "; ".join(problems)[:2000]

    async def Validate(self, request: ib_pb2.ValidateRequest,  # noqa: N802 - the gRPC method's name
                       context: grpc.aio.ServicerContext) -> ib_pb2.ValidateResponse:
        resp = ib_pb2.ValidateResponse()
        self._status(resp.status, adapter_config.validate(request.adapter_config, dict(request.inferred_types),
                                                          self.mappings))
        return resp

    async def CreateSession(self, request: ib_pb2.CreateSessionRequest,  # noqa: N802 - the gRPC method's name
                            context: grpc.aio.ServicerContext) -> ib_pb2.CreateSessionResponse:
        resp = ib_pb2.CreateSessionResponse()
        problems = adapter_config.validate(request.adapter_config, dict(request.inferred_types), self.mappings)
        self._status(resp.status, problems)
        if not problems:
            resp.session_id = uuid.uuid4().hex
            self.sessions[resp.session_id] = request.adapter_config.SerializeToString()
        return resp

    async def CloseSession(self, request: ib_pb2.CloseSessionRequest,  # noqa: N802 - the gRPC method's name
                           context: grpc.aio.ServicerContext) -> ib_pb2.CloseSessionResponse:
        resp = ib_pb2.CloseSessionResponse()
        if self.sessions.pop(request.session_id, None) is None:
            self._status(resp.status, [f"unknown session {request.session_id[:64]!r}"])
        return resp


def _server_credentials(s: CollectorSettings) -> grpc.ServerCredentials | None:
    if not s.tls_cert:
        return None
    key, cert = Path(s.tls_key).read_bytes(), Path(s.tls_cert).read_bytes()
    ca = Path(s.tls_client_ca).read_bytes() if s.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def build_resolver(s: CollectorSettings) -> CredentialResolver:
    """Credential resolution from the settings: catalog file and/or store table, optional JWT verification."""
    rows: list[dict] = []
    catalog = SubscriptionCatalog.load(s.subscriptions) if s.subscriptions else SubscriptionCatalog()
    if s.subscriptions_store:
        from store import subscriptions as store_subs
        from store.engine import make_engine

        engine = make_engine(s.subscriptions_store)
        rows = catalog.rows() + store_subs.load(engine)
        engine.dispose()
        catalog = SubscriptionCatalog.from_rows(rows, s.subscriptions_store)
    verifier = None
    if s.jwt_jwks or s.jwt_certificate:
        from collector.jwt_verify import JwtVerifier, VerifierSettings

        verifier = JwtVerifier.from_files(jwks=s.jwt_jwks or None, certificate=s.jwt_certificate or None,
                                          settings=VerifierSettings(issuer=s.jwt_issuer or None))
    return CredentialResolver(catalog, verifier=verifier, cache_ttl_s=s.credential_cache_ttl_s)


def _apis_store(s: CollectorSettings) -> str:
    return s.apis_store or s.subscriptions_store


def load_api_catalog(s: CollectorSettings) -> ApiCatalog:
    """The API catalog access-log entries are matched against: the store's, or empty when there is no store."""
    url = _apis_store(s)
    if not url:
        log.warning("no API catalog store (--apis-store); every access-log entry will match no API")
        return ApiCatalog(())
    from store import api_catalog as store_apis
    from store.engine import make_engine

    engine = make_engine(url)
    try:
        return ApiCatalog(store_apis.load(engine))
    finally:
        engine.dispose()


class Collector:
    """Owns the server, the delivery path and the health state; ``start``/``stop`` for tests and the demo."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.server: grpc.aio.Server | None = None
        self.publisher: KafkaPublisher | None = None
        self.delivery: SafeDelivery | None = None
        self.resolver: CredentialResolver | None = None
        self.health = health.aio.HealthServicer()
        self.port: int | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._apis_refresher: asyncio.Task[None] | None = None
        self.access_logs: AccessLogMapper | None = None
        self.als: AlsHandler | None = None
        self._jwt_reloads: set[asyncio.Task[object]] = set()  # the timer and SIGHUP reloads in flight

    async def start(self) -> int:
        s = self.settings
        loop = asyncio.get_running_loop()
        try:
            partitions = await loop.run_in_executor(None, ensure_topic, s.kafka, s.topic, s.topic_partitions, 1,
                                                    10.0)
            await loop.run_in_executor(None, ensure_topic, s.kafka, s.dead_letter_topic, 1, 1, 10.0)
        except ApimError as exc:  # ensure_topic's translated Kafka errors: serve anyway, calls go to the spool
            partitions = s.topic_partitions
            log.warning("Kafka unreachable at start; serving with the spool", extra={
                "kafka": s.kafka, "partitions_assumed": partitions, "error": exc.one_line()[:300]})
        mappings = load_mappings(s.mapping or None)
        self.resolver = build_resolver(s)
        self.publisher = make_publisher(s.kafka_client, ProducerSettings(
            bootstrap=s.kafka, linger_ms=s.kafka_linger_ms,
            compression=None if s.kafka_compression == "none" else s.kafka_compression,
            request_timeout_ms=max(1000, int(s.ack_timeout_s * 1000)),
            max_request_size=s.kafka_max_record_bytes + (64 << 10),
        ))
        try:
            await loop.run_in_executor(None, self.publisher.connect)
        except ApimError as exc:  # translated by the publisher; the drainer connects when Kafka answers
            log.warning("Kafka producer not connected yet", extra={"error": exc.one_line()[:300]})
        spool = Spool.open(Path(s.spool_dir), max_bytes=int(s.spool_max_mb * (1 << 20)))
        self.delivery = SafeDelivery(self.publisher, spool, ack_timeout_s=s.ack_timeout_s,
                                     drain_timeout_s=s.spool_drain_timeout_s)
        self.delivery.start()
        mapper = InstanceMapper(
            self.resolver, mappings,
            limits=Limits(max_string_bytes=s.max_string_bytes, max_past_ms=s.max_event_age_s * 1000,
                          max_future_ms=s.max_event_future_s * 1000),
            privacy=Privacy(user_ip=s.user_ip, user_name=s.user_name),
        )
        backend = InfrastructureBackend(mappings)
        recent = RecentCalls(s.dedup_window_s, s.dedup_max_calls)
        handler = MetricHandler(s, mapper, self.delivery, recent, backend, partitions)
        apis = await loop.run_in_executor(None, load_api_catalog, s)
        self.access_logs = AccessLogMapper(mapper, apis, unmatched=s.unmatched_requests)
        self.als = AlsHandler(s, self.access_logs, self.delivery, partitions, handler.producer_id)
        otlp = OtlpLogsHandler(s, self.access_logs, self.delivery, partitions, handler.producer_id, recent=recent)
        # gRPC's own limit sits above ours, so a moderately oversized request gets our clear message.
        grpc_limit = (s.max_message_mb << 20) * 2 + (1 << 20)
        options = [("grpc.max_receive_message_length", grpc_limit), ("grpc.max_send_message_length", 4 << 20)]
        if s.max_connection_age_s > 0:
            options += [("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
                        ("grpc.max_connection_age_grace_ms", int(s.shutdown_grace_s * 1000))]
        self.server = grpc.aio.server(options=options, maximum_concurrent_rpcs=s.max_concurrent_calls)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(HANDLE_METRIC_SERVICE, {
            "HandleMetric": grpc.unary_unary_rpc_method_handler(
                handler.__call__, request_deserializer=None,
                response_serializer=report_pb2.ReportResult.SerializeToString),
        }),))
        self.server.add_generic_rpc_handlers(access_log_handlers(self.als, otlp))
        ib_grpc.add_InfrastructureBackendServicer_to_server(backend, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (HANDLE_METRIC_SERVICE, INFRA_SERVICE, ALS_SERVICE, OTLP_LOGS_SERVICE, health.SERVICE_NAME,
             reflection.SERVICE_NAME), self.server)
        host, port = parse_host_port("--listen", s.listen)
        creds = _server_credentials(s)
        address = f"{host}:{port}"
        self.port = self.server.add_secure_port(address, creds) if creds else self.server.add_insecure_port(address)
        await self.server.start()
        for name in ("", HANDLE_METRIC_SERVICE, INFRA_SERVICE, ALS_SERVICE, OTLP_LOGS_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.subscriptions_store and s.subscriptions_refresh_s > 0:
            self._refresher = loop.create_task(self._refresh_subscriptions())
        if _apis_store(s) and s.apis_refresh_s > 0:
            self._apis_refresher = loop.create_task(self._refresh_apis())
        if self.resolver.verifier is not None and s.jwt_reload_s > 0:
            self._keep_jwt_reload(loop.create_task(self.resolver.reload_keys_every(s.jwt_reload_s)))
        log.info("collector serving", extra={"listen": f"{host}:{self.port}", "tls": bool(creds),
                                             "mutual_tls": bool(s.tls_client_ca), "topic": s.topic,
                                             "partitions": partitions, "mappings": sorted(mappings),
                                             "subscriptions": len(self.resolver.catalog),
                                             "apis": len(apis.apis), "unmatched_requests": s.unmatched_requests,
                                             "spooled_records": spool.depth_entries})
        return self.port

    async def _refresh_subscriptions(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.subscriptions_refresh_s)
            try:
                fresh = await loop.run_in_executor(None, build_resolver, self.settings)
                assert self.resolver is not None
                self.resolver.replace_catalog(fresh.catalog)
            except Exception as exc:  # noqa: BLE001 - keep the old catalog, say why
                log.warning("subscription catalog refresh failed; keeping the previous one",
                            extra={"error": repr(exc)[:300]})

    async def _refresh_apis(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.apis_refresh_s)
            try:
                fresh = await loop.run_in_executor(None, load_api_catalog, self.settings)
                assert self.access_logs is not None
                self.access_logs.replace_catalog(fresh)
            except Exception as exc:  # noqa: BLE001 - keep the old catalog, say why
                log.warning("API catalog refresh failed; keeping the previous one", extra={"error": repr(exc)[:300]})

    def reload_jwt_keys(self) -> None:
        """Re-read the JWT key files now (SIGHUP); a broken file keeps its old keys. Call on the loop."""
        if self.resolver is not None and self.resolver.verifier is not None:
            self._keep_jwt_reload(asyncio.get_running_loop().create_task(self.resolver.reload_keys()))

    def _keep_jwt_reload(self, task: asyncio.Task[object]) -> None:
        self._jwt_reloads.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._jwt_reloads.discard)

    async def stop(self) -> None:
        """Stop taking calls, let in-flight ones finish, give the spool a moment to drain, flush."""
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        if self.als is not None:
            self.als.draining.set()  # ALS streams close once idle: Envoy reconnects to another replica
        await self.server.stop(self.settings.shutdown_grace_s)
        for refresher in (self._refresher, self._apis_refresher):
            if refresher is not None:
                refresher.cancel()
        for task in list(self._jwt_reloads):
            task.cancel()
        if self.delivery is not None:
            # What is still spooled stays on disk and drains at the next start.
            await self.delivery.close(drain_timeout_s=self.settings.shutdown_grace_s)
        if self.publisher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.publisher.close)
        log.info("collector stopped")


async def serve(settings: CollectorSettings) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully; SIGHUP re-reads the JWT key files."""
    if settings.metrics_listen:
        host, port = parse_host_port("--metrics-listen", settings.metrics_listen)
        start_http_server(port, addr=host)
    collector = Collector(settings)
    await collector.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, collector.reload_jwt_keys)
    await stop.wait()
    await collector.stop()
