"""From Mixer metric instances to usage events, driven by a YAML mapping.

Instances are recognised by their short name, the part before ``.instance.``
(Mixer sends ``<name>.instance.<namespace>``). The shipped mapping
(``collector/mappings/default.yaml``) knows the WSO2 adapter's
``wso2-metrics`` instance and Istio's default ``requestcount``,
``requestduration``, ``requestsize`` and ``responsesize``; a deployment can
replace it with its own file.

How Istio's four instances combine: they describe the same request with the
same dimensions, so within one call the instances of a group are bucketed by
their dimensions, and the k-th instance of each kind in a bucket fills the
k-th event of that bucket. One request therefore gives one event carrying its
count, duration and sizes; two identical requests in one call give two events.
An instance kind that is not configured simply leaves its field at zero.

Event ids: the call id (a digest of the Mixer call: dedup id and instances)
plus the instance's index in the call, so a retried or replayed call yields the
same ids, while two Mixer replicas whose dedup counters collide still differ.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from google.protobuf.descriptor import FieldDescriptor

from collector.credentials import Caller, CredentialResolver, credential_hash
from collector.decode import Decoded, Instance
from collector.errors import InstanceRejected
from collector.values import ValueKindError, as_bool, as_duration_ms, as_int, as_text, as_timestamp_ms
from core.settings import SettingsError
from schemas.apim.usage.v1 import usage_event_pb2 as pb
from schemas.mixer.template.metric import template_handler_service_pb2 as metric_pb2

EVENT_FIELDS = {f.name: f for f in pb.UsageEvent.DESCRIPTOR.fields}
# Fields the collector derives itself; a mapping may not set them from dimensions.
RESERVED_FIELDS = {"event_id", "source", "source_instance", "collected_timestamp_ms", "credential_kind",
                   "credential_hash", "key_type", "application_id", "application_name", "application_owner",
                   "application_tier", "consumer_key", "subscription_tier", "properties"}
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
_INT32_FIELDS = {n for n, f in EVENT_FIELDS.items() if f.type == FieldDescriptor.TYPE_INT32}
_STRING_FIELDS = {n for n, f in EVENT_FIELDS.items() if f.type == FieldDescriptor.TYPE_STRING}


class RejectCode:
    """Stable reason codes for dead letters and the rejection counter."""

    UNKNOWN_INSTANCE = "UNKNOWN_INSTANCE"
    WRONG_VALUE_KIND = "WRONG_VALUE_KIND"
    VALUE_OUT_OF_RANGE = "VALUE_OUT_OF_RANGE"
    STRING_TOO_LONG = "STRING_TOO_LONG"
    TIMESTAMP_OUT_OF_RANGE = "TIMESTAMP_OUT_OF_RANGE"
    MISSING_API = "MISSING_API"
    NO_API = "NO_API"  # an access-log entry whose host and path match no API of the catalog
    MALFORMED_ENTRY = "MALFORMED_ENTRY"  # an access-log entry that is not valid protobuf (or invalid UTF-8)
    INTERNAL = "INTERNAL"  # the collector could not process an entry (a bug): kept as a dead letter, not lost


def short_name(instance_name: str) -> str:
    """``wso2-metrics.instance.istio-system`` -> ``wso2-metrics``."""
    head, sep, _ = instance_name.partition(".instance.")
    return head if sep else instance_name


def converter_for(field_name: str) -> Callable[[Any], Any]:
    """How a Value is read into a UsageEvent field, chosen by the field's type and name."""
    fd = EVENT_FIELDS[field_name]
    if field_name.endswith("_timestamp_ms"):
        return as_timestamp_ms
    if fd.type == FieldDescriptor.TYPE_DOUBLE:
        return as_duration_ms
    if fd.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32):
        return as_int
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return as_bool
    if fd.type == FieldDescriptor.TYPE_STRING:
        return as_text
    raise SettingsError(f"field {field_name!r} ({fd.type}) cannot be filled from a dimension")


@dataclass(frozen=True)
class InstanceMapping:
    """How one kind of metric instance fills an event (one entry of the mapping YAML)."""

    short_name: str
    group: str | None = None
    counts: bool = False  # value "count": each instance is one request
    value_field: str | None = None
    dimensions: tuple[tuple[str, tuple[str, ...]], ...] = ()
    properties: tuple[tuple[str, str], ...] = ()
    credential: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    event_time: str = "request_timestamp_ms"


_MAPPING_KEYS = {"group", "value", "dimensions", "properties", "credential", "defaults", "event_time"}


def _check_field(where: str, name: str) -> None:
    if name not in EVENT_FIELDS:
        raise SettingsError(f"{where}: {name!r} is not a UsageEvent field")
    if name in RESERVED_FIELDS:
        raise SettingsError(f"{where}: {name!r} is set by the collector and cannot be mapped")


def parse_mappings(doc: dict[str, Any], origin: str = "mapping") -> dict[str, InstanceMapping]:
    """Validate a mapping document and compile it.

    Raises:
        SettingsError: naming the file, the instance and the offending key.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), dict):
        raise SettingsError(f"{origin}: expected a mapping with an 'instances' section")
    groups = doc.get("groups") or {}
    out: dict[str, InstanceMapping] = {}
    for name, spec in doc["instances"].items():
        where = f"{origin}: instances.{name}"
        spec = dict(spec or {})
        group = spec.get("group")
        if group is not None:
            if group not in groups:
                raise SettingsError(f"{where}: unknown group {group!r}")
            spec = {**groups[group], **spec}
        unknown = set(spec) - _MAPPING_KEYS
        if unknown:
            raise SettingsError(f"{where}: unknown keys {sorted(unknown)}")
        value = spec.get("value")
        counts = value == "count"
        if value is not None and not counts:
            _check_field(f"{where}.value", value)
        dims = []
        for dim, targets in (spec.get("dimensions") or {}).items():
            fields_ = (targets,) if isinstance(targets, str) else tuple(targets)
            for f in fields_:
                _check_field(f"{where}.dimensions.{dim}", f)
                converter_for(f)
            dims.append((str(dim), fields_))
        defaults = dict(spec.get("defaults") or {})
        for f in defaults:
            _check_field(f"{where}.defaults", f)
        event_time = spec.get("event_time", "request_timestamp_ms")
        if event_time not in ("request_timestamp_ms", "collected"):
            raise SettingsError(f"{where}.event_time: 'request_timestamp_ms' or 'collected', not {event_time!r}")
        out[str(name)] = InstanceMapping(
            short_name=str(name), group=group, counts=counts, value_field=None if counts else value,
            dimensions=tuple(dims),
            properties=tuple((str(k), str(v)) for k, v in (spec.get("properties") or {}).items()),
            credential=spec.get("credential"), defaults=defaults, event_time=event_time,
        )
    return out


def load_mappings(path: str | Path | None = None) -> dict[str, InstanceMapping]:
    """The mapping file at ``path``, or the shipped default."""
    if path:
        p = Path(path)
        try:
            return parse_mappings(yaml.safe_load(p.read_text()), str(p))
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"mapping file {p}: {exc}") from exc
    text = resources.files("collector").joinpath("mappings/default.yaml").read_text()
    return parse_mappings(yaml.safe_load(text), "collector/mappings/default.yaml")


@dataclass(frozen=True)
class Limits:
    """What a well-formed instance looks like; anything else is dead-lettered with the reason."""

    max_string_bytes: int = 4096
    max_credential_bytes: int = 16384
    max_past_ms: int = 7 * 24 * 3600 * 1000
    max_future_ms: int = 5 * 60 * 1000
    max_duration_ms: float = 24 * 3600 * 1000.0  # a latency above a day is a broken clock, not a request


@dataclass(frozen=True)
class Privacy:
    """Optional minimisation of personal data before it leaves the collector."""

    user_ip: str = "keep"  # keep | truncate (IPv4 /24, IPv6 /48) | hash
    user_name: str = "keep"  # keep | hash

    def apply(self, event: dict[str, Any]) -> None:
        ip = event.get("user_ip")
        if ip and self.user_ip != "keep":
            event["user_ip"] = _truncate_ip(ip) if self.user_ip == "truncate" else "sha256:" + credential_hash(ip)
        user = event.get("user_name")
        if user and self.user_name == "hash":
            event["user_name"] = "sha256:" + credential_hash(user)


def _truncate_ip(text: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return ""
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


def _caller_fields(caller: Caller) -> dict[str, Any]:
    """The event fields of a caller."""
    out: dict[str, Any] = {
        "credential_kind": pb.CredentialKind.Value(caller.credential_kind),
        "credential_hash": caller.credential_hash,
        "application_id": caller.application_id,
        "application_name": caller.application_name,
        "application_owner": caller.application_owner,
        "application_tier": caller.application_tier,
        "consumer_key": caller.consumer_key,
        "subscription_tier": caller.subscription_tier,
        "user_name": caller.user_name,
        "user_tenant_domain": caller.user_tenant_domain,
    }
    if caller.key_type in ("PRODUCTION", "SANDBOX"):
        out["key_type"] = pb.KeyType.Value(caller.key_type)
    if caller.api_creator:
        out["api_creator"] = caller.api_creator
        out["api_creator_tenant_domain"] = caller.api_creator_tenant_domain
    return out


@dataclass
class Rejection:
    index: int
    instance: Instance
    code: str
    reason: str


@dataclass
class MappedCall:
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


class InstanceMapper:
    """Maps the instances of one HandleMetric call to event dicts (UsageEvent field names)."""

    def __init__(self, resolver: CredentialResolver, mappings: dict[str, InstanceMapping] | None = None, *,
                 limits: Limits = Limits(), privacy: Privacy = Privacy(),
                 clock: Callable[[], float] = time.time) -> None:
        self.resolver = resolver
        self.mappings = mappings if mappings is not None else load_mappings()
        self.limits = limits
        self.privacy = privacy
        self._clock = clock
        self._plans: dict[str, list[tuple[str, str, bool, bool]]] = {}
        self._minimise = privacy.user_ip != "keep" or privacy.user_name != "keep"
        self._caller_cache: dict[int, tuple[Caller, dict[str, Any]]] = {}
        self._converters = {name: converter_for(name) for name in EVENT_FIELDS
                            if name not in RESERVED_FIELDS and EVENT_FIELDS[name].type != FieldDescriptor.TYPE_ENUM
                            and EVENT_FIELDS[name].type != FieldDescriptor.TYPE_MESSAGE}

    # -- one instance -----------------------------------------------------------
    def _convert(self, field_name: str, value: Any) -> Any:
        try:
            out = self._converters[field_name](value)
        except ValueKindError as exc:
            raise InstanceRejected(RejectCode.WRONG_VALUE_KIND, f"{field_name}: {exc}") from exc
        t = type(out)
        if t is str:
            if len(out) > self.limits.max_string_bytes:
                raise InstanceRejected(RejectCode.STRING_TOO_LONG,
                                       f"{field_name}: {len(out)} characters, limit {self.limits.max_string_bytes}")
        elif t is int or t is float:
            if out < 0:
                raise InstanceRejected(RejectCode.VALUE_OUT_OF_RANGE, f"{field_name}: negative value {out}")
            if out > (INT32_MAX if field_name in _INT32_FIELDS else INT64_MAX):
                raise InstanceRejected(RejectCode.VALUE_OUT_OF_RANGE, f"{field_name}: {out} is too large")
            if t is float and out > self.limits.max_duration_ms and field_name.endswith("_latency_ms"):
                raise InstanceRejected(RejectCode.VALUE_OUT_OF_RANGE,
                                       f"{field_name}: {out} ms is above the limit of {self.limits.max_duration_ms} ms")
        return out

    def _plan(self, mapping: InstanceMapping) -> list[tuple[str, str, bool, bool]]:
        """(dimension, field, string field?, keep an empty string?) per mapped target, computed once."""
        plan = self._plans.get(mapping.short_name)
        if plan is None:
            plan = self._plans[mapping.short_name] = [
                (dim, target, target in _STRING_FIELDS, target not in mapping.defaults)
                for dim, targets in mapping.dimensions for target in targets]
        return plan

    def _fields(self, mapping: InstanceMapping, value: Any, dims: dict[str, Any]) -> dict[str, Any]:
        event: dict[str, Any] = dict(mapping.defaults)
        max_len = self.limits.max_string_bytes
        for dim, target, string_field, keep_empty in self._plan(mapping):
            x = dims.get(dim)
            if x is None:
                continue
            # Fast path: a string dimension into a string field needs no conversion.
            if string_field and type(x) is str and len(x) <= max_len:
                if x or keep_empty:
                    event[target] = x
                continue
            v = self._convert(target, x)
            if v != "" or keep_empty:
                event[target] = v
        if mapping.properties:
            props = {}
            for dim, key in mapping.properties:
                if (x := dims.get(dim)) is not None:
                    try:
                        props[key] = as_text(x)
                    except ValueKindError as exc:
                        raise InstanceRejected(RejectCode.WRONG_VALUE_KIND, f"{dim}: {exc}") from exc
            if props:
                event["properties"] = props
        if mapping.value_field and value is not None:
            event[mapping.value_field] = self._convert(mapping.value_field, value)
        return event

    def _credential(self, mapping: InstanceMapping, dims: dict[str, Any]) -> str:
        if not mapping.credential:
            return ""
        x = dims.get(mapping.credential)
        if x is None:
            return ""
        try:
            raw = as_text(x)
        except ValueKindError as exc:
            raise InstanceRejected(RejectCode.WRONG_VALUE_KIND, f"credential: {exc}") from exc
        if len(raw) > self.limits.max_credential_bytes:
            raise InstanceRejected(RejectCode.STRING_TOO_LONG,
                                   f"credential: {len(raw)} characters, limit {self.limits.max_credential_bytes}")
        return raw

    def _finish(self, event: dict[str, Any], mapping: InstanceMapping, credential: str, now_ms: int) -> None:
        if not event.get("api_name"):  # usage no API owns cannot be attributed, billed or throttled
            raise InstanceRejected(RejectCode.MISSING_API, "the instance names no API (api_name is absent or empty)")
        if mapping.event_time == "collected" or not event.get("request_timestamp_ms"):
            event["request_timestamp_ms"] = now_ms
        ts = event["request_timestamp_ms"]
        if ts < now_ms - self.limits.max_past_ms or ts > now_ms + self.limits.max_future_ms:
            raise InstanceRejected(RejectCode.TIMESTAMP_OUT_OF_RANGE,
                                   f"request time {ts} ms is outside [now - {self.limits.max_past_ms} ms, "
                                   f"now + {self.limits.max_future_ms} ms]")
        end = event.get("response_timestamp_ms", 0)
        if end and "response_latency_ms" not in event:
            if end < ts:
                raise InstanceRejected(RejectCode.VALUE_OUT_OF_RANGE, "response time is before request time")
            event["response_latency_ms"] = float(end - ts)
            event.setdefault("backend_latency_ms", float(end - ts))
        event.update(self._caller_fields(self.resolver.resolve(credential, event.get("api_name", ""),
                                                               event.get("api_version", ""), at_s=ts / 1000.0)))
        code = event.get("response_code", 0)
        if code == 429:
            event["throttled_out"] = True
            event["throttled_out_reason"] = "RATE_LIMITED"
        elif code >= 500:
            event["fault"] = True
            event["error_code"] = code
            event.setdefault("error_message", "Error")
        if self._minimise:
            self.privacy.apply(event)

    def _caller_fields(self, caller: Caller) -> dict[str, Any]:
        """The caller's event fields, cached per caller object: the resolver hands out the
        same object for every request of one credential and API (read-only result)."""
        hit = self._caller_cache.get(id(caller))
        if hit is not None and hit[0] is caller:
            return hit[1]
        fields_ = _caller_fields(caller)
        if len(self._caller_cache) > 65536:
            self._caller_cache.clear()
        self._caller_cache[id(caller)] = (caller, fields_)
        return fields_

    # -- one call ---------------------------------------------------------------
    def map_call(self, decoded: Decoded, call_id: str = "") -> MappedCall:
        """All instances of one decoded call -> events (with ``call_index``) and rejections."""
        out = MappedCall()
        now_ms = int(self._clock() * 1000)
        # (group, dimensions fingerprint) -> [events], and per kind how many seen
        buckets: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        seen: dict[tuple[str, Any, str], int] = {}
        grouped: list[tuple[int, dict[str, Any], InstanceMapping, str]] = []
        mappings = self.mappings
        for index, instance in enumerate(decoded[2]):
            name, value, dims = instance[0], instance[1], instance[2]
            mapping = mappings.get(name.partition(".instance.")[0] if ".instance." in name else name)
            try:
                if mapping is None:
                    raise InstanceRejected(RejectCode.UNKNOWN_INSTANCE,
                                           f"unknown instance {name[:200]!r}: no mapping for "
                                           f"{short_name(name)[:200]!r}")
                fields_ = self._fields(mapping, value, dims)
                credential = self._credential(mapping, dims)
                if mapping.group is None:
                    fields_["call_index"] = index
                    fields_["source_instance"] = name
                    self._finish(fields_, mapping, credential, now_ms)
                    out.events.append(fields_)
                    continue
                fingerprint = (mapping.group, _fingerprint(dims))
                k = seen.get((*fingerprint, mapping.short_name), 0)
                seen[(*fingerprint, mapping.short_name)] = k + 1
                events = buckets.setdefault(fingerprint, [])
                if k == len(events):
                    fields_["call_index"] = index
                    fields_["source_instance"] = name
                    events.append(fields_)
                    grouped.append((index, fields_, mapping, credential))
                else:
                    for key, v in fields_.items():
                        events[k].setdefault(key, v)
                    if mapping.value_field and mapping.value_field in fields_:
                        events[k][mapping.value_field] = fields_[mapping.value_field]
            except InstanceRejected as exc:
                out.rejected.append(Rejection(index, instance, exc.code, str(exc)))
        for index, event, mapping, credential in grouped:
            try:
                self._finish(event, mapping, credential, now_ms)
                out.events.append(event)
            except InstanceRejected as exc:
                out.rejected.append(Rejection(index, decoded[2][index], exc.code, str(exc)))
        if grouped:
            out.events.sort(key=lambda e: e["call_index"])
        return out


def _fingerprint(dims: dict[str, Any]) -> tuple[Any, ...]:
    """A hashable identity of a dimension set (string maps made hashable)."""
    return tuple(sorted((k, tuple(sorted(v[1].items())) if type(v) is tuple and v[0] == "map" else v)
                        for k, v in dims.items()))


def redact_instance(inst: metric_pb2.InstanceMsg, credential_dims: set[str]) -> bytes:
    """The instance for a dead letter: credential dimensions replaced by their hash."""
    copy = metric_pb2.InstanceMsg()
    copy.CopyFrom(inst)
    for dim in credential_dims:
        if dim in copy.dimensions:
            raw = copy.dimensions[dim].SerializeToString()
            copy.dimensions[dim].Clear()
            copy.dimensions[dim].string_value = "sha256:" + hashlib.sha256(raw).hexdigest()[:32]
    return copy.SerializeToString()


def event_to_proto(event: dict[str, Any], call_id: str) -> pb.UsageEvent:
    """One event dict as a UsageEvent row (for tests, dead letters and tools)."""
    fields_ = {k: v for k, v in event.items() if k in EVENT_FIELDS and k != "properties"}
    msg = pb.UsageEvent(**fields_)
    msg.event_id = f"{call_id}/{event['call_index']}"
    msg.source = pb.MIXER_METRIC_ADAPTER
    for k, v in (event.get("properties") or {}).items():
        msg.properties[k] = v
    return msg


def properties_json(event: dict[str, Any]) -> str:
    props = event.get("properties")
    return json.dumps(props, separators=(",", ":"), sort_keys=True) if props else ""


__all__ = [
    "EVENT_FIELDS", "InstanceMapper", "InstanceMapping", "InstanceRejected", "Limits", "MappedCall", "Privacy",
    "RejectCode", "Rejection", "event_to_proto", "load_mappings", "parse_mappings",
    "properties_json", "redact_instance", "short_name",
]
