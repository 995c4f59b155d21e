"""Turn simulated requests into the ``HandleMetricRequest`` s Mixer 1.4 sends the WSO2 adapter.

Mixer evaluates the ``wso2-metrics`` metric instance (docs/wso2-analytics.md section 1.2) for each
request and batches the instances for one handler into one
``/metric.HandleMetricService/HandleMetric`` call (docs/mixer-wire.md section 3):

* ``InstanceMsg.name`` = ``wso2-metrics.instance.istio-system``;
* ``value`` = ``request.size | 0`` as ``int64_value``;
* 16 ``dimensions``, each in the ``Value`` field of its expression type
  (:data:`DIMENSION_KINDS`): strings for the API and request attributes,
  ``ip_address_value`` (raw 4/16 bytes) for ``source.ip``, ``timestamp_value``
  for ``request.time``/``response.time`` and ``int64_value`` for sizes and the
  code. An absent ``Authorization`` header is sent as ``""``, which is what
  ``request.headers["authorization"]`` evaluates to;
* ``monitored_resource_type`` = ``UNSPECIFIED``;
* ``adapter_config`` = the handler params as ``adapter.wso2.config.Params``
  packed in an ``Any`` (the adapter is not session based);
* ``dedup_id`` = a decimal counter, ``str(n)``.

Most dimensions repeat from request to request (same API and route, same
client), so :class:`MetricRequestBuilder` serialises those groups once and
merges the cached bytes into each new instance (a single C-level parse), then
sets only the per-request fields. :func:`build_instance` is the plain
field-by-field reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from google.protobuf import any_pb2

from schemas.mixer.template.metric.template_handler_service_pb2 import HandleMetricRequest, InstanceMsg
from schemas.policy.v1beta1.type_pb2 import IPAddress, TimeStamp, Value
from simulator.config import DEFAULT_PROFILE, DEFAULTS, SimulationProfile
from simulator.traffic import SimRequest

T = TypeVar("T")

#: The wso2-metrics dimensions and the ``Value`` field Mixer fills for each.
DIMENSION_KINDS: dict[str, str] = {
    "auth_header_value": "string_value",
    "api_context": "string_value",
    "api_name": "string_value",
    "api_version": "string_value",
    "resource_path": "string_value",
    "resource_path_template": "string_value",
    "request_method": "string_value",
    "user_ip": "ip_address_value",
    "user_agent": "string_value",
    "request_timestamp": "timestamp_value",
    "response_timestamp": "timestamp_value",
    "response_size": "int64_value",
    "api_protocol": "string_value",
    "response_code": "int64_value",
    "destination": "string_value",
    "request_host": "string_value",
}

#: Cached serialized groups are dropped wholesale beyond this many entries,
#: which bounds memory when clients or routes are unbounded.
CACHE_LIMIT = 50_000


def string_value(s: str) -> Value:
    """A ``Value`` holding a STRING (set even when empty: oneof fields keep presence)."""
    return Value(string_value=s)


def int64_value(n: int) -> Value:
    """A ``Value`` holding an INT64."""
    return Value(int64_value=n)


def ip_value(raw: bytes) -> Value:
    """A ``Value`` holding an IP_ADDRESS (raw 4 or 16 bytes, like Go's ``net.IP``)."""
    return Value(ip_address_value=IPAddress(value=raw))


def timestamp_value(ms: int) -> Value:
    """A ``Value`` holding a TIMESTAMP at epoch milliseconds ``ms``."""
    v = Value(timestamp_value=TimeStamp())
    v.timestamp_value.value.FromMilliseconds(ms)
    return v


def _route_dimensions(r: SimRequest) -> dict[str, Value]:
    return {
        "api_context": string_value(r.api.context),
        "api_name": string_value(r.api.name),
        "api_version": string_value(r.api.version),
        "resource_path_template": string_value(r.resource_template),
        "request_method": string_value(r.method),
        "api_protocol": string_value(r.protocol),
        "destination": string_value(r.destination),
        "request_host": string_value(r.request_host),
    }


def _client_dimensions(r: SimRequest) -> dict[str, Value]:
    return {
        "auth_header_value": string_value(r.auth_header),
        "user_ip": ip_value(r.user_ip),
        "user_agent": string_value(r.user_agent),
    }


def instance_dimensions(r: SimRequest) -> dict[str, Value]:
    """The 16 dimensions of ``r``'s ``wso2-metrics`` instance."""
    return {
        **_route_dimensions(r),
        **_client_dimensions(r),
        "resource_path": string_value(r.resource_path),
        "request_timestamp": timestamp_value(r.request_ts_ms),
        "response_timestamp": timestamp_value(r.response_ts_ms),
        "response_size": int64_value(r.response_size),
        "response_code": int64_value(r.response_code),
    }


def build_instance(r: SimRequest, *, instance_name: str = DEFAULTS.instance_name,
                   profile: SimulationProfile = DEFAULT_PROFILE) -> InstanceMsg:
    """The ``InstanceMsg`` for one request, built field by field (the reference form)."""
    return InstanceMsg(name=instance_name, value=int64_value(r.request_size), dimensions=instance_dimensions(r),
                       monitored_resource_type=profile.monitored_resource_type)


def length_delimited(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (field ``number``, wire type 2) holding ``data``."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        bits, n = n & 0x7F, n >> 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def adapter_config(profile: SimulationProfile = DEFAULT_PROFILE) -> any_pb2.Any:
    """The handler params as Mixer packs them: ``adapter.wso2.config.Params`` in an ``Any``.

    Params has only string fields, numbered 1..7 in :attr:`SimulationProfile.adapter_params`
    order, so it is encoded directly rather than compiling the adapter's proto.
    """
    body = bytearray()
    for number, (_, text) in enumerate(profile.adapter_params, start=1):
        data = text.encode("utf-8")
        if data:  # proto3 omits empty strings
            body += length_delimited(number, data)
    return any_pb2.Any(type_url=profile.adapter_config_type_url, value=bytes(body))


class MetricRequestBuilder:
    """Builds ``HandleMetricRequest`` s quickly by caching the repeating parts of instances.

    Args:
        instance_name: ``InstanceMsg.name``.
        profile: supplies the monitored resource type and the adapter params.
        with_adapter_config: set ``adapter_config`` as Mixer does for a
            non-session-based adapter.
    """

    def __init__(self, *, instance_name: str = DEFAULTS.instance_name, profile: SimulationProfile = DEFAULT_PROFILE,
                 with_adapter_config: bool = True) -> None:
        self.instance_name = instance_name
        self.profile = profile
        self._adapter_config = adapter_config(profile) if with_adapter_config else None
        self._routes: dict[tuple[str, ...], bytes] = {}
        self._clients: dict[tuple[str, bytes, str], bytes] = {}
        self._codes: dict[int, bytes] = {}

    def _route_bytes(self, r: SimRequest) -> bytes:
        key = (r.api.context, r.api.name, r.api.version, r.resource_template, r.method, r.protocol, r.destination,
               r.request_host)
        data = self._routes.get(key)
        if data is None:
            if len(self._routes) >= CACHE_LIMIT:
                self._routes.clear()
            data = self._routes[key] = InstanceMsg(
                name=self.instance_name, dimensions=_route_dimensions(r),
                monitored_resource_type=self.profile.monitored_resource_type).SerializeToString()
        return data

    def _client_bytes(self, r: SimRequest) -> bytes:
        key = (r.auth_header, r.user_ip, r.user_agent)
        data = self._clients.get(key)
        if data is None:
            if len(self._clients) >= CACHE_LIMIT:
                self._clients.clear()
            data = self._clients[key] = InstanceMsg(dimensions=_client_dimensions(r)).SerializeToString()
        return data

    def _code_bytes(self, code: int) -> bytes:
        data = self._codes.get(code)
        if data is None:
            data = self._codes[code] = InstanceMsg(
                dimensions={"response_code": int64_value(code)}).SerializeToString()
        return data

    def build(self, batch: Sequence[SimRequest], dedup_id: str) -> HandleMetricRequest:
        """One ``HandleMetricRequest`` carrying one instance per request of ``batch``."""
        msg = HandleMetricRequest(dedup_id=dedup_id)
        if self._adapter_config is not None:
            msg.adapter_config.CopyFrom(self._adapter_config)
        add = msg.instances.add
        route_bytes, client_bytes, code_bytes = self._route_bytes, self._client_bytes, self._code_bytes
        for r in batch:
            inst = add()
            inst.MergeFromString(route_bytes(r) + client_bytes(r) + code_bytes(r.response_code))
            inst.value.int64_value = r.request_size
            dims = inst.dimensions
            dims["resource_path"].string_value = r.resource_path
            # Same result as Timestamp.FromMilliseconds, without its Python-level checks.
            ts = dims["request_timestamp"].timestamp_value.value
            ts.seconds, millis = divmod(r.request_ts_ms, 1000)
            ts.nanos = millis * 1_000_000
            ts = dims["response_timestamp"].timestamp_value.value
            ts.seconds, millis = divmod(r.response_ts_ms, 1000)
            ts.nanos = millis * 1_000_000
            dims["response_size"].int64_value = r.response_size
        return msg


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter).

    Raises:
        ValueError: ``size`` < 1.
    """
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_requests(requests: Iterable[SimRequest], *, batch_size: int = DEFAULTS.batch_size,
                   instance_name: str = DEFAULTS.instance_name, dedup_base: int = DEFAULTS.dedup_base,
                   profile: SimulationProfile = DEFAULT_PROFILE) -> Iterator[HandleMetricRequest]:
    """Batch requests into the ``HandleMetricRequest`` s Mixer would send.

    Args:
        requests: simulated requests, in the order Mixer saw them.
        batch_size: instances per call.
        instance_name: ``InstanceMsg.name``.
        dedup_base: ``dedup_id`` of the first call; each next call adds 1.
        profile: monitored resource type and adapter params.

    Returns:
        An iterator of requests with ``dedup_id`` ``str(dedup_base)``, ``str(dedup_base + 1)``, ...
    """
    builder = MetricRequestBuilder(instance_name=instance_name, profile=profile)
    for n, batch in enumerate(batched(requests, batch_size)):
        yield builder.build(batch, str(dedup_base + n))


def request_timestamp_ms(instance: InstanceMsg) -> int:
    """The ``request_timestamp`` dimension of an instance, in epoch ms (0 if absent)."""
    if "request_timestamp" not in instance.dimensions:
        return 0
    return instance.dimensions["request_timestamp"].timestamp_value.value.ToMilliseconds()
