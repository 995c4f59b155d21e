"""Byte-level proof that our hand-written Envoy ALS v3 .proto files speak Envoy's wire format.

schemas/envoy/ does not vendor data-plane-api: its files were written from the
facts in docs/envoy-als-wire.md. Envoy only sees field numbers, wire types and
the gRPC path, so that is what this module checks, independently of our stubs:
the expected bytes are built with tests/support/protowire.py, hand-built streams
must decode to the expected structure and re-encode to the same bytes, v2
senders and senders with fields we do not know must decode without error, and
every number docs/envoy-als-wire.md lists is checked against the descriptors.

If one of these fails, the .proto and docs/envoy-als-wire.md disagree: fix the
.proto (and run ``make codegen``), not the test.
"""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from schemas.envoy.config.core.v3 import address_pb2, base_pb2
from schemas.envoy.data.accesslog.v3 import accesslog_pb2
from schemas.envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from tests.support.protowire import (
    WT_VARINT,
    double_field,
    h_seconds_nanos,
    int_field,
    key,
    message_field,
    string_field,
    varint,
)

PATH = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"

T = FieldDescriptor
# (message, field, number, type, repeated) from docs/envoy-als-wire.md, sections 1-3
FIELDS = [
    (als_pb2.StreamAccessLogsMessage, "identifier", 1, T.TYPE_MESSAGE, False),
    (als_pb2.StreamAccessLogsMessage, "http_logs", 2, T.TYPE_MESSAGE, False),
    (als_pb2.StreamAccessLogsMessage, "tcp_logs", 3, T.TYPE_MESSAGE, False),
    (als_pb2.StreamAccessLogsMessage.Identifier, "node", 1, T.TYPE_MESSAGE, False),
    (als_pb2.StreamAccessLogsMessage.Identifier, "log_name", 2, T.TYPE_STRING, False),
    (als_pb2.StreamAccessLogsMessage.HTTPAccessLogEntries, "log_entry", 1, T.TYPE_MESSAGE, True),
    (als_pb2.StreamAccessLogsMessage.TCPAccessLogEntries, "log_entry", 1, T.TYPE_MESSAGE, True),
    (accesslog_pb2.HTTPAccessLogEntry, "common_properties", 1, T.TYPE_MESSAGE, False),
    (accesslog_pb2.HTTPAccessLogEntry, "protocol_version", 2, T.TYPE_ENUM, False),
    (accesslog_pb2.HTTPAccessLogEntry, "request", 3, T.TYPE_MESSAGE, False),
    (accesslog_pb2.HTTPAccessLogEntry, "response", 4, T.TYPE_MESSAGE, False),
    (accesslog_pb2.TCPAccessLogEntry, "common_properties", 1, T.TYPE_MESSAGE, False),
    (accesslog_pb2.TCPAccessLogEntry, "connection_properties", 2, T.TYPE_MESSAGE, False),
    (accesslog_pb2.ConnectionProperties, "received_bytes", 1, T.TYPE_UINT64, False),
    (accesslog_pb2.ConnectionProperties, "sent_bytes", 2, T.TYPE_UINT64, False),
    (base_pb2.Node, "id", 1, T.TYPE_STRING, False),
    (base_pb2.Node, "cluster", 2, T.TYPE_STRING, False),
    (base_pb2.Node, "metadata", 3, T.TYPE_MESSAGE, False),
    (base_pb2.Node, "locality", 4, T.TYPE_MESSAGE, False),
    (base_pb2.Node, "user_agent_name", 6, T.TYPE_STRING, False),
    (base_pb2.Node, "user_agent_version", 7, T.TYPE_STRING, False),
    (base_pb2.Node, "user_agent_build_version", 8, T.TYPE_MESSAGE, False),
    (base_pb2.Node, "client_features", 10, T.TYPE_STRING, True),
    (base_pb2.Locality, "region", 1, T.TYPE_STRING, False),
    (base_pb2.Locality, "zone", 2, T.TYPE_STRING, False),
    (base_pb2.Locality, "sub_zone", 3, T.TYPE_STRING, False),
    (base_pb2.Metadata, "filter_metadata", 1, T.TYPE_MESSAGE, True),
    (base_pb2.Metadata, "typed_filter_metadata", 2, T.TYPE_MESSAGE, True),
    (address_pb2.Address, "socket_address", 1, T.TYPE_MESSAGE, False),
    (address_pb2.Address, "pipe", 2, T.TYPE_MESSAGE, False),
    (address_pb2.Address, "envoy_internal_address", 3, T.TYPE_MESSAGE, False),
    (address_pb2.SocketAddress, "protocol", 1, T.TYPE_ENUM, False),
    (address_pb2.SocketAddress, "address", 2, T.TYPE_STRING, False),
    (address_pb2.SocketAddress, "port_value", 3, T.TYPE_UINT32, False),
    (address_pb2.SocketAddress, "named_port", 4, T.TYPE_STRING, False),
    (address_pb2.SocketAddress, "resolver_name", 5, T.TYPE_STRING, False),
    (address_pb2.SocketAddress, "ipv4_compat", 6, T.TYPE_BOOL, False),
    (address_pb2.SocketAddress, "network_namespace_filepath", 7, T.TYPE_STRING, False),
    (accesslog_pb2.HTTPResponseProperties, "response_code", 1, T.TYPE_MESSAGE, False),
    (accesslog_pb2.HTTPResponseProperties, "response_headers_bytes", 2, T.TYPE_UINT64, False),
    (accesslog_pb2.HTTPResponseProperties, "response_body_bytes", 3, T.TYPE_UINT64, False),
    (accesslog_pb2.HTTPResponseProperties, "response_headers", 4, T.TYPE_MESSAGE, True),
    (accesslog_pb2.HTTPResponseProperties, "response_trailers", 5, T.TYPE_MESSAGE, True),
    (accesslog_pb2.HTTPResponseProperties, "response_code_details", 6, T.TYPE_STRING, False),
    (accesslog_pb2.HTTPResponseProperties, "upstream_header_bytes_received", 7, T.TYPE_UINT64, False),
    (accesslog_pb2.HTTPResponseProperties, "downstream_header_bytes_sent", 8, T.TYPE_UINT64, False),
    (accesslog_pb2.TLSProperties, "tls_version", 1, T.TYPE_ENUM, False),
    (accesslog_pb2.TLSProperties, "tls_cipher_suite", 2, T.TYPE_MESSAGE, False),
    (accesslog_pb2.TLSProperties, "tls_sni_hostname", 3, T.TYPE_STRING, False),
    (accesslog_pb2.TLSProperties, "local_certificate_properties", 4, T.TYPE_MESSAGE, False),
    (accesslog_pb2.TLSProperties, "peer_certificate_properties", 5, T.TYPE_MESSAGE, False),
    (accesslog_pb2.TLSProperties.CertificateProperties, "subject_alt_name", 1, T.TYPE_MESSAGE, True),
    (accesslog_pb2.TLSProperties.CertificateProperties, "subject", 2, T.TYPE_STRING, False),
    (accesslog_pb2.TLSProperties.CertificateProperties.SubjectAltName, "uri", 1, T.TYPE_STRING, False),
    (accesslog_pb2.TLSProperties.CertificateProperties.SubjectAltName, "dns", 2, T.TYPE_STRING, False),
    (accesslog_pb2.TLSProperties, "tls_session_id", 6, T.TYPE_STRING, False),
    (accesslog_pb2.TLSProperties, "ja3_fingerprint", 7, T.TYPE_STRING, False),
]

COMMON = ["sample_rate", "downstream_remote_address", "downstream_local_address", "tls_properties", "start_time",
          "time_to_last_rx_byte", "time_to_first_upstream_tx_byte", "time_to_last_upstream_tx_byte",
          "time_to_first_upstream_rx_byte", "time_to_last_upstream_rx_byte", "time_to_first_downstream_tx_byte",
          "time_to_last_downstream_tx_byte", "upstream_remote_address", "upstream_local_address",
          "upstream_cluster", "response_flags", "metadata", "upstream_transport_failure_reason", "route_name",
          "downstream_direct_remote_address", "filter_state_objects", "custom_tags", "duration",
          "upstream_request_attempt_count", "connection_termination_details", "stream_id",
          "intermediate_log_entry", "downstream_transport_failure_reason", "downstream_wire_bytes_sent",
          "downstream_wire_bytes_received", "upstream_wire_bytes_sent", "upstream_wire_bytes_received",
          "access_log_type"]
REQUEST = ["request_method", "scheme", "authority", "port", "path", "user_agent", "referer", "forwarded_for",
           "request_id", "original_path", "request_headers_bytes", "request_body_bytes", "request_headers",
           "upstream_header_bytes_sent", "downstream_header_bytes_received"]
FLAGS = ["failed_local_healthcheck", "no_healthy_upstream", "upstream_request_timeout", "local_reset",
         "upstream_remote_reset", "upstream_connection_failure", "upstream_connection_termination",
         "upstream_overflow", "no_route_found", "delay_injected", "fault_injected", "rate_limited",
         "unauthorized_details", "rate_limit_service_error", "downstream_connection_termination",
         "upstream_retry_limit_exceeded", "stream_idle_timeout", "invalid_envoy_request_headers",
         "downstream_protocol_error", "upstream_max_stream_duration_reached", "response_from_cache_filter",
         "no_filter_config_found", "duration_timeout", "upstream_protocol_error", "no_cluster_found",
         "overload_manager", "dns_resolution_failure", "downstream_remote_reset"]


@pytest.mark.parametrize(("message", "name", "number", "type_", "repeated"), FIELDS,
                         ids=[f"{m.DESCRIPTOR.name}.{n}" for m, n, *_ in FIELDS])
def test_field_numbers_and_types(message, name: str, number: int, type_: int, repeated: bool) -> None:
    field = message.DESCRIPTOR.fields_by_name[name]
    assert (field.number, field.type, field.label == T.LABEL_REPEATED) == (number, type_, repeated)


@pytest.mark.parametrize(("message", "names"), [
    (accesslog_pb2.AccessLogCommon, COMMON), (accesslog_pb2.HTTPRequestProperties, REQUEST),
    (accesslog_pb2.ResponseFlags, FLAGS)], ids=["AccessLogCommon", "HTTPRequestProperties", "ResponseFlags"])
def test_fields_numbered_in_the_documented_order(message, names: list[str]) -> None:
    """These messages number their fields 1..n in the order docs/envoy-als-wire.md lists them."""
    assert [(f.name, f.number) for f in sorted(message.DESCRIPTOR.fields, key=lambda f: f.number)] == \
        [(n, i) for i, n in enumerate(names, start=1)]


def test_enums_have_envoys_values() -> None:
    assert dict(base_pb2.RequestMethod.items()) == {
        "METHOD_UNSPECIFIED": 0, "GET": 1, "HEAD": 2, "POST": 3, "PUT": 4, "DELETE": 5, "CONNECT": 6,
        "OPTIONS": 7, "TRACE": 8, "PATCH": 9}
    assert dict(accesslog_pb2.HTTPAccessLogEntry.HTTPVersion.items()) == {
        "PROTOCOL_UNSPECIFIED": 0, "HTTP10": 1, "HTTP11": 2, "HTTP2": 3, "HTTP3": 4}
    assert accesslog_pb2.AccessLogType.Value("DownstreamEnd") == 6
    assert accesslog_pb2.AccessLogType.Value("TcpConnectionStart") == 14
    assert accesslog_pb2.TLSProperties.TLSVersion.Value("TLSv1_3") == 4
    assert accesslog_pb2.ResponseFlags.Unauthorized.Reason.Value("EXTERNAL_SERVICE") == 1


def test_the_service_is_client_streaming_on_envoys_path() -> None:
    method = als_pb2.DESCRIPTOR.services_by_name["AccessLogService"].methods_by_name["StreamAccessLogs"]
    assert "/" + method.full_name.rsplit(".", 1)[0] + "/" + method.name == PATH
    assert (method.client_streaming, method.server_streaming) == (True, False)
    assert method.input_type.full_name == "envoy.service.accesslog.v3.StreamAccessLogsMessage"
    assert method.output_type.full_name == "envoy.service.accesslog.v3.StreamAccessLogsResponse"


# ---- a stream's first message, built by hand ----------------------------------------------


def h_struct_string(name: str, value: str) -> bytes:
    """google.protobuf.Struct {1 fields: map<string, Value>} with one string Value {3 string_value}."""
    return message_field(1, string_field(1, name), message_field(2, string_field(3, value)))


NODE = (string_field(1, "sidecar~10.1.2.3~cart-v1-7d9f.shop~shop.svc.cluster.local")
        + string_field(2, "cart.shop")
        + message_field(3, h_struct_string("NAMESPACE", "shop"))
        + message_field(4, string_field(1, "eu-west1"), string_field(2, "eu-west1-b"))
        + string_field(6, "envoy"))
COMMON_BYTES = (double_field(1, 1.0)
                + message_field(2, message_field(1, string_field(2, "10.1.9.9"), int_field(3, 51234)))
                + message_field(5, h_seconds_nanos(1_796_000_000, 250_000_000))
                + string_field(15, "outbound|8080||cart.shop.svc.cluster.local")
                + message_field(16, int_field(6, 1), int_field(12, 1))
                + message_field(17, message_field(1, string_field(1, "envoy.filters.http.jwt_authn"),
                                                  message_field(2, h_struct_string("iss", "wso2"))))
                + message_field(23, h_seconds_nanos(0, 42_000_000))
                + int_field(24, 2)
                + int_field(33, 6))
REQUEST_BYTES = (int_field(1, 3) + string_field(2, "https") + string_field(3, "shop.example.com")
                 + string_field(5, "/cart/2.0.0/items/17?x=1") + string_field(9, "req-1")
                 + int_field(12, 512)
                 + message_field(13, string_field(1, "authorization"), string_field(2, "Bearer eyJ.x.y")))
RESPONSE_BYTES = message_field(1, int_field(1, 503)) + int_field(3, 91) + string_field(6, "upstream_reset")
ENTRY = (message_field(1, COMMON_BYTES) + int_field(2, 3) + message_field(3, REQUEST_BYTES)
         + message_field(4, RESPONSE_BYTES))
FIRST = (message_field(1, message_field(1, NODE), string_field(2, "apim-usage"))
         + message_field(2, message_field(1, ENTRY)))


def test_a_hand_built_first_message_decodes_to_what_envoy_meant() -> None:
    msg = als_pb2.StreamAccessLogsMessage.FromString(FIRST)
    node = msg.identifier.node
    assert (node.id.split("~")[2], node.cluster, node.locality.zone, node.user_agent_name) == \
        ("cart-v1-7d9f.shop", "cart.shop", "eu-west1-b", "envoy")
    assert node.metadata.fields["NAMESPACE"].string_value == "shop"
    assert msg.identifier.log_name == "apim-usage" and msg.WhichOneof("log_entries") == "http_logs"
    (entry,) = msg.http_logs.log_entry
    common, request, response = entry.common_properties, entry.request, entry.response
    assert common.downstream_remote_address.socket_address.port_value == 51234
    assert (common.start_time.seconds, common.start_time.nanos) == (1_796_000_000, 250_000_000)
    assert common.duration.ToMilliseconds() == 42
    assert common.response_flags.upstream_connection_failure and common.response_flags.rate_limited
    assert not common.response_flags.no_healthy_upstream
    assert common.metadata.filter_metadata["envoy.filters.http.jwt_authn"].fields["iss"].string_value == "wso2"
    assert (common.upstream_request_attempt_count, common.access_log_type) == (2, accesslog_pb2.DownstreamEnd)
    assert entry.protocol_version == accesslog_pb2.HTTPAccessLogEntry.HTTP2
    assert (request.request_method, request.authority, request.path) == \
        (base_pb2.POST, "shop.example.com", "/cart/2.0.0/items/17?x=1")
    assert request.request_headers == {"authorization": "Bearer eyJ.x.y"} and request.request_body_bytes == 512
    assert response.HasField("response_code") and response.response_code.value == 503
    assert (response.response_body_bytes, response.response_code_details) == (91, "upstream_reset")


def test_our_stubs_write_the_same_bytes() -> None:
    """protobuf writes known fields in number order, as the hand encoding does (one-entry maps only)."""
    assert als_pb2.StreamAccessLogsMessage.FromString(FIRST).SerializeToString() == FIRST


def test_a_later_message_has_no_identifier_and_tcp_entries_decode() -> None:
    tcp = message_field(1, string_field(15, "outbound|5432||db.shop.svc.cluster.local")) + \
        message_field(2, int_field(1, 1200), int_field(2, 3400))
    msg = als_pb2.StreamAccessLogsMessage.FromString(message_field(3, message_field(1, tcp)))
    assert not msg.HasField("identifier") and msg.WhichOneof("log_entries") == "tcp_logs"
    (entry,) = msg.tcp_logs.log_entry
    assert (entry.connection_properties.received_bytes, entry.connection_properties.sent_bytes) == (1200, 3400)


def test_v2_senders_and_newer_fields_and_empty_submessages_decode() -> None:
    """Istio 1.4-1.6 Envoys send v2 (Node field 5 = build_version string); newer Envoys add fields;
    Go senders write present-but-empty sub-messages. None of it may fail to decode."""
    v2_node = NODE + string_field(5, "abc/1.13.1/Clean/RELEASE/BoringSSL")
    newer_common = COMMON_BYTES + key(40, WT_VARINT) + varint(7) + string_field(41, "future")
    entry = message_field(1, newer_common) + message_field(3, b"") + message_field(4, b"")
    data = message_field(1, message_field(1, v2_node)) + message_field(2, message_field(1, entry))
    msg = als_pb2.StreamAccessLogsMessage.FromString(data)
    assert msg.identifier.node.cluster == "cart.shop"
    (decoded,) = msg.http_logs.log_entry
    assert decoded.HasField("request") and decoded.request.path == ""
    assert not decoded.response.HasField("response_code")  # absent means "no response", not 0
    assert decoded.common_properties.upstream_cluster.startswith("outbound|8080")


def test_a_loopback_call_on_envoys_path_reaches_our_servicer() -> None:
    """A client that knows only the path and raw bytes (as Envoy does) streams two messages."""
    received: list[als_pb2.StreamAccessLogsMessage] = []

    class Sink(als_pb2_grpc.AccessLogServiceServicer):
        def StreamAccessLogs(self, request_iterator, context):  # noqa: N802 - the service's name
            received.extend(request_iterator)
            return als_pb2.StreamAccessLogsResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_unary(PATH, request_serializer=None, response_deserializer=None)
            second = message_field(2, message_field(1, ENTRY))
            assert call(iter([FIRST, second]), timeout=10) == b""
    finally:
        server.stop(None)
    assert [m.HasField("identifier") for m in received] == [True, False]
    assert [len(m.http_logs.log_entry) for m in received] == [1, 1]
