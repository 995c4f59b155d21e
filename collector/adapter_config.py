"""Validating what Mixer tells the adapter about its configuration.

Mixer calls ``Validate`` (and ``CreateSession`` for session-based set-ups) with
the handler's params and the inferred types of the instances it will send.
Mistakes are reported then, at configuration time, rather than as dead
letters at run time: an instance with no mapping, or a dimension whose type
cannot fill the event field it is mapped to.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from collector.mapping import EVENT_FIELDS, InstanceMapping, short_name
from schemas.apim.collector.v1 import adapter_config_pb2
from schemas.mixer.template.metric import template_handler_service_pb2 as metric_pb2
from schemas.policy.v1beta1 import value_type_pb2 as vt

PARAMS_TYPE_URL = "type.googleapis.com/apim.collector.v1.Params"
# The WSO2 istio-apim adapter's params: accepted so its handler can point here unchanged.
WSO2_PARAMS_TYPE_URL = "type.googleapis.com/adapter.wso2.config.Params"

_STRINGISH: set[int] = {vt.STRING, vt.IP_ADDRESS, vt.DNS_NAME, vt.EMAIL_ADDRESS, vt.URI, vt.INT64, vt.DOUBLE, vt.BOOL}


def _accepted_types(field_name: str) -> set[int]:
    fd = EVENT_FIELDS[field_name]
    if field_name.endswith("_timestamp_ms"):
        return {vt.TIMESTAMP, vt.INT64}
    if fd.type == fd.TYPE_DOUBLE:
        return {vt.DURATION, vt.INT64, vt.DOUBLE}
    if fd.type in (fd.TYPE_INT64, fd.TYPE_INT32):
        return {vt.INT64, vt.STRING, vt.DOUBLE}
    if fd.type == fd.TYPE_BOOL:
        return {vt.BOOL, vt.STRING}
    return _STRINGISH


def _type_name(kind: int) -> str:
    """ValueType name; proto3 enums are open, so an unknown number is shown as a number."""
    try:
        return vt.ValueType.Name(kind)
    except ValueError:
        return f"unknown value type {kind}"


def decode_params(config: any_pb2.Any) -> adapter_config_pb2.Params:
    """The handler params carried in ``adapter_config``.

    Raises:
        ValueError: an unknown params type, or bytes that do not decode.
    """
    params = adapter_config_pb2.Params()
    if not config.type_url or config.type_url == WSO2_PARAMS_TYPE_URL:
        return params
    if config.type_url != PARAMS_TYPE_URL:
        raise ValueError(f"adapter_config has type {config.type_url[:200]!r}; expected {PARAMS_TYPE_URL}")
    try:
        params.ParseFromString(config.value)
    except DecodeError as exc:
        raise ValueError(f"adapter_config does not decode as apim.collector.v1.Params: {exc}") from exc
    return params


def validate(config: any_pb2.Any, inferred_types: dict[str, any_pb2.Any],
             mappings: dict[str, InstanceMapping]) -> list[str]:
    """Every problem found, as sentences; an empty list means valid."""
    problems: list[str] = []
    try:
        params = decode_params(config)
    except ValueError as exc:
        return [str(exc)]
    for name in params.instances:
        if short_name(name) not in mappings:
            problems.append(f"params.instances: no mapping for instance {name!r}")
    for name, packed in sorted(inferred_types.items()):
        mapping = mappings.get(short_name(name))
        if mapping is None:
            problems.append(f"instance {name!r}: no mapping for {short_name(name)!r}; "
                            f"known: {sorted(mappings)}")
            continue
        inferred = metric_pb2.Type()
        try:
            inferred.ParseFromString(packed.value)
        except DecodeError:
            problems.append(f"instance {name!r}: inferred type does not decode as metric.Type")
            continue
        for dim, targets in mapping.dimensions:
            if dim not in inferred.dimensions:
                continue
            kind = inferred.dimensions[dim]
            for target in targets:
                if kind not in _accepted_types(target):
                    problems.append(f"instance {name!r}: dimension {dim!r} is {_type_name(kind)}, "
                                    f"which cannot fill {target}")
        if mapping.value_field and inferred.value not in (vt.VALUE_TYPE_UNSPECIFIED,) and \
                inferred.value not in _accepted_types(mapping.value_field):
            problems.append(f"instance {name!r}: value is {_type_name(inferred.value)}, "
                            f"which cannot fill {mapping.value_field}")
    return problems
