"""A minimal protobuf encoder, independent of the generated stubs, for the byte-level wire tests.

The expected bytes of tests/unit/test_wire_compat.py (Mixer) and
tests/unit/test_envoy_als_wire.py (Envoy ALS) are built with these, never with
the ``*_pb2`` classes under test.
"""

from __future__ import annotations

import struct

WT_VARINT, WT_I64, WT_LEN, WT_I32 = 0, 1, 2, 5


def varint(n: int) -> bytes:
    """Base-128 varint; negative numbers as their 64-bit two's complement (10 bytes)."""
    if n < 0:
        n += 1 << 64
    assert 0 <= n < 1 << 64, n
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def int_field(field: int, n: int) -> bytes:
    """int32 / int64 / bool / enum: wire type 0."""
    return key(field, WT_VARINT) + varint(n)


def double_field(field: int, x: float) -> bytes:
    """double: wire type 1, 8 bytes little-endian IEEE 754."""
    return key(field, WT_I64) + struct.pack("<d", x)


def fixed32_field(field: int, n: int) -> bytes:
    return key(field, WT_I32) + struct.pack("<I", n)


def bytes_field(field: int, data: bytes) -> bytes:
    """bytes / string / sub-message: wire type 2, varint length, payload."""
    return key(field, WT_LEN) + varint(len(data)) + data


def string_field(field: int, s: str) -> bytes:
    return bytes_field(field, s.encode("utf-8"))


def message_field(field: int, *parts: bytes) -> bytes:
    return bytes_field(field, b"".join(parts))


# ---- well-known types, by hand ------------------------------------------------------


def h_seconds_nanos(seconds: int, nanos: int) -> bytes:
    """google.protobuf.Timestamp / Duration body {1 seconds int64, 2 nanos int32}; proto3 omits zeros."""
    return (int_field(1, seconds) if seconds else b"") + (int_field(2, nanos) if nanos else b"")


def h_any(type_url: str, value: bytes) -> bytes:
    """google.protobuf.Any body {1 type_url, 2 value}."""
    return string_field(1, type_url) + bytes_field(2, value)
