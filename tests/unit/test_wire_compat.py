"""Byte-level proof that our hand-written .proto files speak Istio Mixer's wire format.

``schemas/`` does not vendor the upstream Istio protos: its .proto files were
written from the facts in ``docs/mixer-wire.md`` (sections 1-3 and 5). On
the wire, Mixer only sees field numbers, wire types and gRPC method paths, so
those are what this module checks, independently of our own stubs:

* the expected bytes are built by a tiny protobuf encoder written here (varint,
  key = (field << 3) | wire type, length-delimited, fixed64 little-endian), never
  by the generated ``*_pb2`` classes, and a few are spelled out as literal hex;
* hand-built messages must decode with our stubs to the expected structure, and
  our stubs must encode the same messages to the same bytes (protobuf writes
  known fields in field-number order, so ``InstanceMsg.name`` = 72295727 comes
  last; maps with more than one entry are compared as structures because map
  order on the wire is not guaranteed);
* gogo ``nullable=false`` makes Go senders emit present-but-empty sub-messages,
  and newer senders may add fields: both must decode without error;
* every field number, type, enum value, file option and gRPC path that
  docs/mixer-wire.md lists is checked against the descriptors, table-driven.

If one of these fails, the .proto file and docs/mixer-wire.md disagree: fix the .proto
(and run ``make codegen``), not the test.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, descriptor_pool, duration_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet
from google.rpc import status_pb2

from schemas.apim.usage.v1 import usage_event_pb2
from schemas.mixer.adapter.model.v1beta1 import (
    extensions_pb2,
    infrastructure_backend_pb2,
    infrastructure_backend_pb2_grpc,
    report_pb2,
)
from schemas.mixer.template.metric import template_handler_service_pb2 as metric_pb2
from schemas.mixer.template.metric import template_handler_service_pb2_grpc as metric_pb2_grpc
from schemas.policy.v1beta1 import type_pb2, value_type_pb2

# the minimal protobuf encoder, independent of the generated stubs; istio.policy.v1beta1 bodies below
from tests.support.protowire import (
    WT_I32,
    WT_I64,
    WT_LEN,
    WT_VARINT,
    bytes_field,
    double_field,
    fixed32_field,
    h_any,
    h_seconds_nanos,
    int_field,
    key,
    message_field,
    string_field,
    varint,
)


# Value bodies: every member is in `oneof value`, so it is written even when zero.
def hv_string(s: str) -> bytes:
    return string_field(1, s)


def hv_int64(n: int) -> bytes:
    return int_field(2, n)


def hv_double(x: float) -> bytes:
    return double_field(3, x)


def hv_bool(b: bool) -> bytes:
    return int_field(4, int(b))


def hv_ip(raw: bytes) -> bytes:
    return message_field(5, bytes_field(1, raw))  # IPAddress{1 bytes}


def hv_timestamp(seconds: int, nanos: int = 0) -> bytes:
    return message_field(6, message_field(1, h_seconds_nanos(seconds, nanos)))  # TimeStamp{1 Timestamp}


def hv_duration(seconds: int, nanos: int = 0) -> bytes:
    return message_field(7, message_field(1, h_seconds_nanos(seconds, nanos)))  # Duration{1 Duration}


def hv_email(s: str) -> bytes:
    return message_field(8, string_field(1, s))


def hv_dns(s: str) -> bytes:
    return message_field(9, string_field(1, s))


def hv_uri(s: str) -> bytes:
    return message_field(10, string_field(1, s))


def hv_string_map(items: Iterable[tuple[str, str]]) -> bytes:
    """StringMap{1 map<string,string>}: a repeated entry message {1 key, 2 value}."""
    entries = [message_field(1, string_field(1, k), string_field(2, v)) for k, v in items]
    return message_field(11, *entries)


def h_value_map_entry(field: int, k: str, value_body: bytes) -> bytes:
    """One entry of a map<string, istio.policy.v1beta1.Value> field: {1 key, 2 Value}."""
    return message_field(field, string_field(1, k), message_field(2, value_body))


def h_instance(
    name: str | None = None,
    value: bytes | None = None,
    dimensions: Iterable[tuple[str, bytes]] = (),
    monitored_resource_type: str | None = None,
    monitored_resource_dimensions: Iterable[tuple[str, bytes]] = (),
    *,
    name_first: bool = False,
) -> bytes:
    """metric.InstanceMsg body, fields in number order (1, 2, 3, 4, then 72295727)."""
    name_part = string_field(72295727, name) if name is not None else b""
    parts = [
        message_field(1, value) if value is not None else b"",
        *(h_value_map_entry(2, k, v) for k, v in dimensions),
        string_field(3, monitored_resource_type) if monitored_resource_type is not None else b"",
        *(h_value_map_entry(4, k, v) for k, v in monitored_resource_dimensions),
    ]
    return b"".join([name_part, *parts] if name_first else [*parts, name_part])


def h_request(instances: Iterable[bytes], adapter_config: bytes | None = None, dedup_id: str | None = None) -> bytes:
    """metric.HandleMetricRequest body {1 repeated InstanceMsg, 2 Any, 3 string}."""
    return b"".join(
        [
            *(message_field(1, i) for i in instances),
            message_field(2, adapter_config) if adapter_config is not None else b"",
            string_field(3, dedup_id) if dedup_id is not None else b"",
        ]
    )


# ---- stub-side helpers (only for building the messages to compare against) ------------


def native(value: type_pb2.Value) -> tuple[str | None, Any]:
    """(oneof member, plain Python value) of a decoded istio.policy.v1beta1.Value."""
    which = value.WhichOneof("value")
    extract: dict[str | None, Callable[[type_pb2.Value], Any]] = {
        None: lambda v: None,
        "string_value": lambda v: v.string_value,
        "int64_value": lambda v: v.int64_value,
        "double_value": lambda v: v.double_value,
        "bool_value": lambda v: v.bool_value,
        "ip_address_value": lambda v: ipaddress.ip_address(v.ip_address_value.value),
        "timestamp_value": lambda v: (v.timestamp_value.value.seconds, v.timestamp_value.value.nanos),
        "duration_value": lambda v: (v.duration_value.value.seconds, v.duration_value.value.nanos),
        "email_address_value": lambda v: v.email_address_value.value,
        "dns_name_value": lambda v: v.dns_name_value.value,
        "uri_value": lambda v: v.uri_value.value,
        "string_map_value": lambda v: dict(v.string_map_value.value),
    }
    return which, extract[which](value)


def sv(s: str) -> type_pb2.Value:
    return type_pb2.Value(string_value=s)


def iv(n: int) -> type_pb2.Value:
    return type_pb2.Value(int64_value=n)


def ts(seconds: int, nanos: int = 0) -> type_pb2.Value:
    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    return type_pb2.Value(timestamp_value=type_pb2.TimeStamp(value=stamp))


def dur(seconds: int, nanos: int = 0) -> type_pb2.Value:
    return type_pb2.Value(duration_value=type_pb2.Duration(value=duration_pb2.Duration(seconds=seconds, nanos=nanos)))


def ip(text: str) -> type_pb2.Value:
    return type_pb2.Value(ip_address_value=type_pb2.IPAddress(value=ipaddress.ip_address(text).packed))


ADAPTER = "istio.mixer.adapter.model.v1beta1"
POLICY = "istio.policy.v1beta1"
INSTANCE_NAME = "requestcount.instance.istio-system"
NAME_KEY = bytes.fromhex("fad2e49302")
ADAPTER_TYPE_URL = "type.googleapis.com/apim.adapter.Params"
ADAPTER_PARAMS = string_field(1, "kafka-0:9092")  # the adapter's own params message; opaque here


# --------------------------------------------------------------------------------------
# 0. The encoder itself, against literal bytes.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "expected_hex"),
    [
        pytest.param(varint(0), "00", id="varint-0"),
        pytest.param(varint(1), "01", id="varint-1"),
        pytest.param(varint(150), "9601", id="varint-150"),
        pytest.param(varint(300), "ac02", id="varint-300"),
        pytest.param(varint(-1), "ff" * 9 + "01", id="varint-minus-1-is-10-bytes"),
        pytest.param(varint(2**63 - 1), "ff" * 8 + "7f", id="varint-int64-max"),
        pytest.param(varint(-(2**63)), "80" * 9 + "01", id="varint-int64-min"),
        pytest.param(key(1, WT_LEN), "0a", id="key-1-len"),
        pytest.param(key(72295727, WT_LEN), "fad2e49302", id="key-72295727-len"),
        pytest.param(double_field(3, 1.5), "19" + "000000000000f83f", id="double-1.5"),
        pytest.param(string_field(1, "GET"), "0a03474554", id="string-GET"),
    ],
)
def test_hand_encoder_matches_protobuf_spec(encoded: bytes, expected_hex: str) -> None:
    assert encoded.hex() == expected_hex


# --------------------------------------------------------------------------------------
# 1. InstanceMsg.name: field 72295727, the 5-byte key fa d2 e4 93 02 (docs/mixer-wire.md section 3).
# --------------------------------------------------------------------------------------


def test_instance_name_key_is_five_bytes() -> None:
    assert key(72295727, WT_LEN) == NAME_KEY
    assert len(NAME_KEY) == 5
    assert metric_pb2.InstanceMsg.DESCRIPTOR.fields_by_name["name"].number == 72295727


def test_instance_with_only_a_name_golden_bytes() -> None:
    expected = NAME_KEY + bytes([len(INSTANCE_NAME)]) + INSTANCE_NAME.encode()
    assert expected.hex().startswith("fad2e4930222")  # 0x22 = 34 = len(INSTANCE_NAME)
    assert metric_pb2.InstanceMsg(name=INSTANCE_NAME).SerializeToString() == expected
    assert metric_pb2.InstanceMsg.FromString(expected).name == INSTANCE_NAME


def test_instance_msg_hand_bytes_decode_and_stub_encodes_identically() -> None:
    hand = h_instance(
        name=INSTANCE_NAME,
        value=hv_int64(1),
        dimensions=[("reporter", hv_string("destination"))],
        monitored_resource_type="UNSPECIFIED",
        monitored_resource_dimensions=[("cluster", hv_string("Kubernetes"))],
    )
    # The name is the last field on the wire (highest number) and has the 5-byte key.
    assert hand.endswith(NAME_KEY + bytes([len(INSTANCE_NAME)]) + INSTANCE_NAME.encode())

    decoded = metric_pb2.InstanceMsg.FromString(hand)
    assert decoded.name == INSTANCE_NAME
    assert native(decoded.value) == ("int64_value", 1)
    assert {k: native(v) for k, v in decoded.dimensions.items()} == {"reporter": ("string_value", "destination")}
    assert decoded.monitored_resource_type == "UNSPECIFIED"
    assert {k: native(v) for k, v in decoded.monitored_resource_dimensions.items()} == {
        "cluster": ("string_value", "Kubernetes")
    }

    built = metric_pb2.InstanceMsg(
        name=INSTANCE_NAME,
        value=iv(1),
        dimensions={"reporter": sv("destination")},
        monitored_resource_type="UNSPECIFIED",
        monitored_resource_dimensions={"cluster": sv("Kubernetes")},
    )
    assert built == decoded
    assert built.SerializeToString() == hand


def test_instance_msg_name_first_on_the_wire_also_decodes() -> None:
    """Field order on the wire is not significant to a decoder."""
    hand = h_instance(name=INSTANCE_NAME, value=hv_int64(7), monitored_resource_type="UNSPECIFIED", name_first=True)
    assert hand.startswith(NAME_KEY)
    decoded = metric_pb2.InstanceMsg.FromString(hand)
    assert decoded == metric_pb2.InstanceMsg(name=INSTANCE_NAME, value=iv(7), monitored_resource_type="UNSPECIFIED")


# --------------------------------------------------------------------------------------
# 2. Every istio.policy.v1beta1.Value kind, 1..11.
# --------------------------------------------------------------------------------------

IPV4 = ipaddress.ip_address("10.1.2.3")
IPV6 = ipaddress.ip_address("2001:db8::8a2e:370:7334")
IPV4_MAPPED = ipaddress.ip_address("::ffff:10.1.2.3")

VALUE_CASES = [
    # id, hand-built bytes, the same value built with the stub, oneof member, plain value
    ("string", hv_string("GET"), sv("GET"), "string_value", "GET"),
    ("string-empty", hv_string(""), sv(""), "string_value", ""),
    ("string-utf8", hv_string("h\u00e9llo \u2713"), sv("h\u00e9llo \u2713"), "string_value", "h\u00e9llo \u2713"),
    ("int64-0", hv_int64(0), iv(0), "int64_value", 0),
    ("int64-200", hv_int64(200), iv(200), "int64_value", 200),
    ("int64-minus-1", hv_int64(-1), iv(-1), "int64_value", -1),
    ("int64-max", hv_int64(2**63 - 1), iv(2**63 - 1), "int64_value", 2**63 - 1),
    ("int64-min", hv_int64(-(2**63)), iv(-(2**63)), "int64_value", -(2**63)),
    ("double-0", hv_double(0.0), type_pb2.Value(double_value=0.0), "double_value", 0.0),
    ("double-12.5", hv_double(12.5), type_pb2.Value(double_value=12.5), "double_value", 12.5),
    ("double-negative", hv_double(-0.001), type_pb2.Value(double_value=-0.001), "double_value", -0.001),
    ("double-inf", hv_double(math.inf), type_pb2.Value(double_value=math.inf), "double_value", math.inf),
    ("bool-true", hv_bool(True), type_pb2.Value(bool_value=True), "bool_value", True),
    ("bool-false", hv_bool(False), type_pb2.Value(bool_value=False), "bool_value", False),
    ("ip-v4-4-bytes", hv_ip(IPV4.packed), ip(str(IPV4)), "ip_address_value", IPV4),
    ("ip-v6-16-bytes", hv_ip(IPV6.packed), ip(str(IPV6)), "ip_address_value", IPV6),
    ("ip-v4-mapped-16-bytes", hv_ip(IPV4_MAPPED.packed), ip(str(IPV4_MAPPED)), "ip_address_value", IPV4_MAPPED),
    (
        "timestamp",
        hv_timestamp(1578355200, 123456789),
        ts(1578355200, 123456789),
        "timestamp_value",
        (1578355200, 123456789),
    ),
    ("timestamp-whole-seconds", hv_timestamp(1578355200), ts(1578355200), "timestamp_value", (1578355200, 0)),
    ("duration-12.5ms", hv_duration(0, 12_500_000), dur(0, 12_500_000), "duration_value", (0, 12_500_000)),
    ("duration-3s", hv_duration(3), dur(3), "duration_value", (3, 0)),
    ("duration-negative", hv_duration(-1, -500_000_000), dur(-1, -500_000_000), "duration_value", (-1, -500_000_000)),
    (
        "email",
        hv_email("ops@example.com"),
        type_pb2.Value(email_address_value=type_pb2.EmailAddress(value="ops@example.com")),
        "email_address_value",
        "ops@example.com",
    ),
    (
        "dns-name",
        hv_dns("reviews.default.svc.cluster.local"),
        type_pb2.Value(dns_name_value=type_pb2.DNSName(value="reviews.default.svc.cluster.local")),
        "dns_name_value",
        "reviews.default.svc.cluster.local",
    ),
    (
        "uri",
        hv_uri("https://api.example.com/pizzashack/1.0.0/menu?x=1"),
        type_pb2.Value(uri_value=type_pb2.Uri(value="https://api.example.com/pizzashack/1.0.0/menu?x=1")),
        "uri_value",
        "https://api.example.com/pizzashack/1.0.0/menu?x=1",
    ),
    (
        "string-map-one-entry",
        hv_string_map([("app", "reviews")]),
        type_pb2.Value(string_map_value=type_pb2.StringMap(value={"app": "reviews"})),
        "string_map_value",
        {"app": "reviews"},
    ),
]


@pytest.mark.parametrize(
    ("hand", "built", "which", "plain"),
    [pytest.param(h, b, w, p, id=i) for i, h, b, w, p in VALUE_CASES],
)
def test_value_kind_decodes_and_encodes_byte_identically(
    hand: bytes, built: type_pb2.Value, which: str, plain: Any
) -> None:
    decoded = type_pb2.Value.FromString(hand)
    assert decoded.WhichOneof("value") == which
    assert native(decoded) == (which, plain)
    assert decoded == built
    assert built.SerializeToString() == hand


def test_value_field_numbers_cover_all_eleven_kinds() -> None:
    """The table above exercises every member of the oneof, and the first key byte names it."""
    expected = {
        "string_value": 1,
        "int64_value": 2,
        "double_value": 3,
        "bool_value": 4,
        "ip_address_value": 5,
        "timestamp_value": 6,
        "duration_value": 7,
        "email_address_value": 8,
        "dns_name_value": 9,
        "uri_value": 10,
        "string_map_value": 11,
    }
    assert {w for _, _, _, w, _ in VALUE_CASES} == set(expected)
    wire_type = {1: WT_LEN, 2: WT_VARINT, 3: WT_I64, 4: WT_VARINT}
    for _, hand, _, which, _ in VALUE_CASES:
        number = expected[which]
        assert hand[:1] == key(number, wire_type.get(number, WT_LEN)), which


@pytest.mark.parametrize(
    ("built", "expected_hex"),
    [
        pytest.param(iv(-1), "10" + "ff" * 9 + "01", id="int64-minus-1"),
        pytest.param(iv(1), "1001", id="int64-1"),
        pytest.param(type_pb2.Value(double_value=1.5), "19000000000000f83f", id="double-1.5"),
        pytest.param(type_pb2.Value(bool_value=False), "2000", id="bool-false-still-written"),
        pytest.param(ip("10.1.2.3"), "2a060a040a010203", id="ipv4"),
        pytest.param(ts(1, 2), "3206" + "0a04" + "0801" + "1002", id="timestamp-1s-2ns"),
        pytest.param(dur(0, 5), "3a04" + "0a02" + "1005", id="duration-5ns"),
        pytest.param(
            type_pb2.Value(string_map_value=type_pb2.StringMap(value={"a": "b"})),
            "5a08" + "0a06" + "0a0161" + "120162",
            id="string-map-a-b",
        ),
    ],
)
def test_value_golden_hex(built: type_pb2.Value, expected_hex: str) -> None:
    """A few encodings spelled out by hand, so a bug shared by encoder and test cannot hide."""
    assert built.SerializeToString().hex() == expected_hex
    assert type_pb2.Value.FromString(bytes.fromhex(expected_hex)) == built


def test_string_map_with_several_entries_decodes_to_the_same_map() -> None:
    items = [("app", "reviews"), ("version", "v2"), ("pod-template-hash", "7c8f9"), ("empty", "")]
    decoded = type_pb2.Value.FromString(hv_string_map(items))
    assert native(decoded) == ("string_map_value", dict(items))
    reencoded = type_pb2.Value.FromString(decoded.SerializeToString())
    assert reencoded == decoded


# --------------------------------------------------------------------------------------
# 3. A whole metric.HandleMetricRequest.
# --------------------------------------------------------------------------------------

DIMENSIONS_HAND = [
    ("reporter", hv_string("destination")),
    ("source_workload", hv_string("productpage-v1")),
    ("destination_service", hv_string("reviews.default.svc.cluster.local")),
    ("response_code", hv_int64(200)),
    ("source_ip", hv_ip(IPV4.packed)),
    ("request_time", hv_timestamp(1578355200, 5)),
]
DIMENSIONS_EXPECTED = {
    "reporter": ("string_value", "destination"),
    "source_workload": ("string_value", "productpage-v1"),
    "destination_service": ("string_value", "reviews.default.svc.cluster.local"),
    "response_code": ("int64_value", 200),
    "source_ip": ("ip_address_value", IPV4),
    "request_time": ("timestamp_value", (1578355200, 5)),
}
DIMENSIONS_BUILT = {
    "reporter": sv("destination"),
    "source_workload": sv("productpage-v1"),
    "destination_service": sv("reviews.default.svc.cluster.local"),
    "response_code": iv(200),
    "source_ip": ip(str(IPV4)),
    "request_time": ts(1578355200, 5),
}
MRD_HAND = [("cluster_name", hv_string("Kubernetes")), ("namespace", hv_string("default"))]
MRD_BUILT = {"cluster_name": sv("Kubernetes"), "namespace": sv("default")}


def _two_instance_request_hand(*, reverse_map_entries: bool = False) -> bytes:
    dims = list(reversed(DIMENSIONS_HAND)) if reverse_map_entries else DIMENSIONS_HAND
    mrd = list(reversed(MRD_HAND)) if reverse_map_entries else MRD_HAND
    return h_request(
        [
            h_instance("requestcount.instance.istio-system", hv_int64(1), dims, "UNSPECIFIED", mrd),
            h_instance("requestduration.instance.istio-system", hv_duration(0, 12_500_000), dims, "UNSPECIFIED", mrd),
        ],
        adapter_config=h_any(ADAPTER_TYPE_URL, ADAPTER_PARAMS),
        dedup_id="42",
    )


def _two_instance_request_built() -> metric_pb2.HandleMetricRequest:
    return metric_pb2.HandleMetricRequest(
        instances=[
            metric_pb2.InstanceMsg(
                name="requestcount.instance.istio-system",
                value=iv(1),
                dimensions=DIMENSIONS_BUILT,
                monitored_resource_type="UNSPECIFIED",
                monitored_resource_dimensions=MRD_BUILT,
            ),
            metric_pb2.InstanceMsg(
                name="requestduration.instance.istio-system",
                value=dur(0, 12_500_000),
                dimensions=DIMENSIONS_BUILT,
                monitored_resource_type="UNSPECIFIED",
                monitored_resource_dimensions=MRD_BUILT,
            ),
        ],
        adapter_config=any_pb2.Any(type_url=ADAPTER_TYPE_URL, value=ADAPTER_PARAMS),
        dedup_id="42",
    )


@pytest.mark.parametrize("reverse_map_entries", [False, True], ids=["map-entries-in-order", "map-entries-reversed"])
def test_handle_metric_request_with_two_instances_decodes(reverse_map_entries: bool) -> None:
    hand = _two_instance_request_hand(reverse_map_entries=reverse_map_entries)
    decoded = metric_pb2.HandleMetricRequest.FromString(hand)

    assert decoded.dedup_id == "42"
    assert decoded.adapter_config.type_url == ADAPTER_TYPE_URL
    assert decoded.adapter_config.value == ADAPTER_PARAMS
    assert [i.name for i in decoded.instances] == [
        "requestcount.instance.istio-system",
        "requestduration.instance.istio-system",
    ]
    assert [native(i.value) for i in decoded.instances] == [("int64_value", 1), ("duration_value", (0, 12_500_000))]
    for instance in decoded.instances:
        assert {k: native(v) for k, v in instance.dimensions.items()} == DIMENSIONS_EXPECTED
        assert instance.monitored_resource_type == "UNSPECIFIED"
        assert {k: native(v) for k, v in instance.monitored_resource_dimensions.items()} == {
            "cluster_name": ("string_value", "Kubernetes"),
            "namespace": ("string_value", "default"),
        }
    assert decoded == _two_instance_request_built()
    # And what our stub writes, Mixer's side would read back to the same structure.
    assert metric_pb2.HandleMetricRequest.FromString(_two_instance_request_built().SerializeToString()) == decoded


def test_handle_metric_request_with_single_entry_maps_is_byte_identical() -> None:
    hand = h_request(
        [
            h_instance(
                INSTANCE_NAME,
                hv_int64(1),
                [("response_code", hv_int64(404))],
                "UNSPECIFIED",
                [("cluster_name", hv_string("Kubernetes"))],
            )
        ],
        adapter_config=h_any(ADAPTER_TYPE_URL, ADAPTER_PARAMS),
        dedup_id="7",
    )
    built = metric_pb2.HandleMetricRequest(
        instances=[
            metric_pb2.InstanceMsg(
                name=INSTANCE_NAME,
                value=iv(1),
                dimensions={"response_code": iv(404)},
                monitored_resource_type="UNSPECIFIED",
                monitored_resource_dimensions={"cluster_name": sv("Kubernetes")},
            )
        ],
        adapter_config=any_pb2.Any(type_url=ADAPTER_TYPE_URL, value=ADAPTER_PARAMS),
        dedup_id="7",
    )
    assert metric_pb2.HandleMetricRequest.FromString(hand) == built
    assert built.SerializeToString() == hand


# The default Istio 1.4 requestcount instance (docs/mixer-wire.md section 4), as Mixer would send it.
DEFAULT_DIMENSIONS = [
    ("reporter", hv_string("destination"), ("string_value", "destination")),
    ("source_workload", hv_string("productpage-v1"), ("string_value", "productpage-v1")),
    ("source_workload_namespace", hv_string("default"), ("string_value", "default")),
    ("source_principal", hv_string("cluster.local/ns/default/sa/bookinfo-productpage"),
     ("string_value", "cluster.local/ns/default/sa/bookinfo-productpage")),
    ("source_app", hv_string("productpage"), ("string_value", "productpage")),
    ("source_version", hv_string("v1"), ("string_value", "v1")),
    ("destination_workload", hv_string("reviews-v2"), ("string_value", "reviews-v2")),
    ("destination_workload_namespace", hv_string("default"), ("string_value", "default")),
    ("destination_principal", hv_string("unknown"), ("string_value", "unknown")),
    ("destination_app", hv_string("reviews"), ("string_value", "reviews")),
    ("destination_version", hv_string("v2"), ("string_value", "v2")),
    ("destination_service", hv_string("reviews.default.svc.cluster.local"),
     ("string_value", "reviews.default.svc.cluster.local")),
    ("destination_service_name", hv_string("reviews"), ("string_value", "reviews")),
    ("destination_service_namespace", hv_string("default"), ("string_value", "default")),
    ("request_protocol", hv_string("http"), ("string_value", "http")),
    ("response_code", hv_int64(200), ("int64_value", 200)),
    ("response_flags", hv_string("-"), ("string_value", "-")),
    ("permissive_response_code", hv_string("none"), ("string_value", "none")),
    ("permissive_response_policyid", hv_string("none"), ("string_value", "none")),
    ("connection_security_policy", hv_string("mutual_tls"), ("string_value", "mutual_tls")),
]


def test_default_istio_requestcount_instance_decodes() -> None:
    hand = h_request(
        [
            h_instance(
                INSTANCE_NAME,
                hv_int64(1),
                [(k, body) for k, body, _ in DEFAULT_DIMENSIONS],
                "UNSPECIFIED",
            )
        ],
        dedup_id="1024",  # no adapter_config: what a session-based adapter gets
    )
    decoded = metric_pb2.HandleMetricRequest.FromString(hand)
    assert not decoded.HasField("adapter_config")
    assert decoded.dedup_id == "1024"
    (instance,) = decoded.instances
    assert instance.name == INSTANCE_NAME
    assert native(instance.value) == ("int64_value", 1)
    assert {k: native(v) for k, v in instance.dimensions.items()} == {k: p for k, _, p in DEFAULT_DIMENSIONS}
    assert len(instance.dimensions) == 20
    assert instance.monitored_resource_type == "UNSPECIFIED"
    assert len(instance.monitored_resource_dimensions) == 0


# --------------------------------------------------------------------------------------
# 4. Present-but-empty and absent sub-messages (gogo nullable=false, docs/mixer-wire.md section 5).
# --------------------------------------------------------------------------------------

EMPTY_SUBMESSAGE_CASES = [
    ("ip-address", 5, "ip_address_value", lambda v: v.ip_address_value.value == b""),
    ("timestamp", 6, "timestamp_value", lambda v: not v.timestamp_value.HasField("value")),
    ("duration", 7, "duration_value", lambda v: not v.duration_value.HasField("value")),
    ("email", 8, "email_address_value", lambda v: v.email_address_value.value == ""),
    ("dns-name", 9, "dns_name_value", lambda v: v.dns_name_value.value == ""),
    ("uri", 10, "uri_value", lambda v: v.uri_value.value == ""),
    ("string-map", 11, "string_map_value", lambda v: len(v.string_map_value.value) == 0),
]


@pytest.mark.parametrize(
    ("number", "which", "is_empty"),
    [pytest.param(n, w, f, id=i) for i, n, w, f in EMPTY_SUBMESSAGE_CASES],
)
def test_value_with_present_but_empty_submessage(number: int, which: str, is_empty: Callable[[Any], bool]) -> None:
    hand = key(number, WT_LEN) + b"\x00"  # tag + length 0
    decoded = type_pb2.Value.FromString(hand)
    assert decoded.WhichOneof("value") == which
    assert decoded.HasField(which)
    assert is_empty(decoded)
    assert decoded.SerializeToString() == hand  # presence survives a re-encode


@pytest.mark.parametrize(
    ("hand", "which"),
    [
        pytest.param(hv_timestamp(0), "timestamp_value", id="timestamp-epoch"),
        pytest.param(hv_duration(0), "duration_value", id="duration-zero"),
    ],
)
def test_value_with_empty_inner_well_known_type(hand: bytes, which: str) -> None:
    """TimeStamp{value: Timestamp{}} is 0a 00 inside the Value field: present, all zeros."""
    assert hand[1:] == b"\x02\x0a\x00"
    decoded = type_pb2.Value.FromString(hand)
    assert decoded.WhichOneof("value") == which
    assert getattr(decoded, which).HasField("value")
    assert native(decoded) == (which, (0, 0))
    assert decoded.SerializeToString() == hand


def test_instance_with_empty_value_and_empty_map_values() -> None:
    hand = b"".join(
        [
            message_field(1),  # value: present, empty Value (no oneof member)
            message_field(2, string_field(1, "empty_value"), message_field(2)),  # entry with an empty Value
            message_field(2, string_field(1, "no_value")),  # entry without its value field
            message_field(4),  # a monitored_resource_dimensions entry with neither key nor value
            string_field(72295727, INSTANCE_NAME),
        ]
    )
    decoded = metric_pb2.InstanceMsg.FromString(hand)
    assert decoded.name == INSTANCE_NAME
    assert decoded.HasField("value")
    assert decoded.value.WhichOneof("value") is None
    assert {k: native(v) for k, v in decoded.dimensions.items()} == {
        "empty_value": (None, None),
        "no_value": (None, None),
    }
    assert {k: native(v) for k, v in decoded.monitored_resource_dimensions.items()} == {"": (None, None)}


def test_string_map_entry_without_key_or_value_decodes_to_empty_strings() -> None:
    decoded = type_pb2.Value.FromString(message_field(11, message_field(1)))
    assert native(decoded) == ("string_map_value", {"": ""})


def test_request_with_empty_instance_and_empty_adapter_config() -> None:
    hand = message_field(1) + message_field(2)
    decoded = metric_pb2.HandleMetricRequest.FromString(hand)
    assert len(decoded.instances) == 1
    assert decoded.instances[0] == metric_pb2.InstanceMsg()
    assert decoded.HasField("adapter_config")
    assert decoded.adapter_config == any_pb2.Any()
    assert decoded.SerializeToString() == hand


@pytest.mark.parametrize(
    ("message_type", "field"),
    [
        pytest.param(metric_pb2.InstanceMsg, "value", id="InstanceMsg.value"),
        pytest.param(metric_pb2.HandleMetricRequest, "adapter_config", id="HandleMetricRequest.adapter_config"),
        pytest.param(type_pb2.TimeStamp, "value", id="TimeStamp.value"),
        pytest.param(type_pb2.Duration, "value", id="Duration.value"),
        pytest.param(infrastructure_backend_pb2.ValidateResponse, "status", id="ValidateResponse.status"),
    ],
)
def test_absent_submessage_decodes_as_not_set(message_type: type[Message], field: str) -> None:
    decoded = message_type.FromString(b"")
    assert not decoded.HasField(field)


def test_empty_value_has_no_kind() -> None:
    assert type_pb2.Value.FromString(b"").WhichOneof("value") is None


# --------------------------------------------------------------------------------------
# 5. Unknown fields: a newer sender must not break us.
# --------------------------------------------------------------------------------------

UNKNOWN_TAIL = b"".join(
    [
        int_field(20, 5),  # varint
        double_field(21, 2.0),  # fixed64
        string_field(22, "future"),  # length-delimited
        fixed32_field(23, 7),  # fixed32
    ]
)


@pytest.mark.parametrize(
    ("message_type", "known", "check"),
    [
        pytest.param(
            type_pb2.Value, hv_string("GET"), lambda m: native(m) == ("string_value", "GET"), id="Value"
        ),
        pytest.param(
            metric_pb2.InstanceMsg,
            h_instance(name=INSTANCE_NAME, value=hv_int64(1)),
            lambda m: m.name == INSTANCE_NAME and native(m.value) == ("int64_value", 1),
            id="InstanceMsg",
        ),
        pytest.param(
            metric_pb2.HandleMetricRequest,
            h_request([h_instance(name=INSTANCE_NAME)], dedup_id="9"),
            lambda m: m.dedup_id == "9" and m.instances[0].name == INSTANCE_NAME,
            id="HandleMetricRequest",
        ),
        pytest.param(report_pb2.ReportResult, b"", lambda m: True, id="ReportResult"),
        pytest.param(
            infrastructure_backend_pb2.CreateSessionResponse,
            string_field(1, "session-1"),
            lambda m: m.session_id == "session-1",
            id="CreateSessionResponse",
        ),
    ],
)
def test_unknown_fields_are_tolerated_and_preserved(
    message_type: type[Message], known: bytes, check: Callable[[Any], bool]
) -> None:
    hand = known + UNKNOWN_TAIL
    decoded = message_type.FromString(hand)
    assert check(decoded)
    assert [(f.field_number, f.wire_type) for f in UnknownFieldSet(decoded)] == [
        (20, WT_VARINT),
        (21, WT_I64),
        (22, WT_LEN),
        (23, WT_I32),
    ]
    assert decoded.SerializeToString() == hand  # kept and passed on unchanged
    decoded.DiscardUnknownFields()
    assert decoded.SerializeToString() == known


def test_unknown_fields_nested_deep_in_a_request() -> None:
    value = hv_string("destination") + int_field(99, 1)
    instance = h_instance(name=INSTANCE_NAME, dimensions=[("reporter", value)]) + string_field(5, "new-field")
    hand = h_request([instance], dedup_id="3") + message_field(4, string_field(1, "x"))
    decoded = metric_pb2.HandleMetricRequest.FromString(hand)
    assert decoded.dedup_id == "3"
    assert native(decoded.instances[0].dimensions["reporter"]) == ("string_value", "destination")


def test_future_value_kind_is_ignored() -> None:
    """A Value member numbered 12 (not in Istio 1.4) decodes as an unset oneof."""
    decoded = type_pb2.Value.FromString(string_field(12, "something new"))
    assert decoded.WhichOneof("value") is None
    assert [f.field_number for f in UnknownFieldSet(decoded)] == [12]


def test_unknown_enum_number_is_kept() -> None:
    """proto3 enums are open: a ValueType added later survives decoding."""
    decoded = metric_pb2.Type.FromString(int_field(1, 99))
    assert decoded.value == 99
    assert decoded.SerializeToString() == int_field(1, 99)


# --------------------------------------------------------------------------------------
# 6. gRPC services, method paths and packages (docs/mixer-wire.md sections 1 and 1.1).
# --------------------------------------------------------------------------------------

RPCS = [
    # path, pb2 module, pb2_grpc module, service, method, request, response
    (
        "/metric.HandleMetricService/HandleMetric",
        metric_pb2,
        metric_pb2_grpc,
        "HandleMetricService",
        "HandleMetric",
        "metric.HandleMetricRequest",
        "istio.mixer.adapter.model.v1beta1.ReportResult",
    ),
    (
        "/istio.mixer.adapter.model.v1beta1.InfrastructureBackend/Validate",
        infrastructure_backend_pb2,
        infrastructure_backend_pb2_grpc,
        "InfrastructureBackend",
        "Validate",
        "istio.mixer.adapter.model.v1beta1.ValidateRequest",
        "istio.mixer.adapter.model.v1beta1.ValidateResponse",
    ),
    (
        "/istio.mixer.adapter.model.v1beta1.InfrastructureBackend/CreateSession",
        infrastructure_backend_pb2,
        infrastructure_backend_pb2_grpc,
        "InfrastructureBackend",
        "CreateSession",
        "istio.mixer.adapter.model.v1beta1.CreateSessionRequest",
        "istio.mixer.adapter.model.v1beta1.CreateSessionResponse",
    ),
    (
        "/istio.mixer.adapter.model.v1beta1.InfrastructureBackend/CloseSession",
        infrastructure_backend_pb2,
        infrastructure_backend_pb2_grpc,
        "InfrastructureBackend",
        "CloseSession",
        "istio.mixer.adapter.model.v1beta1.CloseSessionRequest",
        "istio.mixer.adapter.model.v1beta1.CloseSessionResponse",
    ),
]
RPC_PARAMS = [pytest.param(*row, id=row[0]) for row in RPCS]
RPC_ARGNAMES = ("path", "pb2", "pb2_grpc", "service", "method", "request_type", "response_type")


@pytest.mark.parametrize(RPC_ARGNAMES, RPC_PARAMS)
def test_rpc_path_and_types_from_descriptor(
    path: str, pb2: Any, pb2_grpc: Any, service: str, method: str, request_type: str, response_type: str
) -> None:
    service_desc = pb2.DESCRIPTOR.services_by_name[service]
    method_desc = service_desc.methods_by_name[method]
    # Mixer builds the path as "/%s.%s/%s" % (package, service, method).
    assert f"/{pb2.DESCRIPTOR.package}.{service}/{method}" == path
    assert f"/{service_desc.full_name}/{method_desc.name}" == path
    assert method_desc.input_type.full_name == request_type
    assert method_desc.output_type.full_name == response_type
    assert not method_desc.client_streaming
    assert not method_desc.server_streaming


class _RecordingChannel:
    """Wraps a real grpc.Channel and records what a generated Stub registers on it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.registered: dict[str, tuple[str, dict[str, Any], Any]] = {}

    def _register(self, kind: str, path: str, *args: Any, **kwargs: Any) -> Any:
        callable_ = getattr(self.channel, kind)(path, *args, **kwargs)
        self.registered[path] = (kind, kwargs, callable_)
        return callable_

    def unary_unary(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._register("unary_unary", path, *args, **kwargs)

    def unary_stream(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._register("unary_stream", path, *args, **kwargs)

    def stream_unary(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._register("stream_unary", path, *args, **kwargs)

    def stream_stream(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return self._register("stream_stream", path, *args, **kwargs)


@pytest.fixture
def dummy_channel() -> Iterable[grpc.Channel]:
    """A real channel to an address nobody listens on; nothing is ever called on it."""
    channel = grpc.insecure_channel("127.0.0.1:9")
    try:
        yield channel
    finally:
        channel.close()


@pytest.mark.parametrize(RPC_ARGNAMES, RPC_PARAMS)
def test_generated_stub_uses_the_path(
    dummy_channel: grpc.Channel,
    path: str,
    pb2: Any,
    pb2_grpc: Any,
    service: str,
    method: str,
    request_type: str,
    response_type: str,
) -> None:
    recorder = _RecordingChannel(dummy_channel)
    stub = getattr(pb2_grpc, f"{service}Stub")(recorder)
    kind, kwargs, callable_ = recorder.registered[path]
    assert kind == "unary_unary"
    assert getattr(stub, method) is callable_
    # The real channel keeps the path as bytes (a private detail; checked only if present).
    internal = getattr(callable_, "_method", None)
    if internal is not None:
        assert internal in (path, path.encode())
    # The (de)serializers are the request and response message types.
    request_class = getattr(pb2, request_type.rsplit(".", 1)[1])
    assert request_class.DESCRIPTOR.full_name == request_type
    assert kwargs["request_serializer"](request_class()) == b""
    assert kwargs["response_deserializer"](b"").DESCRIPTOR.full_name == response_type


@pytest.mark.parametrize(
    ("pb2", "pb2_grpc", "service", "paths"),
    [
        pytest.param(
            metric_pb2,
            metric_pb2_grpc,
            "HandleMetricService",
            {"/metric.HandleMetricService/HandleMetric"},
            id="metric.HandleMetricService",
        ),
        pytest.param(
            infrastructure_backend_pb2,
            infrastructure_backend_pb2_grpc,
            "InfrastructureBackend",
            {p for p, *_ in RPCS if "InfrastructureBackend" in p},
            id="istio.mixer.adapter.model.v1beta1.InfrastructureBackend",
        ),
    ],
)
def test_service_has_exactly_these_methods(
    dummy_channel: grpc.Channel, pb2: Any, pb2_grpc: Any, service: str, paths: set[str]
) -> None:
    service_desc = pb2.DESCRIPTOR.services_by_name[service]
    assert {f"/{service_desc.full_name}/{m.name}" for m in service_desc.methods} == paths
    recorder = _RecordingChannel(dummy_channel)
    getattr(pb2_grpc, f"{service}Stub")(recorder)
    assert set(recorder.registered) == paths


class _RecordingServer:
    """Records what a generated add_*Servicer_to_server registers."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.registered[service] = handlers


@pytest.mark.parametrize(RPC_ARGNAMES, RPC_PARAMS)
def test_generated_server_registration_serves_the_path(
    path: str, pb2: Any, pb2_grpc: Any, service: str, method: str, request_type: str, response_type: str
) -> None:
    server = _RecordingServer()
    servicer = getattr(pb2_grpc, f"{service}Servicer")()
    getattr(pb2_grpc, f"add_{service}Servicer_to_server")(servicer, server)
    service_full_name = path.split("/")[1]
    assert set(server.registered) == {service_full_name}
    handler = server.registered[service_full_name][method]
    assert not handler.request_streaming and not handler.response_streaming
    assert handler.request_deserializer(b"").DESCRIPTOR.full_name == request_type
    (generic,) = server.generic
    assert generic.service(SimpleNamespace(method=path, invocation_metadata=())) is not None
    if path.startswith("/metric."):
        # The tempting wrong path (an istio.-prefixed package) must not be served.
        wrong = "/istio.mixer.adapter.metric.HandleMetricService/HandleMetric"
        assert generic.service(SimpleNamespace(method=wrong, invocation_metadata=())) is None


@pytest.mark.parametrize(
    ("module", "package"),
    [
        pytest.param(metric_pb2, "metric", id="metric"),
        pytest.param(type_pb2, "istio.policy.v1beta1", id="policy-type"),
        pytest.param(value_type_pb2, "istio.policy.v1beta1", id="policy-value-type"),
        pytest.param(extensions_pb2, "istio.mixer.adapter.model.v1beta1", id="adapter-extensions"),
        pytest.param(report_pb2, "istio.mixer.adapter.model.v1beta1", id="adapter-report"),
        pytest.param(infrastructure_backend_pb2, ADAPTER, id="adapter-infrastructure-backend"),
    ],
)
def test_proto_package(module: Any, package: str) -> None:
    assert module.DESCRIPTOR.package == package


def test_report_result_is_empty() -> None:
    """HandleMetric answers istio.mixer.adapter.model.v1beta1.ReportResult, an empty message."""
    desc = report_pb2.ReportResult.DESCRIPTOR
    assert desc.full_name == "istio.mixer.adapter.model.v1beta1.ReportResult"
    assert list(desc.fields) == []
    assert report_pb2.ReportResult().SerializeToString() == b""
    method = metric_pb2.DESCRIPTOR.services_by_name["HandleMetricService"].methods_by_name["HandleMetric"]
    assert method.output_type is desc


# --------------------------------------------------------------------------------------
# 7. Field numbers and types of every message in docs/mixer-wire.md sections 1.1, 1.2, 2 and 3.
# --------------------------------------------------------------------------------------

_SCALAR_NAMES = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_BOOL: "bool",
}


def _type_name(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return field.message_type.full_name
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.full_name
    return _SCALAR_NAMES.get(field.type, f"<wire type {field.type}>")


def describe(field: FieldDescriptor) -> str:
    """'string', 'repeated metric.InstanceMsg', 'map<string, istio.policy.v1beta1.Value>', ..."""
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        return f"map<{_type_name(entry.fields_by_name['key'])}, {_type_name(entry.fields_by_name['value'])}>"
    return ("repeated " if field.label == field.LABEL_REPEATED else "") + _type_name(field)


ANY = "google.protobuf.Any"
STATUS = "google.rpc.Status"
VALUE = f"{POLICY}.Value"
VALUE_TYPE = f"{POLICY}.ValueType"

FIELDS = [
    # ---- 1.1 InfrastructureBackend messages
    (f"{ADAPTER}.ValidateRequest", "adapter_config", 1, ANY),
    (f"{ADAPTER}.ValidateRequest", "inferred_types", 2, f"map<string, {ANY}>"),
    (f"{ADAPTER}.ValidateResponse", "status", 1, STATUS),
    (f"{ADAPTER}.CreateSessionRequest", "adapter_config", 1, ANY),
    (f"{ADAPTER}.CreateSessionRequest", "inferred_types", 2, f"map<string, {ANY}>"),
    (f"{ADAPTER}.CreateSessionResponse", "session_id", 1, "string"),
    (f"{ADAPTER}.CreateSessionResponse", "status", 2, STATUS),
    (f"{ADAPTER}.CloseSessionRequest", "session_id", 1, "string"),
    (f"{ADAPTER}.CloseSessionResponse", "status", 1, STATUS),
    # ---- 1.4 istio.policy.v1beta1
    (VALUE, "string_value", 1, "string"),
    (VALUE, "int64_value", 2, "int64"),
    (VALUE, "double_value", 3, "double"),
    (VALUE, "bool_value", 4, "bool"),
    (VALUE, "ip_address_value", 5, f"{POLICY}.IPAddress"),
    (VALUE, "timestamp_value", 6, f"{POLICY}.TimeStamp"),
    (VALUE, "duration_value", 7, f"{POLICY}.Duration"),
    (VALUE, "email_address_value", 8, f"{POLICY}.EmailAddress"),
    (VALUE, "dns_name_value", 9, f"{POLICY}.DNSName"),
    (VALUE, "uri_value", 10, f"{POLICY}.Uri"),
    (VALUE, "string_map_value", 11, f"{POLICY}.StringMap"),
    (f"{POLICY}.IPAddress", "value", 1, "bytes"),
    (f"{POLICY}.Duration", "value", 1, "google.protobuf.Duration"),
    (f"{POLICY}.TimeStamp", "value", 1, "google.protobuf.Timestamp"),
    (f"{POLICY}.DNSName", "value", 1, "string"),
    (f"{POLICY}.EmailAddress", "value", 1, "string"),
    (f"{POLICY}.Uri", "value", 1, "string"),
    (f"{POLICY}.StringMap", "value", 1, "map<string, string>"),
    # ---- 2.1 metric
    ("metric.HandleMetricRequest", "instances", 1, "repeated metric.InstanceMsg"),
    ("metric.HandleMetricRequest", "adapter_config", 2, ANY),
    ("metric.HandleMetricRequest", "dedup_id", 3, "string"),
    ("metric.InstanceMsg", "name", 72295727, "string"),
    ("metric.InstanceMsg", "value", 1, VALUE),
    ("metric.InstanceMsg", "dimensions", 2, f"map<string, {VALUE}>"),
    ("metric.InstanceMsg", "monitored_resource_type", 3, "string"),
    ("metric.InstanceMsg", "monitored_resource_dimensions", 4, f"map<string, {VALUE}>"),
    ("metric.Type", "value", 1, VALUE_TYPE),
    ("metric.Type", "dimensions", 2, f"map<string, {VALUE_TYPE}>"),
    ("metric.Type", "monitored_resource_dimensions", 4, f"map<string, {VALUE_TYPE}>"),
    ("metric.InstanceParam", "value", 1, "string"),
    ("metric.InstanceParam", "dimensions", 2, "map<string, string>"),
    ("metric.InstanceParam", "monitored_resource_type", 3, "string"),
    ("metric.InstanceParam", "monitored_resource_dimensions", 4, "map<string, string>"),
    # ---- types the hand encoder above relies on (well-known types, google.rpc)
    (STATUS, "code", 1, "int32"),
    (STATUS, "message", 2, "string"),
    (STATUS, "details", 3, f"repeated {ANY}"),
    (ANY, "type_url", 1, "string"),
    (ANY, "value", 2, "bytes"),
    ("google.protobuf.Timestamp", "seconds", 1, "int64"),
    ("google.protobuf.Timestamp", "nanos", 2, "int32"),
    ("google.protobuf.Duration", "seconds", 1, "int64"),
    ("google.protobuf.Duration", "nanos", 2, "int32"),
]

# Messages whose field list above is complete (1.2: ReportResult has no fields at all).
COMPLETE_MESSAGES = sorted({m for m, *_ in FIELDS} | {f"{ADAPTER}.ReportResult"})

_POOL = descriptor_pool.Default()
assert status_pb2.Status.DESCRIPTOR.full_name == STATUS  # loaded into the default pool


@pytest.mark.parametrize(
    ("message", "field", "number", "type_"),
    [pytest.param(*row, id=f"{row[0]}.{row[1]}={row[2]}") for row in FIELDS],
)
def test_field_number_and_type(message: str, field: str, number: int, type_: str) -> None:
    desc = _POOL.FindMessageTypeByName(message).fields_by_name[field]
    assert desc.number == number
    assert describe(desc) == type_


@pytest.mark.parametrize("message", COMPLETE_MESSAGES)
def test_message_has_no_fields_beyond_the_documented_ones(message: str) -> None:
    desc = _POOL.FindMessageTypeByName(message)
    expected = {(f, n) for m, f, n, _ in FIELDS if m == message}
    assert {(f.name, f.number) for f in desc.fields} == expected


def test_all_value_members_are_in_the_value_oneof() -> None:
    oneof = type_pb2.Value.DESCRIPTOR.oneofs_by_name["value"]
    assert [f.name for f in oneof.fields] == [f for m, f, _, _ in FIELDS if m == VALUE]
    assert [o.name for o in type_pb2.Value.DESCRIPTOR.oneofs] == ["value"]


def _map_fields() -> list[Any]:
    return [
        pytest.param(m, f, id=f"{m}.{f}") for m, f, _, t in FIELDS if t.startswith("map<")
    ]


@pytest.mark.parametrize(("message", "field"), _map_fields())
def test_map_entry_is_key_1_value_2(message: str, field: str) -> None:
    """The hand encoder writes map entries as {1 key, 2 value}; that is what the descriptor says."""
    entry = _POOL.FindMessageTypeByName(message).fields_by_name[field].message_type
    assert entry.GetOptions().map_entry
    assert {f.name: f.number for f in entry.fields} == {"key": 1, "value": 2}


ENUMS = [
    (
        f"{POLICY}.ValueType",
        {
            "VALUE_TYPE_UNSPECIFIED": 0,
            "STRING": 1,
            "INT64": 2,
            "DOUBLE": 3,
            "BOOL": 4,
            "TIMESTAMP": 5,
            "IP_ADDRESS": 6,
            "EMAIL_ADDRESS": 7,
            "URI": 8,
            "DNS_NAME": 9,
            "DURATION": 10,
            "STRING_MAP": 11,
        },
    ),
    (
        f"{ADAPTER}.TemplateVariety",
        {
            "TEMPLATE_VARIETY_CHECK": 0,
            "TEMPLATE_VARIETY_REPORT": 1,
            "TEMPLATE_VARIETY_QUOTA": 2,
            "TEMPLATE_VARIETY_ATTRIBUTE_GENERATOR": 3,
            "TEMPLATE_VARIETY_CHECK_WITH_OUTPUT": 4,
        },
    ),
]


@pytest.mark.parametrize(("enum", "values"), [pytest.param(e, v, id=e) for e, v in ENUMS])
def test_enum_values(enum: str, values: dict[str, int]) -> None:
    desc = _POOL.FindEnumTypeByName(enum)
    assert {v.name: v.number for v in desc.values} == values


@pytest.mark.parametrize(
    ("name", "number", "type_"),
    [
        pytest.param("template_variety", 72295727, f"{ADAPTER}.TemplateVariety", id="template_variety=72295727"),
        pytest.param("template_name", 72295888, "string", id="template_name=72295888"),
    ],
)
def test_file_option_extension(name: str, number: int, type_: str) -> None:
    ext = extensions_pb2.DESCRIPTOR.extensions_by_name[name]
    assert ext.full_name == f"{ADAPTER}.{name}"
    assert ext.number == number
    assert ext.containing_type.full_name == "google.protobuf.FileOptions"
    assert describe(ext) == type_


def test_metric_file_sets_template_options() -> None:
    options = metric_pb2.DESCRIPTOR.GetOptions()
    assert options.Extensions[extensions_pb2.template_variety] == extensions_pb2.TEMPLATE_VARIETY_REPORT
    assert options.Extensions[extensions_pb2.template_name] == "metric"
    # And as raw FileOptions bytes, encoded by hand.
    raw = options.SerializeToString()
    assert int_field(72295727, 1) in raw  # f8 d2 e4 93 02 01
    assert string_field(72295888, "metric") in raw


# --------------------------------------------------------------------------------------
# 8. Our own event schema: a round-trip sanity check.
# --------------------------------------------------------------------------------------


def test_usage_event_round_trip() -> None:
    event = usage_event_pb2.UsageEvent(
        event_id="e1", source=usage_event_pb2.MIXER_METRIC_ADAPTER, request_timestamp_ms=1_700_000_000_000,
        api_name="PizzaShackAPI", key_type=usage_event_pb2.PRODUCTION, response_code=200,
        response_latency_ms=12.5, error_code=-1, properties={"tenant": "carbon.super", "region": "eu"},
    )
    decoded = usage_event_pb2.UsageEvent.FromString(event.SerializeToString())
    assert decoded == event
    assert dict(decoded.properties) == {"tenant": "carbon.super", "region": "eu"}
