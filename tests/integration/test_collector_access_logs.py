"""The collector's Istio 1.8+ endpoints against a real Kafka: Envoy ALS v3 streams and OTLP log exports.

Each test loads an API catalog into a SQLite store, starts a collector on it,
speaks the real gRPC paths with exact bytes, and reads back what reached the
usage and dead-letter topics.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from collector.credentials import credential_hash
from core.api_catalog import ApiDefinition, Resource
from schemas.apim.usage.v1 import dead_letter_pb2
from schemas.apim.usage.v1 import usage_event_pb2 as pb
from schemas.envoy.data.accesslog.v3 import accesslog_pb2 as log_pb
from schemas.envoy.service.accesslog.v3 import als_pb2
from schemas.mixer.template.metric import template_handler_service_pb2 as m
from store import api_catalog
from store.engine import make_engine
from tests.integration.test_collector_grpc import counter, read_topic, running_collector, usage_events
from tests.support import protowire as w
from tests.unit.test_mapping import CLAIMS, make_jwt

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

ALS = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
OTLP = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
HOST = "pizza.shop.svc.cluster.local"
TOKEN = make_jwt(CLAIMS)
PIZZA = ApiDefinition("PizzaAPI", "1.0.0", "/pizzashack/1.0.0", (HOST,),
                      (Resource("GET", "/menu"), Resource("GET", "/order/{orderId}"), Resource("POST", "/order")))
DB = ApiDefinition("OtherAPI", "2", "/other", (), (), tcp_clusters=("outbound|5432||pg.db.svc.cluster.local",))


@pytest.fixture
def apis_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'apis.db'}"
    engine = make_engine(url)
    try:
        api_catalog.save(engine, [PIZZA, DB])
    finally:
        engine.dispose()
    return url


@pytest.fixture
def collector(tmp_path: Path, apis_store: str) -> Iterator[tuple[Any, str, str]]:
    with running_collector(tmp_path / "spool", apis_store=apis_store) as running:
        yield running


def identifier() -> als_pb2.StreamAccessLogsMessage.Identifier:
    ident = als_pb2.StreamAccessLogsMessage.Identifier(log_name="apim-analytics")
    ident.node.id = "sidecar~10.1.2.3~pizza-7d9f.shop~shop.svc.cluster.local"
    ident.node.metadata.update({"WORKLOAD_NAME": "pizza", "NAMESPACE": "shop"})
    return ident


def http_entry(path: str, *, at_ms: int, method: int = 1, code: int = 200, auth: str = "Bearer " + TOKEN,
               host: str = HOST, flags: dict[str, bool] | None = None, duration_ms: int = 25,
               request_bytes: int = 120, response_bytes: int = 2048) -> log_pb.HTTPAccessLogEntry:
    e = log_pb.HTTPAccessLogEntry(protocol_version=log_pb.HTTPAccessLogEntry.HTTP11)
    c = e.common_properties
    c.start_time.FromMilliseconds(at_ms)
    c.time_to_last_downstream_tx_byte.FromMilliseconds(duration_ms)
    c.time_to_first_upstream_tx_byte.FromMilliseconds(2)
    c.time_to_last_upstream_rx_byte.FromMilliseconds(duration_ms - 3)
    c.downstream_remote_address.socket_address.address = "10.1.9.9"
    c.upstream_cluster = "inbound|8080||"
    c.tls_properties.peer_certificate_properties.subject_alt_name.add(uri="spiffe://cluster.local/ns/web/sa/front")
    for name, value in (flags or {}).items():
        setattr(c.response_flags, name, value)
    r = e.request
    r.request_method, r.scheme, r.authority, r.path = method, "http", host, path
    r.user_agent, r.request_id, r.request_body_bytes = "curl/8", "req-1", request_bytes
    if auth:
        r.request_headers["authorization"] = auth
    e.response.response_code.value = code
    e.response.response_body_bytes = response_bytes
    return e


def message(entries: list[log_pb.HTTPAccessLogEntry], *, first: bool = False, raw_entries: tuple[bytes, ...] = (),
            tcp: list[log_pb.TCPAccessLogEntry] | None = None) -> bytes:
    """One StreamAccessLogsMessage; ``raw_entries`` are appended to the HTTP entries as they are."""
    inner = b"".join(w.bytes_field(1, e.SerializeToString()) for e in entries) + \
        b"".join(w.bytes_field(1, raw) for raw in raw_entries)
    out = w.bytes_field(1, identifier().SerializeToString()) if first else b""
    if entries or raw_entries:
        out += w.bytes_field(2, inner)
    if tcp:
        out += als_pb2.StreamAccessLogsMessage(
            tcp_logs=als_pb2.StreamAccessLogsMessage.TCPAccessLogEntries(log_entry=tcp)).SerializeToString()
    return out


def stream(target: str, messages: list[bytes]) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_unary(ALS, request_serializer=None, response_deserializer=None)
        try:
            call(iter(messages), timeout=20)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def letters(topic: str) -> list[dead_letter_pb2.DeadLetter]:
    return sorted((dead_letter_pb2.DeadLetter.FromString(r.value) for r in read_topic(topic)),
                  key=lambda d: (d.dedup_id, d.instance_index))


def test_an_als_stream_becomes_exact_usage_events_and_dead_letters(collector) -> None:
    running, usage, dead = collector
    at = int(time.time() * 1000) - 5000
    tcp = log_pb.TCPAccessLogEntry()
    tcp.common_properties.start_time.FromMilliseconds(at)
    tcp.common_properties.upstream_cluster = "outbound|6379||redis.cache.svc.cluster.local"  # no API: dropped
    tcp_db = log_pb.TCPAccessLogEntry()
    tcp_db.common_properties.start_time.FromMilliseconds(at)
    tcp_db.common_properties.upstream_cluster = "outbound|5432||pg.db.svc.cluster.local"
    tcp_db.connection_properties.received_bytes, tcp_db.connection_properties.sent_bytes = 700, 9000
    bad_utf8 = w.message_field(3, w.bytes_field(3, b"\xff\xfe"))  # request.authority is not UTF-8
    dropped_before = counter("apim_collector_access_log_entries_dropped_total",
                             {"protocol": "als", "reason": "TCP_UNMAPPED"})
    first = message([http_entry("/pizzashack/1.0.0/order/42?x=1", at_ms=at),
                     http_entry("/nowhere/1", at_ms=at + 1),
                     http_entry("/pizzashack/1.0.0/menu", at_ms=at + 2, code=429, flags={"rate_limited": True})],
                    first=True, raw_entries=(bad_utf8,), tcp=[tcp, tcp_db])
    second = message([http_entry("/pizzashack/1.0.0/order", at_ms=at + 3, method=3, code=503,
                                 flags={"upstream_connection_failure": True}),
                      http_entry("/pizzashack/1.0.0/menu", at_ms=at + 4, auth="")])
    assert stream(running.target, [first, second]) == (grpc.StatusCode.OK, "")

    events = usage_events(read_topic(usage))
    assert len(events) == 5
    by_path = {(e.api_resource_path, e.response_code): e for e in events}
    order = by_path[("/order/42", 200)]
    assert (order.source, order.api_name, order.api_version, order.api_context, order.api_resource_template,
            order.api_method, order.api_hostname) == \
        (pb.ENVOY_ACCESS_LOG, "PizzaAPI", "1.0.0", "/pizzashack/1.0.0", "/order/{orderId}", "GET", HOST)
    assert (order.application_id, order.subscription_tier, order.key_type, order.credential_hash) == \
        ("app-1", "Gold", pb.SANDBOX, credential_hash(TOKEN))
    assert (order.request_size_bytes, order.response_size_bytes, order.response_latency_ms,
            order.backend_latency_ms) == (120, 2048, 25.0, 20.0)
    assert (order.request_timestamp_ms, order.response_timestamp_ms) == (at, at + 25)
    assert (order.destination_workload, order.destination_namespace, order.source_principal,
            order.source_namespace, order.reporter, order.user_ip, order.correlation_id) == \
        ("pizza", "shop", "spiffe://cluster.local/ns/web/sa/front", "web", "destination", "10.1.9.9", "req-1")
    throttled = by_path[("/menu", 429)]
    assert (throttled.throttled_out, throttled.throttled_out_reason, throttled.fault) == (True, "RATE_LIMITED", False)
    fault = by_path[("/order", 503)]
    assert (fault.fault, fault.error_type, fault.api_method, fault.api_resource_template) == \
        (True, "TARGET_CONNECTIVITY", "POST", "/order")
    anonymous = by_path[("/menu", 200)]
    assert anonymous.credential_kind == pb.NONE
    db = by_path[("", 0)]
    assert (db.api_name, db.api_version, db.request_size_bytes, db.response_size_bytes) == ("OtherAPI", "2", 700, 9000)
    # the event ids: one call id per message, the entry's position in it
    ids = sorted(e.event_id for e in events)
    assert len({i.rsplit("/", 1)[0] for i in ids}) == 2
    assert counter("apim_collector_access_log_entries_dropped_total",
                   {"protocol": "als", "reason": "TCP_UNMAPPED"}) - dropped_before == 1

    dead_letters = letters(dead)
    assert [(d.reason_code, d.instance_index) for d in dead_letters] == [("NO_API", 1), ("MALFORMED_ENTRY", 3)]
    no_api = m.InstanceMsg.FromString(dead_letters[0].instance)
    assert no_api.name == "envoy-access-log"
    assert no_api.dimensions["request.path"].string_value == "/nowhere/1"
    assert no_api.dimensions["request.auth_header"].string_value.startswith("sha256:")
    assert "GET pizza.shop.svc.cluster.local/nowhere/1" in dead_letters[0].reason
    for r in read_topic(dead) + read_topic(usage):
        assert TOKEN.split(".")[1].encode() not in r.value


@pytest.mark.parametrize(("messages", "reason"), [
    ([b""], "the stream's first message has no identifier"),
    ([b"\x0a\x03abc"], "identifier: "),
    ([b"\x12\x05\x0a\x09zz"], "runs past the end"),
    ([b"\x0a\x00"], "node.id is empty"),
])
def test_a_stream_that_does_not_start_with_an_identifier_is_invalid_argument(collector, messages: list[bytes],
                                                                             reason: str) -> None:
    running, usage, _ = collector
    code, details = stream(running.target, messages)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and reason in details
    assert read_topic(usage) == []
    at = int(time.time() * 1000) - 1000
    ok = message([http_entry("/pizzashack/1.0.0/menu", at_ms=at)], first=True)
    assert stream(running.target, [ok]) == (grpc.StatusCode.OK, "")  # the server is still serving


def otlp_record(attributes: dict[str, Any], at_ms: int) -> logs_pb2.LogRecord:
    record = logs_pb2.LogRecord(time_unix_nano=at_ms * 1_000_000)
    for key, value in attributes.items():
        any_value = common_pb2.AnyValue(int_value=value) if isinstance(value, int) else \
            common_pb2.AnyValue(string_value=value)
        record.attributes.add(key=key, value=any_value)
    return record


def test_an_otlp_export_is_answered_when_safe_with_partial_success_and_retries_publish_nothing(collector) -> None:
    running, usage, dead = collector
    at = int(time.time() * 1000) - 3000
    labels = {"request.host": HOST, "request.method": "GET", "request.scheme": "http", "request.protocol": "HTTP/2",
              "request.auth_header": "Bearer " + TOKEN, "response.code": "200", "response.flags": "-",
              "request.size": "64", "response.size": "512", "response.duration": "12",
              "source.principal": "spiffe://cluster.local/ns/web/sa/front", "upstream.cluster": "inbound|8080||",
              "destination.workload": "pizza", "destination.namespace": "shop"}
    request = otlp.ExportLogsServiceRequest()
    logs = request.resource_logs.add().scope_logs.add().log_records
    logs.append(otlp_record({**labels, "request.path": "/pizzashack/1.0.0/order/7"}, at))
    logs.append(otlp_record({**labels, "request.path": "/unknown"}, at + 1))
    logs.append(otlp_record({**labels, "request.path": "/pizzashack/1.0.0/menu", "response.code": 200,
                             "response.flags": "UF"}, at + 2))
    raw = request.SerializeToString()
    with grpc.insecure_channel(running.target) as channel:
        export = channel.unary_unary(OTLP, request_serializer=None,
                                     response_deserializer=otlp.ExportLogsServiceResponse.FromString)
        answer = export(raw, timeout=20)
        assert answer.partial_success.rejected_log_records == 1
        assert "1 NO_API" in answer.partial_success.error_message
        assert export(raw, timeout=20) == otlp.ExportLogsServiceResponse()  # a retry: recognised, nothing new
        code = None
        try:
            export(b"\x0a\x02\xff", timeout=20)
        except grpc.RpcError as exc:
            code = exc.code()
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    events = usage_events(read_topic(usage))
    assert [(e.api_name, e.api_resource_template, e.response_code, e.request_size_bytes, e.response_latency_ms,
             e.application_id, e.subscription_tier, e.source_namespace, e.reporter, e.fault) for e in events] == [
        ("PizzaAPI", "/order/{orderId}", 200, 64, 12.0, "app-1", "Gold", "web", "destination", False),
        ("PizzaAPI", "/menu", 200, 64, 12.0, "app-1", "Gold", "web", "destination", True)]
    assert [e.request_timestamp_ms for e in events] == [at, at + 2]
    assert [e.response_timestamp_ms for e in events] == [at + 12, at + 14]
    assert {e.source for e in events} == {pb.ENVOY_ACCESS_LOG}
    assert [(d.reason_code, d.instance_index) for d in letters(dead)] == [("NO_API", 1)]


def test_jwt_claims_from_jwt_authn_metadata_resolve_the_caller(collector) -> None:
    running, usage, _ = collector
    entry = http_entry("/pizzashack/1.0.0/menu", at_ms=int(time.time() * 1000) - 1000, auth="")
    payload = struct_pb2.Struct()
    payload.update(CLAIMS)
    entry.common_properties.metadata.filter_metadata["envoy.filters.http.jwt_authn"].fields["payload"] \
        .struct_value.CopyFrom(payload)
    assert stream(running.target, [message([entry], first=True)]) == (grpc.StatusCode.OK, "")
    (event,) = usage_events(read_topic(usage))
    assert (event.application_id, event.subscription_tier, event.credential_kind, event.user_name) == \
        ("app-1", "Gold", pb.JWT, "alice@acme.com")


def test_sigterm_closes_an_idle_stream_with_ok_after_its_entries_are_safe(tmp_path: Path, apis_store: str) -> None:
    """A graceful stop does not cut a stream mid-message: what was read is made safe, the idle stream then ends
    OK (Envoy reconnects to another replica), and the stop does not wait for the client to hang up."""
    import queue
    import threading

    with running_collector(tmp_path / "spool", apis_store=apis_store, drain_idle_s=0.3,
                           shutdown_grace_s=10.0) as (running, usage, _):
        feed: queue.Queue[bytes | None] = queue.Queue()

        def messages() -> Iterator[bytes]:
            while (raw := feed.get()) is not None:
                yield raw

        at = int(time.time() * 1000) - 1000
        with grpc.insecure_channel(running.target) as channel:
            call = channel.stream_unary(ALS, request_serializer=None, response_deserializer=None)
            future = call.future(messages(), timeout=30)
            feed.put(message([http_entry("/pizzashack/1.0.0/menu", at_ms=at + i) for i in range(3)], first=True))
            feed.put(message([http_entry("/pizzashack/1.0.0/order", at_ms=at + 3, method=3)]))
            deadline = time.monotonic() + 10
            while counter("apim_collector_access_log_messages_total", {"protocol": "als"}) < 2 and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            began = time.monotonic()
            stopper = threading.Thread(target=running.stop)
            stopper.start()
            future.result(timeout=10)  # OK: the stream was closed by the server, the client never hung up
            stopper.join(15)
            assert not stopper.is_alive() and time.monotonic() - began < 8
            running.stop_error = None  # stopped: the fixture must not stop it again
            feed.put(None)
        assert future.code() == grpc.StatusCode.OK
        events = usage_events(read_topic(usage))
        assert sorted((e.api_resource_template, e.api_method) for e in events) == \
            [("/menu", "GET")] * 3 + [("/order", "POST")]
