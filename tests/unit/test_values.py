"""Every istio.policy.v1beta1.Value kind reads into the right Python value."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from collector import values
from schemas.policy.v1beta1 import type_pb2 as t


def _v(**kw) -> t.Value:  # type: ignore[no-untyped-def]
    return t.Value(**kw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (_v(string_value="GET"), "GET"),
        (_v(int64_value=-42), -42),
        (_v(double_value=2.5), 2.5),
        (_v(bool_value=True), True),
        (_v(ip_address_value=t.IPAddress(value=bytes([10, 1, 2, 3]))), "10.1.2.3"),
        (_v(ip_address_value=t.IPAddress(value=bytes(15) + b"\x01")), "::1"),
        (_v(ip_address_value=t.IPAddress(value=bytes(10) + b"\xff\xff" + bytes([192, 168, 0, 9]))), "192.168.0.9"),
        (_v(timestamp_value=t.TimeStamp(value=timestamp_pb2.Timestamp(seconds=1700000000, nanos=123456789))),
         1700000000123),
        (_v(duration_value=t.Duration(value=duration_pb2.Duration(seconds=1, nanos=500_000_000))), 1500.0),
        (_v(email_address_value=t.EmailAddress(value="a@b.c")), "a@b.c"),
        (_v(dns_name_value=t.DNSName(value="svc.cluster.local")), "svc.cluster.local"),
        (_v(uri_value=t.Uri(value="https://x/y")), "https://x/y"),
        (_v(string_map_value=t.StringMap(value={"k": "v"})), {"k": "v"}),
        (_v(), None),
    ],
    ids=["string", "int64", "double", "bool", "ipv4", "ipv6", "ipv4-mapped", "timestamp", "duration", "email",
         "dns", "uri", "string_map", "unset"],
)
def test_to_python(value: t.Value, expected: object) -> None:
    assert values.to_python(value) == expected


def test_empty_submessage_is_accepted() -> None:
    """gogo nullable=false senders emit empty sub-messages; they read as zero values."""
    v = t.Value()
    v.timestamp_value.SetInParent()
    assert values.to_python(v) == 0
    assert values.as_timestamp_ms(v) == 0


def test_bad_ip_length_is_an_error() -> None:
    with pytest.raises(values.ValueKindError, match="4 or 16 bytes"):
        values.to_python(_v(ip_address_value=t.IPAddress(value=b"\x01\x02\x03")))


@pytest.mark.parametrize(
    ("fn", "value", "message"),
    [
        (values.as_int, _v(string_value="abc"), "not an integer"),
        (values.as_int, _v(bool_value=True), "bool"),
        (values.as_int, _v(double_value=float("nan")), "finite"),
        (values.as_timestamp_ms, _v(string_value="yesterday"), "cannot be used as a timestamp"),
        (values.as_str, _v(string_map_value=t.StringMap(value={"a": "b"})), "string map"),
    ],
)
def test_wrong_kind_is_named(fn, value: t.Value, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(values.ValueKindError, match=message):
        fn(value)


def test_as_int_accepts_numeric_strings_like_mixer_constants() -> None:
    assert values.as_int(_v(string_value="1")) == 1
    assert values.as_int(_v(int64_value=7)) == 7
