"""Turn simulated requests into what Istio 1.8+ sidecars send: ALS v3 messages and OTLP log exports.

Shaped like Envoy's access loggers (docs/access-log-attributes.md):

* one sidecar per destination workload (``Api.destination``) reports each
  request it served (Istio Telemetry ``mode: SERVER``), so each request is
  logged once;
* a sidecar buffers entries and flushes them every ``flush_interval_ms`` of
  simulated time (Envoy's ``buffer_flush_interval``, 1 s) or as soon as its
  buffer reaches ``buffer_bytes`` (``buffer_size_bytes``, 16 KiB): each flush is
  one ALS message, or one OTLP export;
* the first ALS message of a stream carries the identifier (node and log name).

Response flags follow the status the traffic model chose: a gateway 429 is
``RL`` (rate limited), a fast 502/503 is ``UF`` (connection failure), a 504 is
``UT`` (upstream timeout).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as otlp_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2

from schemas.envoy.config.core.v3 import base_pb2
from schemas.envoy.data.accesslog.v3 import accesslog_pb2 as log_pb
from schemas.envoy.service.accesslog.v3 import als_pb2
from simulator.catalog import Api
from simulator.config import DEFAULT_PROFILE, SimulationProfile
from simulator.mixer import length_delimited
from simulator.traffic import SimRequest

#: The log name Istio's provider in deploy/istio/telemetry sets.
LOG_NAME = "apim-analytics"
INBOUND_CLUSTER = "inbound|8080||"


@dataclass(frozen=True)
class Sidecar:
    """The Envoy that serves one destination workload."""

    workload: str
    namespace: str
    node_id: str

    def identifier(self) -> als_pb2.StreamAccessLogsMessage.Identifier:
        ident = als_pb2.StreamAccessLogsMessage.Identifier(log_name=LOG_NAME)
        ident.node.id = self.node_id
        ident.node.cluster = f"{self.workload}.{self.namespace}"
        ident.node.metadata.update({"WORKLOAD_NAME": self.workload, "NAMESPACE": self.namespace})
        return ident


def sidecar_of(api: Api) -> Sidecar:
    """The sidecar of ``api``'s destination service (``cart-v2.default.svc.cluster.local`` -> ``cart-v2``)."""
    workload, _, rest = api.destination.partition(".")
    namespace = rest.partition(".")[0] or "default"
    pod = hashlib.sha256(api.destination.encode()).hexdigest()[:5]
    return Sidecar(workload, namespace, f"sidecar~10.0.0.1~{workload}-{pod}.{namespace}~{namespace}.svc.cluster.local")


def _flags(code: int, profile: SimulationProfile) -> dict[str, bool]:
    if code == 429 and code in profile.gateway_rejected_codes:
        return {"rate_limited": True}
    if code in profile.fast_failure_codes:
        return {"upstream_connection_failure": True}
    if code in profile.upstream_timeout_codes:
        return {"upstream_request_timeout": True}
    return {}


def _flag_codes(code: int, profile: SimulationProfile) -> str:
    return {"rate_limited": "RL", "upstream_connection_failure": "UF",
            "upstream_request_timeout": "UT"}.get(next(iter(_flags(code, profile)), ""), "-")


def http_entry(r: SimRequest, profile: SimulationProfile = DEFAULT_PROFILE) -> log_pb.HTTPAccessLogEntry:
    """The HTTPAccessLogEntry the destination sidecar logs for ``r``."""
    e = log_pb.HTTPAccessLogEntry(protocol_version=log_pb.HTTPAccessLogEntry.HTTP11)
    c = e.common_properties
    c.start_time.seconds, millis = divmod(r.request_ts_ms, 1000)
    c.start_time.nanos = millis * 1_000_000
    c.time_to_last_downstream_tx_byte.FromMilliseconds(r.response_ts_ms - r.request_ts_ms)
    if r.backend_time_ms:
        c.time_to_first_upstream_tx_byte.FromMilliseconds(0)
        c.time_to_last_upstream_rx_byte.FromMilliseconds(r.backend_time_ms)
    c.downstream_remote_address.socket_address.address = r.user_ip_text
    c.upstream_cluster = INBOUND_CLUSTER
    for name, value in _flags(r.response_code, profile).items():
        setattr(c.response_flags, name, value)
    q = e.request
    q.request_method = cast("base_pb2.RequestMethod", base_pb2.RequestMethod.Value(r.method))
    q.scheme, q.authority, q.path = r.protocol, r.request_host, r.api.context + r.resource_path
    q.user_agent, q.request_body_bytes = r.user_agent, r.request_size
    if r.auth_header:
        q.request_headers["authorization"] = r.auth_header
    e.response.response_code.value = r.response_code
    e.response.response_body_bytes = r.response_size
    return e


def _text(value: str) -> common_pb2.AnyValue:
    return common_pb2.AnyValue(string_value=value)


def otlp_record(r: SimRequest, sidecar: Sidecar,
                profile: SimulationProfile = DEFAULT_PROFILE) -> logs_pb2.LogRecord:
    """The LogRecord Envoy's OpenTelemetry access logger sends for ``r`` with deploy/istio/telemetry's labels
    (Envoy formats every label as text and prints '-' for a value it does not have)."""
    record = logs_pb2.LogRecord(time_unix_nano=r.request_ts_ms * 1_000_000)
    record.body.string_value = f"[{r.request_ts_ms}] \"{r.method} {r.api.context}{r.resource_path}\" {r.response_code}"
    labels = {
        "request.host": r.request_host, "request.path": r.api.context + r.resource_path, "request.method": r.method,
        "request.scheme": r.protocol, "request.protocol": "HTTP/1.1", "request.useragent": r.user_agent,
        "request.id": "-", "request.auth_header": r.auth_header or "-",
        "request.size": str(r.request_size), "response.size": str(r.response_size),
        "response.code": str(r.response_code), "response.flags": _flag_codes(r.response_code, profile),
        "response.duration": str(r.response_ts_ms - r.request_ts_ms),
        "response.upstream_duration": str(r.backend_time_ms) if r.backend_time_ms else "-",
        "source.address": r.user_ip_text, "source.principal": "-", "destination.principal": "-",
        "destination.workload": sidecar.workload, "destination.namespace": sidecar.namespace,
        "upstream.cluster": INBOUND_CLUSTER,
    }
    add = record.attributes.add
    for key, value in labels.items():
        add(key=key, value=_text(value))
    return record


@dataclass
class Flush:
    """One sidecar's buffer, flushed: one ALS message or one OTLP export. ``due_ms`` is the simulated time
    the flush happens (realtime pacing)."""

    sidecar: Sidecar
    requests: list[SimRequest]
    entries: list[bytes] = field(default_factory=list)
    due_ms: int = 0


def flushes(requests: Iterable[SimRequest], *, flush_interval_ms: int, buffer_bytes: int,
            profile: SimulationProfile = DEFAULT_PROFILE) -> Iterator[Flush]:
    """Group time-ordered requests into per-sidecar flushes, as Envoy's buffered access loggers do.

    The buffer size counts each request's ALS entry bytes (kept in ``Flush.entries``), for OTLP too.
    """
    buffers: dict[str, Flush] = {}
    sizes: dict[str, int] = {}
    sidecars: dict[str, Sidecar] = {}
    next_tick: int | None = None
    for r in requests:
        if next_tick is None:
            next_tick = r.request_ts_ms - r.request_ts_ms % flush_interval_ms + flush_interval_ms
        while r.request_ts_ms >= next_tick:  # the flush timer fired: every non-empty buffer goes out
            for key in list(buffers):
                done = buffers.pop(key)
                done.due_ms = next_tick
                yield done
            sizes.clear()
            next_tick += flush_interval_ms
        key = r.api.destination
        sidecar = sidecars.get(key)
        if sidecar is None:
            sidecar = sidecars[key] = sidecar_of(r.api)
        entry = http_entry(r, profile).SerializeToString()
        buffer = buffers.get(key)
        if buffer is None:
            buffer = buffers[key] = Flush(sidecar, [])
        buffer.requests.append(r)
        buffer.entries.append(entry)
        sizes[key] = sizes.get(key, 0) + len(entry)
        if sizes[key] >= buffer_bytes:  # the buffer is full: it goes out now
            buffer.due_ms = r.request_ts_ms
            yield buffers.pop(key)
            sizes[key] = 0
    for buffer in buffers.values():
        buffer.due_ms = next_tick or 0
        yield buffer


def als_message(flush: Flush, *, first: bool) -> bytes:
    """The StreamAccessLogsMessage of one flush (the entries' bytes are reused as they are)."""
    msg = als_pb2.StreamAccessLogsMessage()
    if first:
        msg.identifier.CopyFrom(flush.sidecar.identifier())
    head = msg.SerializeToString()
    inner = b"".join(length_delimited(1, e) for e in flush.entries)
    return head + length_delimited(2, inner)


def otlp_export(flush: Flush, profile: SimulationProfile = DEFAULT_PROFILE) -> otlp_pb2.ExportLogsServiceRequest:
    """The ExportLogsServiceRequest of one flush."""
    request = otlp_pb2.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    for key, value in (("log_name", LOG_NAME), ("node_name", flush.sidecar.node_id),
                       ("cluster_name", f"{flush.sidecar.workload}.{flush.sidecar.namespace}")):
        resource_logs.resource.attributes.add(key=key, value=_text(value))
    records = resource_logs.scope_logs.add().log_records
    records.extend(otlp_record(r, flush.sidecar, profile) for r in flush.requests)
    return request
