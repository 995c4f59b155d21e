"""Reading ``istio.policy.v1beta1.Value`` into Python values, every kind.

Mixer fills a Value from the expression's type (wire.md 1.4); an adapter must
accept each kind, and accept a present-but-empty sub-message (gogo
``nullable=false`` senders always emit one).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from schemas.policy.v1beta1 import type_pb2


class ValueKindError(ValueError):
    """A Value does not hold the kind a field needs."""


def to_python(value: type_pb2.Value) -> Any:
    """The Python value of a Value: str, int, float, bool, str (IP), int ms (timestamp),
    float ms (duration), or dict (string map). ``None`` when no kind is set."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("string_value", "int64_value", "double_value", "bool_value"):
        return getattr(value, kind)
    if kind == "ip_address_value":
        return ip_text(value.ip_address_value.value)
    if kind == "timestamp_value":
        ts = value.timestamp_value.value
        return ts.seconds * 1000 + ts.nanos // 1_000_000
    if kind == "duration_value":
        d = value.duration_value.value
        return d.seconds * 1000.0 + d.nanos / 1_000_000.0
    if kind in ("email_address_value", "dns_name_value", "uri_value"):
        return getattr(value, kind).value
    if kind == "string_map_value":
        return dict(value.string_map_value.value)
    raise ValueKindError(f"unknown Value kind {kind}")


def ip_text(raw: bytes) -> str:
    """Textual form of a raw IP (4 or 16 bytes; IPv4-mapped IPv6 shown as IPv4)."""
    if not raw:
        return ""
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        addr = ipaddress.IPv6Address(raw)
        return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)
    raise ValueKindError(f"an IP address has 4 or 16 bytes, got {len(raw)}")


def as_str(value: type_pb2.Value | None) -> str:
    """A string-ish field: strings, DNS names, emails, URIs and IPs as text; numbers formatted."""
    if value is None:
        return ""
    v = to_python(value)
    if v is None:
        return ""
    if isinstance(v, dict):
        raise ValueKindError("a string map cannot be used as a string")
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def as_int(value: type_pb2.Value | None) -> int:
    """An integer field: int64, or a string/double holding an integer (Mixer expressions like "1")."""
    if value is None:
        return 0
    v = to_python(value)
    if v is None:
        return 0
    if isinstance(v, bool):
        raise ValueKindError("a bool cannot be used as an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueKindError(f"not a finite number: {v}")
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip() or 0)
        except ValueError as exc:
            raise ValueKindError(f"not an integer: {v[:40]!r}") from exc
    raise ValueKindError(f"{value.WhichOneof('value')} cannot be used as an integer")


def as_timestamp_ms(value: type_pb2.Value | None) -> int:
    """A time field: a timestamp Value, or an int64 of epoch milliseconds."""
    if value is None:
        return 0
    kind = value.WhichOneof("value")
    if kind in ("timestamp_value", "int64_value"):
        return int(to_python(value))
    if kind is None:
        return 0
    raise ValueKindError(f"{kind} cannot be used as a timestamp")


def as_duration_ms(value: type_pb2.Value | None) -> float:
    """A latency field: a duration Value, or a number of milliseconds."""
    if value is None:
        return 0.0
    kind = value.WhichOneof("value")
    if kind in ("duration_value", "int64_value", "double_value"):
        return float(to_python(value))
    if kind is None:
        return 0.0
    raise ValueKindError(f"{kind} cannot be used as a duration")
