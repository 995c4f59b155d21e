"""Decoding a HandleMetric call into plain Python values.

The neutral form every later step works on: ``(dedup_id, adapter_config,
instances)`` where each instance is ``(name, value, dimensions, start, end)``,
``raw[start:end]`` being the instance's own encoding (-1, -1 from the reference
decoder), and a Value becomes

- ``str`` for string, DNS name, email address and URI values,
- ``int`` for int64, ``float`` for double, ``bool`` for bool,
- ``("ip", raw bytes)``, ``("ts", epoch ms)``, ``("dur", ms as float)``,
  ``("map", dict)`` for the other kinds,
- ``None`` when no kind is set (absent or empty).

The compiled decoder (collector/_wire.pyx) produces it straight from the
bytes; this module's protobuf-runtime decoder is the reference and the
fallback for anything the compiled one declines.
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf.message import DecodeError

from collector import _wire  # the compiled fast path: setup.py must build it
from collector.errors import MalformedCall  # raised here; defined with the collector's other errors
from schemas.mixer.template.metric import template_handler_service_pb2 as metric_pb2
from schemas.policy.v1beta1 import type_pb2

log = logging.getLogger(__name__)


Instance = tuple[str, Any, dict[str, Any], int, int]
Decoded = tuple[str, bytes | None, list[Instance]]


def value_to_native(value: type_pb2.Value) -> Any:
    """One Value in the neutral form."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("string_value", "int64_value", "double_value", "bool_value"):
        return getattr(value, kind)
    if kind in ("email_address_value", "dns_name_value", "uri_value"):
        return getattr(value, kind).value
    if kind == "ip_address_value":
        return ("ip", value.ip_address_value.value)
    if kind == "timestamp_value":
        ts = value.timestamp_value.value
        return ("ts", ts.seconds * 1000 + ts.nanos // 1_000_000)
    if kind == "duration_value":
        d = value.duration_value.value
        return ("dur", d.seconds * 1000.0 + d.nanos / 1_000_000.0)
    return ("map", dict(value.string_map_value.value))


def decode_reference(raw: bytes) -> Decoded:
    """Decode with the protobuf runtime (slower, and the definition of correct)."""
    try:
        request = metric_pb2.HandleMetricRequest.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MalformedCall(f"malformed HandleMetricRequest (not protobuf, or invalid UTF-8): {str(exc)[:200]}") \
            from exc
    instances: list[Instance] = []
    for inst in request.instances:
        dims = {k: value_to_native(v) for k, v in inst.dimensions.items()}
        value = value_to_native(inst.value) if inst.HasField("value") else None
        instances.append((inst.name, value, dims, -1, -1))  # no span: instance_message re-parses
    config = request.adapter_config.SerializeToString() if request.HasField("adapter_config") else None
    return request.dedup_id, config, instances


def decode_call(raw: bytes) -> Decoded:
    """The compiled decoder when it handles the input, else the reference.

    Raises:
        MalformedCall: neither decoder accepts the bytes.
    """
    try:
        return _wire.decode_call(raw)
    except _wire.Unsupported:
        return decode_reference(raw)


def instance_message(raw: bytes, instance: Instance, index: int) -> metric_pb2.InstanceMsg:
    """The instance as a protobuf message (for dead letters; rare, so the slow way)."""
    _, _, _, start, end = instance
    if start >= 0:
        return metric_pb2.InstanceMsg.FromString(raw[start:end])
    return metric_pb2.HandleMetricRequest.FromString(raw).instances[index]
