"""From Mixer metric instances to ``apim.usage.v1.UsageEvent``.

Instances are recognised by their short name, the part before ``.instance.``
(Mixer sends ``<name>.instance.<namespace>``), so the WSO2 adapter's
``wso2-metrics`` instance maps out of the box in any namespace.

Event ids are deterministic: a hash of Mixer's ``dedup_id``, the instance's
index in the call and the instance's own bytes. A Mixer retry carries the same
dedup id and the same instances, so it yields the same ids and the pipeline
counts it once; two Mixer replicas whose dedup counters collide still differ in
content, so their events never merge.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collector.credentials import Caller, CredentialResolver
from collector.values import ValueKindError, as_duration_ms, as_int, as_str, as_timestamp_ms
from schemas.apim.usage.v1 import usage_event_pb2 as pb
from schemas.mixer.template.metric import template_handler_service_pb2 as metric_pb2


class InstanceRejected(ValueError):
    """One instance cannot become an event; the reason goes to the dead-letter topic."""


def short_name(instance_name: str) -> str:
    """``wso2-metrics.instance.istio-system`` -> ``wso2-metrics``."""
    head, sep, _ = instance_name.partition(".instance.")
    return head if sep else instance_name


Converter = Callable[..., object]

# The 16 dimensions of the WSO2 adapter's metric instance (domain.md 1.4), by
# the UsageEvent field each one fills and how its Value is read.
WSO2_DIMENSIONS: dict[str, tuple[str, Converter]] = {
    "api_context": ("api_context", as_str),
    "api_name": ("api_name", as_str),
    "api_version": ("api_version", as_str),
    "resource_path": ("api_resource_path", as_str),
    "resource_path_template": ("api_resource_template", as_str),
    "request_method": ("api_method", as_str),
    "user_ip": ("user_ip", as_str),
    "user_agent": ("user_agent", as_str),
    "request_timestamp": ("request_timestamp_ms", as_timestamp_ms),
    "response_timestamp": ("response_timestamp_ms", as_timestamp_ms),
    "response_size": ("response_size_bytes", as_int),
    "api_protocol": ("protocol", as_str),
    "response_code": ("response_code", as_int),
    "destination": ("destination", as_str),
    "request_host": ("api_hostname", as_str),
}
AUTH_DIMENSION = "auth_header_value"


@dataclass(frozen=True)
class InstanceMapping:
    """How one kind of metric instance fills a UsageEvent."""

    short_name: str
    value_field: str | None
    dimensions: dict[str, tuple[str, Converter]]
    auth_dimension: str | None = AUTH_DIMENSION
    defaults: dict[str, object] = field(default_factory=dict)


WSO2_METRICS = InstanceMapping(
    short_name="wso2-metrics",
    value_field="request_size_bytes",
    dimensions=WSO2_DIMENSIONS,
    defaults={"protocol": "http", "gateway_type": "ISTIO"},
)


def _event_id(dedup_id: str, index: int, instance: metric_pb2.InstanceMsg) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(dedup_id.encode("utf-8", "surrogatepass"))
    h.update(index.to_bytes(4, "big"))
    h.update(instance.SerializeToString(deterministic=True))
    return h.hexdigest()


def _apply_caller(event: pb.UsageEvent, caller: Caller) -> None:
    event.credential_kind = pb.CredentialKind.Value(caller.credential_kind)
    event.credential_hash = caller.credential_hash
    event.application_id = caller.application_id
    event.application_name = caller.application_name
    event.application_owner = caller.application_owner
    event.application_tier = caller.application_tier
    event.consumer_key = caller.consumer_key
    if caller.key_type in ("PRODUCTION", "SANDBOX"):
        event.key_type = pb.KeyType.Value(caller.key_type)
    event.subscription_tier = caller.subscription_tier
    event.user_name = caller.user_name
    event.user_tenant_domain = caller.user_tenant_domain
    if caller.api_creator:
        event.api_creator = caller.api_creator
        event.api_creator_tenant_domain = caller.api_creator_tenant_domain


class InstanceMapper:
    """Maps the instances of one HandleMetric call; knows every configured instance kind."""

    def __init__(self, resolver: CredentialResolver, mappings: list[InstanceMapping] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.resolver = resolver
        self.mappings = {m.short_name: m for m in (mappings or [WSO2_METRICS])}
        self._clock = clock

    def map_instance(self, instance: metric_pb2.InstanceMsg, *, dedup_id: str, index: int,
                     collected_ms: int | None = None) -> pb.UsageEvent:
        """One instance -> one event.

        Raises:
            InstanceRejected: unknown instance name or a dimension of the wrong kind.
        """
        mapping = self.mappings.get(short_name(instance.name))
        if mapping is None:
            raise InstanceRejected(f"unknown instance {instance.name!r}: no mapping for "
                                   f"{short_name(instance.name)!r}")
        event = pb.UsageEvent(
            event_id=_event_id(dedup_id, index, instance),
            source=pb.MIXER_METRIC_ADAPTER,
            source_instance=instance.name,
            collected_timestamp_ms=collected_ms if collected_ms is not None else int(self._clock() * 1000),
        )
        for name, value in mapping.defaults.items():
            setattr(event, name, value)
        dims = instance.dimensions
        try:
            for dim_name, (field_name, convert) in mapping.dimensions.items():
                if dim_name in dims:
                    converted = convert(dims[dim_name])
                    if converted != "" or field_name not in mapping.defaults:
                        setattr(event, field_name, converted)
            if mapping.value_field and instance.HasField("value"):
                setattr(event, mapping.value_field, as_int(instance.value))
            auth = as_str(dims[mapping.auth_dimension]) if mapping.auth_dimension in dims else ""
        except ValueKindError as exc:
            raise InstanceRejected(f"instance {instance.name!r}: {exc}") from exc
        except (ValueError, TypeError) as exc:  # out-of-range ints, bad enum values
            raise InstanceRejected(f"instance {instance.name!r}: {exc}") from exc
        _apply_caller(event, self.resolver.resolve(auth, event.api_name, event.api_version))
        if event.response_timestamp_ms and event.request_timestamp_ms:
            latency = max(0.0, float(event.response_timestamp_ms - event.request_timestamp_ms))
            event.response_latency_ms = latency
            event.backend_latency_ms = latency
        code = event.response_code
        if code == 429:
            event.throttled_out = True
            event.throttled_out_reason = "RATE_LIMITED"
        if code >= 500:
            event.fault = True
            event.error_code = code
            event.error_message = "Error"
        return event

    def map_request(self, request: metric_pb2.HandleMetricRequest) -> tuple[list[pb.UsageEvent], list[tuple[int, str]]]:
        """All instances of one call -> (events, [(index, rejection reason)])."""
        events: list[pb.UsageEvent] = []
        rejected: list[tuple[int, str]] = []
        collected_ms = int(self._clock() * 1000)
        for index, instance in enumerate(request.instances):
            try:
                events.append(self.map_instance(instance, dedup_id=request.dedup_id, index=index,
                                                collected_ms=collected_ms))
            except InstanceRejected as exc:
                rejected.append((index, str(exc)))
        return events, rejected
