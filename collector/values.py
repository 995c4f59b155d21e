"""Reading decoded Values (the neutral form of collector/decode.py) into event fields.

Which reading applies is chosen by the event field's type (collector.mapping):
string fields take any scalar kind (IP addresses as text), integer fields an
int64 or a numeric string (Mixer constants such as "1"), time fields a
timestamp or epoch-ms int64, latency fields a duration or a number of ms,
bool fields a bool. Anything else is a :class:`ValueKindError`, which
dead-letters the instance with the reason.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from typing import Any

from collector.errors import ValueKindError  # raised here; defined with the collector's other errors


def kind_name(x: Any) -> str:
    """The Value kind of a decoded value, for error messages."""
    if x is None:
        return "unset"
    if isinstance(x, tuple):
        return {"ip": "ip_address", "ts": "timestamp", "dur": "duration", "map": "string_map"}[x[0]]
    return {str: "string", int: "int64", float: "double", bool: "bool"}.get(type(x), type(x).__name__)


def ip_text(raw: bytes) -> str:
    """Textual form of a raw IP (4 or 16 bytes; IPv4-mapped IPv6 shown as IPv4)."""
    if not raw:
        return ""
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)  # C; ipaddress costs ~10x more per event
    if len(raw) == 16:
        addr = ipaddress.IPv6Address(raw)
        return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)
    raise ValueKindError(f"an IP address has 4 or 16 bytes, got {len(raw)}")


def as_text(x: Any) -> str:
    t = type(x)
    if t is str:
        return x
    if x is None:
        return ""
    if t is bool:
        return "true" if x else "false"
    if t is int or t is float:
        return str(x)
    if t is tuple:
        kind, payload = x
        if kind == "ip":
            return ip_text(payload)
        if kind in ("ts", "dur"):
            return str(payload)
    raise ValueKindError(f"a {kind_name(x)} cannot be used as a string")


def as_int(x: Any) -> int:
    t = type(x)
    if t is int:
        return x
    if x is None:
        return 0
    if t is float:
        if not math.isfinite(x):
            raise ValueKindError(f"not a finite number: {x}")
        return int(x)
    if t is str:
        try:
            return int(x.strip() or 0)
        except ValueError as exc:
            raise ValueKindError(f"not an integer: {x[:40]!r}") from exc
    raise ValueKindError(f"a {kind_name(x)} cannot be used as an integer")


def as_timestamp_ms(x: Any) -> int:
    t = type(x)
    if t is tuple and x[0] == "ts":
        return x[1]
    if t is int:
        return x
    if x is None:
        return 0
    raise ValueKindError(f"a {kind_name(x)} cannot be used as a timestamp")


def as_duration_ms(x: Any) -> float:
    t = type(x)
    if t is tuple and x[0] == "dur":
        return x[1]
    if t is int or t is float:
        if not math.isfinite(x):
            raise ValueKindError(f"not a finite number: {x}")
        return float(x)
    if x is None:
        return 0.0
    if t is str:  # OpenTelemetry access logs carry Envoy's %DURATION% as text
        try:
            out = float(x.strip() or 0)
        except ValueError as exc:
            raise ValueKindError(f"not a number of milliseconds: {x[:40]!r}") from exc
        if not math.isfinite(out):
            raise ValueKindError(f"not a finite number: {x[:40]!r}")
        return out
    raise ValueKindError(f"a {kind_name(x)} cannot be used as a duration")


def as_bool(x: Any) -> bool:
    if type(x) is bool:
        return x
    if x is None:
        return False
    if type(x) is str and x.lower() in ("true", "false"):
        return x.lower() == "true"
    raise ValueKindError(f"a {kind_name(x)} cannot be used as a bool")
