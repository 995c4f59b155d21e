"""From Envoy access-log entries (ALS v3 and OpenTelemetry) to usage events.

Both protocols are first turned into the same named attributes
(docs/access-log-attributes.md), then the API catalog adds the ``api.*``
attributes the request's host, path and method match, and the
``envoy-access-log`` entry of the instance mapping turns them into events with
the very code that maps Mixer instances (:class:`~collector.mapping.InstanceMapper`):
the same credential resolution, limits, privacy and dead letters.

An ALS message is split at the wire level, one entry at a time, so one
malformed entry (bad protobuf, invalid UTF-8) is dead-lettered on its own and
the other entries of the message still count.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from collector.credentials import VERIFIED_CLAIMS
from collector.errors import MalformedCall
from collector.mapping import InstanceMapper, MappedCall, RejectCode, Rejection
from core.api_catalog import ApiCatalog
from schemas.envoy.data.accesslog.v3 import accesslog_pb2 as log_pb
from schemas.envoy.service.accesslog.v3 import als_pb2
from schemas.mixer.template.metric import template_handler_service_pb2 as metric_pb2
from schemas.policy.v1beta1 import type_pb2

#: The mapping entry access-log attributes are mapped by (collector/mappings/default.yaml).
ACCESS_LOG_INSTANCE = "envoy-access-log"
#: The jwt_authn filter's dynamic-metadata namespace (its payload_in_metadata key holds the claims).
JWT_AUTHN_METADATA = "envoy.filters.http.jwt_authn"

#: What to do with a request whose host and path match no API of the catalog.
UNMATCHED_POLICIES = ("dead-letter", "drop", "unmanaged")
UNMANAGED_API = "unmanaged"

#: ResponseFlags field -> Envoy's short code (as %RESPONSE_FLAGS% prints it).
FLAG_CODES: tuple[tuple[str, str], ...] = (
    ("failed_local_healthcheck", "LH"), ("no_healthy_upstream", "UH"), ("upstream_request_timeout", "UT"),
    ("local_reset", "LR"), ("upstream_remote_reset", "UR"), ("upstream_connection_failure", "UF"),
    ("upstream_connection_termination", "UC"), ("upstream_overflow", "UO"), ("no_route_found", "NR"),
    ("delay_injected", "DI"), ("fault_injected", "FI"), ("rate_limited", "RL"),
    ("rate_limit_service_error", "RLSE"), ("downstream_connection_termination", "DC"),
    ("upstream_retry_limit_exceeded", "URX"), ("stream_idle_timeout", "SI"),
    ("invalid_envoy_request_headers", "IH"), ("downstream_protocol_error", "DPE"),
    ("upstream_max_stream_duration_reached", "UMSDR"), ("response_from_cache_filter", "RFCF"),
    ("no_filter_config_found", "NFCF"), ("duration_timeout", "DT"), ("upstream_protocol_error", "UPE"),
    ("no_cluster_found", "NC"), ("overload_manager", "OM"), ("dns_resolution_failure", "DF"),
    ("downstream_remote_reset", "DR"),
)
#: Upstream failures: the request is a fault (TARGET_CONNECTIVITY) whatever its status code.
FAULT_FLAGS = frozenset({"UH", "UF", "UO", "URX", "UC", "UT", "UR", "UPE", "UMSDR", "NC", "DF"})
#: Rate limited: the request is throttled out.
THROTTLE_FLAGS = frozenset({"RL"})

Attributes = dict[str, Any]


# -- the wire: one entry at a time ---------------------------------------------------------------
def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise MalformedCall("truncated or overlong varint")
        b = raw[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(raw: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each top-level field: bytes for length-delimited, int otherwise.

    Raises:
        MalformedCall: not protobuf.
    """
    pos, end = 0, len(raw)
    while pos < end:
        key, pos = _varint(raw, pos)
        number, wire_type = key >> 3, key & 7
        value: Any
        if number == 0:
            raise MalformedCall("field number 0")
        if wire_type == 0:
            value, pos = _varint(raw, pos)
        elif wire_type == 2:
            size, pos = _varint(raw, pos)
            if pos + size > end:
                raise MalformedCall("a length-delimited field runs past the end of the message")
            value, pos = raw[pos:pos + size], pos + size
        elif wire_type in (1, 5):
            width = 8 if wire_type == 1 else 4
            if pos + width > end:
                raise MalformedCall("a fixed-width field runs past the end of the message")
            value, pos = int.from_bytes(raw[pos:pos + width], "little"), pos + width
        else:
            raise MalformedCall(f"unsupported wire type {wire_type} (groups are not used by ALS)")
        yield number, wire_type, value


@dataclass
class StreamMessage:
    """One ``StreamAccessLogsMessage``, split: the identifier's bytes (only on a stream's first message)
    and each HTTP and TCP entry's own bytes, still undecoded."""

    identifier: bytes | None = None
    http: list[bytes] = field(default_factory=list)
    tcp: list[bytes] = field(default_factory=list)


def split_message(raw: bytes) -> StreamMessage:
    """The parts of one ALS message (fields 1 identifier, 2 http_logs, 3 tcp_logs; unknown fields skipped).

    Raises:
        MalformedCall: the message's own framing is not protobuf.
    """
    out = StreamMessage()
    for number, wire_type, value in _fields(raw):
        if wire_type != 2:
            if number in (1, 2, 3):
                raise MalformedCall(f"field {number} must be length-delimited, got wire type {wire_type}")
            continue
        if number == 1:
            out.identifier = value
        elif number in (2, 3):
            target = out.http if number == 2 else out.tcp
            for inner, inner_type, entry in _fields(value):
                if inner == 1:
                    if inner_type != 2:
                        raise MalformedCall(f"log_entry must be length-delimited, got wire type {inner_type}")
                    target.append(entry)
    return out


def parse_identifier(raw: bytes) -> als_pb2.StreamAccessLogsMessage.Identifier:
    """The stream's identifier; MalformedCall if it does not decode or names no node."""
    try:
        ident = als_pb2.StreamAccessLogsMessage.Identifier.FromString(raw)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise MalformedCall(f"identifier: not protobuf, or invalid UTF-8: {str(exc)[:200]}") from exc
    if not ident.HasField("node") or not ident.node.id:
        raise MalformedCall("identifier: node.id is empty (Envoy always sends its node)")
    return ident


# -- attributes ---------------------------------------------------------------------------------------
def node_attributes(ident: als_pb2.StreamAccessLogsMessage.Identifier) -> Attributes:
    """What the reporting sidecar says about itself: Istio puts the workload and namespace in the node metadata."""
    fields = ident.node.metadata.fields
    out: Attributes = {}
    for key, attribute in (("WORKLOAD_NAME", "destination.workload"), ("NAMESPACE", "destination.namespace")):
        value = fields.get(key)
        if value is not None and value.WhichOneof("kind") == "string_value":
            out[attribute] = value.string_value
    return out


def _ms(d: Any) -> float:
    return d.seconds * 1000.0 + d.nanos / 1_000_000.0


def _ip(address: Any) -> str:
    return address.socket_address.address if address.HasField("socket_address") else ""


def _uri_san(cert: Any) -> str:
    return next((san.uri for san in cert.subject_alt_name if san.uri), "")


def spiffe_namespace(principal: str) -> str:
    """``spiffe://cluster.local/ns/shop/sa/cart`` -> ``shop`` ('' when it is not an Istio identity)."""
    parts = principal.split("/")
    return parts[parts.index("ns") + 1] if principal.startswith("spiffe://") and "ns" in parts[3:-1] else ""


def flag_codes(flags: log_pb.ResponseFlags) -> list[str]:
    """The set response flags as Envoy's short codes, in Envoy's order."""
    out = [code for name, code in FLAG_CODES if getattr(flags, name)]
    if flags.HasField("unauthorized_details"):
        out.append("UAEX")
    return out


def _common(common: log_pb.AccessLogCommon, attrs: Attributes) -> None:
    start_ms = common.start_time.seconds * 1000 + common.start_time.nanos // 1_000_000
    attrs["request.time"] = ("ts", start_ms)
    total = common.time_to_last_downstream_tx_byte if common.HasField("time_to_last_downstream_tx_byte") \
        else common.duration
    attrs["response.duration"] = ("dur", _ms(total))
    if common.HasField("time_to_last_upstream_rx_byte"):
        upstream = _ms(common.time_to_last_upstream_rx_byte) - _ms(common.time_to_first_upstream_tx_byte)
        attrs["response.upstream_duration"] = ("dur", max(upstream, 0.0))
    attrs["source.address"] = _ip(common.downstream_remote_address)
    tls = common.tls_properties
    source = _uri_san(tls.peer_certificate_properties)
    if source:
        attrs["source.principal"] = source
    destination = _uri_san(tls.local_certificate_properties)
    if destination:
        attrs["destination.principal"] = destination
    attrs["upstream.cluster"] = common.upstream_cluster
    codes = flag_codes(common.response_flags)
    if codes:
        attrs["response.flags"] = ",".join(codes)


def http_attributes(entry: log_pb.HTTPAccessLogEntry, node: Attributes) -> Attributes:
    """The attributes of one HTTP entry (docs/access-log-attributes.md, the ALS column)."""
    attrs: Attributes = dict(node)
    _common(entry.common_properties, attrs)
    req, resp = entry.request, entry.response
    attrs["request.host"] = req.authority
    attrs["request.path"] = req.original_path or req.path
    attrs["request.method"] = _METHODS.get(req.request_method, "")
    if req.scheme:
        attrs["request.scheme"] = req.scheme
    attrs["request.protocol"] = _PROTOCOLS.get(entry.protocol_version, "")
    if req.user_agent:
        attrs["request.useragent"] = req.user_agent
    if req.request_id:
        attrs["request.id"] = req.request_id
    headers = req.request_headers
    auth = headers.get("authorization") or headers.get("Authorization") or ""
    if not auth:
        auth = _verified_claims(entry.common_properties.metadata)
    attrs["request.auth_header"] = auth
    attrs["request.size"] = req.request_body_bytes
    attrs["response.size"] = resp.response_body_bytes
    if resp.HasField("response_code"):
        attrs["response.code"] = resp.response_code.value
    return derive(attrs)


def tcp_attributes(entry: log_pb.TCPAccessLogEntry, node: Attributes) -> Attributes:
    """The attributes of one TCP entry: no host, path or method; the bytes each way."""
    attrs: Attributes = dict(node)
    _common(entry.common_properties, attrs)
    attrs["request.size"] = entry.connection_properties.received_bytes
    attrs["response.size"] = entry.connection_properties.sent_bytes
    attrs["request.scheme"] = "tcp"
    return derive(attrs)


_METHODS = {1: "GET", 2: "HEAD", 3: "POST", 4: "PUT", 5: "DELETE", 6: "CONNECT", 7: "OPTIONS", 8: "TRACE",
            9: "PATCH"}
_PROTOCOLS = {1: "HTTP/1.0", 2: "HTTP/1.1", 3: "HTTP/2", 4: "HTTP/3"}


def derive(attrs: Attributes) -> Attributes:
    """Add the attributes both protocols compute from others (the doc's "derived the same way" rows):
    the response time, the source namespace from its SPIFFE identity, and which side reported."""
    at, duration = attrs.get("request.time"), _millis(attrs.get("response.duration"))
    if type(at) is tuple and duration is not None and "response.time" not in attrs:
        attrs["response.time"] = ("ts", at[1] + int(duration))
    principal = attrs.get("source.principal")
    if type(principal) is str and principal and "source.namespace" not in attrs:
        attrs["source.namespace"] = spiffe_namespace(principal)
    cluster = attrs.get("upstream.cluster")
    if type(cluster) is str and "reporter" not in attrs:
        attrs["reporter"] = "destination" if cluster.startswith("inbound|") else "source"
    return attrs


def _millis(x: Any) -> float | None:
    """A duration attribute as finite milliseconds, or None (text, inf, NaN and absurd values are left to the
    mapper to refuse)."""
    if type(x) is tuple and x[0] == "dur":
        x = x[1]
    try:
        out = float(x) if x is not None and type(x) is not bool else None
    except (TypeError, ValueError):
        return None
    return out if out is not None and math.isfinite(out) and abs(out) < 1e15 else None


def otlp_attributes(request: Any) -> list[Attributes | Rejection]:
    """Each OTLP log record's attributes (docs/access-log-attributes.md, the OTLP column), in order."""
    out: list[Attributes | Rejection] = []
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                attrs: Attributes = {}
                for kv in record.attributes:
                    value = _any_value(kv.value)
                    if value is not None and value != "-":  # Envoy prints '-' for a value it does not have
                        attrs[kv.key] = value
                auth = attrs.get("request.auth_header")
                if isinstance(auth, str) and auth.startswith(VERIFIED_CLAIMS):
                    attrs["request.auth_header"] = ""  # only an ALS entry's jwt_authn metadata may say this
                nanos = record.time_unix_nano or record.observed_time_unix_nano
                attrs["request.time"] = ("ts", nanos // 1_000_000)
                out.append(derive(attrs))
    return out


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    if kind == "bytes_value":
        return value.bytes_value.decode("utf-8", "replace")
    return None  # arrays and key-value lists are not part of the vocabulary


def _verified_claims(metadata: Any) -> str:
    """The first JWT payload the jwt_authn filter verified and put in the dynamic metadata, as a credential."""
    payloads = metadata.filter_metadata.get(JWT_AUTHN_METADATA)
    if payloads is None:
        return ""
    for value in payloads.fields.values():
        if value.WhichOneof("kind") == "struct_value":
            claims = json_format.MessageToDict(value.struct_value)
            return VERIFIED_CLAIMS + json.dumps(claims, separators=(",", ":"), sort_keys=True)
    return ""


# -- attributes -> events ----------------------------------------------------------------------------
@dataclass
class AccessLogBatch:
    """One message's worth of entries, mapped: events and rejections (with ``call_index`` the entry's
    position in the message) and the entries dropped on purpose, by reason."""

    mapped: MappedCall
    dropped: Counter[str] = field(default_factory=Counter)
    entries: int = 0


class AccessLogMapper:
    """Catalog match, then the ``envoy-access-log`` mapping, for the entries of one message or export."""

    def __init__(self, mapper: InstanceMapper, catalog: ApiCatalog, *, unmatched: str = "dead-letter") -> None:
        if unmatched not in UNMATCHED_POLICIES:
            raise ValueError(f"unmatched: one of {UNMATCHED_POLICIES}, not {unmatched!r}")
        self.mapper = mapper
        self.catalog = catalog
        self.unmatched = unmatched

    def replace_catalog(self, catalog: ApiCatalog) -> None:
        """Swap in a re-read catalog (a plain attribute store: safe between two messages on the loop)."""
        self.catalog = catalog

    def _identify(self, attrs: Attributes) -> str | None:
        """Add the ``api.*`` attributes; returns why the entry is not counted, or None."""
        if "request.path" not in attrs:  # a TCP connection: only a mapped cluster makes it an API call
            api = self.catalog.match_cluster(attrs.get("upstream.cluster", ""))
            if api is None:
                return "TCP_UNMAPPED"
            attrs.update({"api.name": api.name, "api.version": api.version, "api.context": api.context})
            return None
        found = self.catalog.match(attrs.get("request.host", ""), attrs["request.path"],
                                   attrs.get("request.method", ""))
        if found is not None:
            attrs.update({"api.name": found.api.name, "api.version": found.api.version,
                          "api.context": found.api.context, "api.resource_template": found.resource_template,
                          "api.resource_path": found.resource_path})
            return None
        if self.unmatched == "unmanaged":
            attrs.update({"api.name": UNMANAGED_API, "api.version": "unknown",
                          "api.resource_path": attrs["request.path"].split("?", 1)[0]})
            return None
        return RejectCode.NO_API if self.unmatched == "dead-letter" else "NO_API_DROPPED"

    def map_entries(self, entries: Iterable[Attributes | Rejection], call_id: str) -> AccessLogBatch:
        """Events for the entries (a :class:`Rejection` stands for one that could not be decoded)."""
        instances: list[Any] = []
        rejected: list[Rejection] = []
        dropped: Counter[str] = Counter()
        positions: list[int] = []
        n = 0
        for n, attrs in enumerate(entries, start=1):
            index = n - 1
            if isinstance(attrs, Rejection):
                rejected.append(attrs)
                continue
            problem = _unroutable(attrs)
            if problem is not None:
                rejected.append(Rejection(index, (ACCESS_LOG_INSTANCE, None, attrs, -1, -1), *problem))
                continue
            why = self._identify(attrs)
            if why == RejectCode.NO_API:
                instance = (ACCESS_LOG_INSTANCE, None, attrs, -1, -1)
                rejected.append(Rejection(index, instance, RejectCode.NO_API,
                                          f"no API of the catalog serves {str(attrs.get('request.method'))[:16]} "
                                          f"{str(attrs.get('request.host'))[:200]}"
                                          f"{str(attrs.get('request.path')).split('?', 1)[0][:400]}"))
                continue
            if why is not None:
                dropped[why] += 1
                continue
            problem = _untimed(attrs)
            if problem is not None:
                rejected.append(Rejection(index, (ACCESS_LOG_INSTANCE, None, attrs, -1, -1), *problem))
                continue
            instances.append((ACCESS_LOG_INSTANCE, None, attrs, -1, -1))
            positions.append(index)
        mapped = self.mapper.map_call((call_id, None, instances), call_id)
        # The mapper numbers the instances it saw; give each event and rejection its entry's position.
        for event in mapped.events:
            event["call_index"] = positions[event["call_index"]]
            _apply_flags(event)
        for r in mapped.rejected:
            r.index = positions[r.index]
        mapped.rejected.extend(rejected)
        mapped.rejected.sort(key=lambda r: r.index)
        return AccessLogBatch(mapped, dropped, n)


_ROUTING = ("request.host", "request.path", "request.method", "upstream.cluster")


def _unroutable(attrs: Attributes) -> tuple[str, str] | None:
    """(code, reason) for an entry whose host, path, method or cluster is not text (an OTLP attribute can be any
    kind), before any catalog lookup."""
    for key in _ROUTING:
        x = attrs.get(key)
        if x is not None and type(x) is not str:
            return RejectCode.WRONG_VALUE_KIND, f"{key}: a {type(x).__name__} where text is expected"
    return None


def _untimed(attrs: Attributes) -> tuple[str, str] | None:
    """(code, reason) for an entry with no request time: the mapping would take zero for "no time" and stamp
    the collection time, which is not when the request happened."""
    at = attrs.get("request.time")
    ms = at[1] if type(at) is tuple else None
    if not isinstance(ms, int) or ms <= 0:
        return RejectCode.TIMESTAMP_OUT_OF_RANGE, "the entry has no request time (start_time unset or not after 1970)"
    return None


def _apply_flags(event: dict[str, Any]) -> None:
    """Envoy's response flags: upstream failures are faults and rate limiting is throttling, whatever the code."""
    props = event.get("properties")
    flags = props.get("response_flags", "") if props else ""
    if not flags or flags == "-":
        return
    codes = set(flags.split(","))
    if codes & THROTTLE_FLAGS:
        event["throttled_out"] = True
        event["throttled_out_reason"] = "RATE_LIMITED"
    if codes & FAULT_FLAGS:
        event["fault"] = True
        event.setdefault("error_code", event.get("response_code", 0))
        event["error_type"] = "TARGET_CONNECTIVITY"
        event.setdefault("error_message", ",".join(sorted(codes & FAULT_FLAGS)))


# -- dead letters --------------------------------------------------------------------------------------
def attributes_message(attrs: Attributes) -> metric_pb2.InstanceMsg:
    """An entry's attributes in Mixer's InstanceMsg form, so access-log dead letters read like Mixer's."""
    msg = metric_pb2.InstanceMsg(name=ACCESS_LOG_INSTANCE)
    for key, x in attrs.items():
        value = msg.dimensions[key]
        _set_value(value, x)
    return msg


def _set_value(value: type_pb2.Value, x: Any) -> None:
    """One attribute as a Mixer Value; what a Value cannot hold (a uint64 above int64, a time outside
    Timestamp's range, a non-finite duration) is kept as text, so the dead letter still says it."""
    t = type(x)
    try:
        if t is str:
            value.string_value = x
        elif t is bool:
            value.bool_value = x
        elif t is int:
            value.int64_value = x
        elif t is float:
            value.double_value = x
        elif t is tuple and x[0] == "ts":
            value.timestamp_value.value.FromMilliseconds(x[1])
        elif t is tuple and x[0] == "dur":
            value.duration_value.value.FromMilliseconds(int(x[1]))
        else:
            value.string_value = str(x)[:1000]
    except (ValueError, OverflowError, TypeError):
        value.Clear()
        value.string_value = str(x[1] if t is tuple else x)[:1000]


def malformed_entry(index: int, raw: bytes, exc: Exception) -> Rejection:
    """The rejection of an entry that does not decode (its bytes are not kept: they may hold a credential)."""
    return Rejection(index, (ACCESS_LOG_INSTANCE, None, {"entry.bytes": len(raw)}, -1, -1),
                     RejectCode.MALFORMED_ENTRY,
                     f"entry {index}: not an access-log entry (bad protobuf or invalid UTF-8): {str(exc)[:200]}")
