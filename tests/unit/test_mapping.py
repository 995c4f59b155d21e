"""WSO2 metric instances -> UsageEvents, and callers resolved from credentials."""

from __future__ import annotations

import base64
import json

import pytest
from google.protobuf import timestamp_pb2

from collector.credentials import CredentialResolver, SubscriptionCatalog, credential_hash
from collector.decode import decode_call
from collector.mapping import InstanceMapper, Limits, Privacy, RejectCode, event_to_proto, short_name
from schemas.apim.usage.v1 import usage_event_pb2 as pb
from schemas.mixer.template.metric import template_handler_service_pb2 as m
from schemas.policy.v1beta1 import type_pb2 as t


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def make_jwt(claims: dict) -> str:
    return f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}.c2lnbmF0dXJl"


CLAIMS = {
    "sub": "alice@acme.com",
    "consumerKey": "ck-123",
    "keytype": "SANDBOX",
    "application": {"id": "app-1", "name": "Shop", "owner": "bob", "tier": "50PerMin"},
    "subscribedAPIs": [
        {"name": "PizzaAPI", "version": "1.0.0", "publisher": "admin@pub.org", "subscriberTenantDomain": "acme.com",
         "subscriptionTier": "Gold"},
        {"name": "OtherAPI", "version": "2", "publisher": "admin", "subscriptionTier": "Bronze"},
    ],
}


def _ts(ms: int) -> t.Value:
    return t.Value(timestamp_value=t.TimeStamp(value=timestamp_pb2.Timestamp(seconds=ms // 1000,
                                                                          nanos=(ms % 1000) * 1_000_000)))


def wso2_instance(auth: str = "", code: int = 200, name: str = "wso2-metrics.instance.istio-system") -> m.InstanceMsg:
    s = lambda v: t.Value(string_value=v)  # noqa: E731
    inst = m.InstanceMsg(name=name, value=t.Value(int64_value=321), monitored_resource_type="UNSPECIFIED")
    dims = {
        "auth_header_value": s(auth), "api_context": s("/pizza/1.0.0"), "api_name": s("PizzaAPI"),
        "api_version": s("1.0.0"), "resource_path": s("/orders/42"), "resource_path_template": s("/orders/{id}"),
        "request_method": s("GET"), "user_ip": t.Value(ip_address_value=t.IPAddress(value=bytes([10, 0, 0, 7]))),
        "user_agent": s("curl/8"), "request_timestamp": _ts(1_700_000_000_250),
        "response_timestamp": _ts(1_700_000_000_280), "response_size": t.Value(int64_value=2048),
        "api_protocol": s("https"), "response_code": t.Value(int64_value=code),
        "destination": s("pizza.default.svc.cluster.local"), "request_host": s("api.example.com"),
    }
    for k, v in dims.items():
        inst.dimensions[k].CopyFrom(v)
    return inst


NOW_S = 1_700_000_001.0


def decode(req: m.HandleMetricRequest):
    return decode_call(req.SerializeToString())


def map_one(mapper: InstanceMapper, inst: m.InstanceMsg, dedup_id: str = "1") -> pb.UsageEvent:
    """Map a one-instance call and return its event as a UsageEvent row."""
    mapped = mapper.map_call(decode(m.HandleMetricRequest(dedup_id=dedup_id, instances=[inst])), "cid")
    assert not mapped.rejected, mapped.rejected
    (event,) = mapped.events
    return event_to_proto(event, "cid")


def mapper_(resolver: CredentialResolver | None = None, **kw) -> InstanceMapper:
    return InstanceMapper(resolver or CredentialResolver(), clock=lambda: NOW_S, **kw)


def test_short_name_strips_kind_and_namespace() -> None:
    assert short_name("wso2-metrics.instance.istio-system") == "wso2-metrics"
    assert short_name("requestcount.instance.default") == "requestcount"
    assert short_name("plain") == "plain"


def test_wso2_instance_maps_every_dimension() -> None:
    ev = map_one(mapper_(), wso2_instance("Bearer " + make_jwt(CLAIMS)), dedup_id="17")
    assert ev.source == pb.MIXER_METRIC_ADAPTER
    assert ev.event_id == "cid/0"
    assert ev.source_instance == "wso2-metrics.instance.istio-system"
    assert (ev.api_name, ev.api_version, ev.api_context) == ("PizzaAPI", "1.0.0", "/pizza/1.0.0")
    assert (ev.api_resource_path, ev.api_resource_template, ev.api_method) == ("/orders/42", "/orders/{id}", "GET")
    assert (ev.user_ip, ev.user_agent) == ("10.0.0.7", "curl/8")
    assert (ev.request_timestamp_ms, ev.response_timestamp_ms) == (1_700_000_000_250, 1_700_000_000_280)
    assert ev.response_latency_ms == 30.0
    assert (ev.request_size_bytes, ev.response_size_bytes, ev.response_code) == (321, 2048, 200)
    assert (ev.protocol, ev.destination, ev.api_hostname, ev.gateway_type) == (
        "https", "pizza.default.svc.cluster.local", "api.example.com", "ISTIO")
    # caller, from the JWT claims
    assert (ev.application_id, ev.application_name, ev.application_owner, ev.application_tier) == (
        "app-1", "Shop", "bob", "50PerMin")
    assert (ev.subscription_tier, ev.consumer_key, ev.key_type) == ("Gold", "ck-123", pb.SANDBOX)
    assert (ev.user_name, ev.user_tenant_domain) == ("alice@acme.com", "acme.com")
    assert (ev.api_creator, ev.api_creator_tenant_domain) == ("admin@pub.org", "pub.org")
    assert ev.credential_kind == pb.JWT


def test_raw_token_never_appears_in_the_event() -> None:
    token = make_jwt(CLAIMS)
    ev = map_one(mapper_(), wso2_instance("Bearer " + token))
    raw = ev.SerializeToString()
    assert token.encode() not in raw
    for part in token.split("."):
        assert part.encode() not in raw
    assert ev.credential_hash == credential_hash(token)


def test_anonymous_request_is_kept_as_unauthenticated() -> None:
    ev = map_one(mapper_(), wso2_instance(""))
    assert (ev.application_id, ev.subscription_tier, ev.credential_kind) == ("anonymous", "Unauthenticated", pb.NONE)


def test_opaque_token_resolves_through_the_catalog(tmp_path) -> None:
    token = "0f8fad5b-d9cb-469f-a165-70867728950e"
    path = tmp_path / "subs.jsonl"
    path.write_text(json.dumps({
        "credential_sha256": credential_hash(token), "application_id": "app-9", "application_name": "Nine",
        "application_owner": "carol", "application_tier": "10PerMin", "consumer_key": "ck-9",
        "key_type": "PRODUCTION", "user_name": "carol@carbon.super",
        "subscriptions": [{"api_name": "PizzaAPI", "api_version": "1.0.0", "tier": "Silver"}],
    }) + "\n")
    resolver = CredentialResolver(SubscriptionCatalog.load(path))
    ev = map_one(mapper_(resolver), wso2_instance("Bearer " + token))
    assert (ev.application_id, ev.subscription_tier, ev.key_type, ev.credential_kind) == (
        "app-9", "Silver", pb.PRODUCTION, pb.OPAQUE_TOKEN)


def test_unknown_opaque_token_is_unresolved_not_dropped() -> None:
    ev = map_one(mapper_(), wso2_instance("Bearer opaque"))
    assert (ev.application_id, ev.credential_kind) == ("unknown", pb.UNRESOLVED)


def test_resolver_caches_per_token_and_api() -> None:
    resolver = CredentialResolver()
    header = "Bearer " + make_jwt(CLAIMS)
    for _ in range(5):
        resolver.resolve(header, "PizzaAPI", "1.0.0")
    resolver.resolve(header, "OtherAPI", "2")
    assert (resolver.misses, resolver.hits) == (2, 4)
    assert resolver.resolve(header, "OtherAPI", "2").subscription_tier == "Bronze"


def test_cache_entries_expire() -> None:
    now = [0.0]
    resolver = CredentialResolver(cache_ttl_s=10, clock=lambda: now[0])
    header = "Bearer " + make_jwt(CLAIMS)
    resolver.resolve(header, "PizzaAPI", "1.0.0")
    now[0] = 11.0
    resolver.resolve(header, "PizzaAPI", "1.0.0")
    assert resolver.misses == 2


@pytest.mark.parametrize(("code", "fault", "throttled"), [(200, False, False), (429, False, True), (503, True, False)])
def test_fault_and_throttle_flags(code: int, fault: bool, throttled: bool) -> None:
    ev = map_one(mapper_(), wso2_instance(code=code))
    assert (ev.fault, ev.throttled_out) == (fault, throttled)


def test_unknown_instance_and_wrong_kinds_are_rejected_with_reasons() -> None:
    bad_kind = wso2_instance()
    bad_kind.dimensions["response_code"].CopyFrom(t.Value(string_value="two hundred"))
    negative = wso2_instance()
    negative.dimensions["response_size"].CopyFrom(t.Value(int64_value=-5))
    too_long = wso2_instance()
    too_long.dimensions["user_agent"].CopyFrom(t.Value(string_value="x" * 5000))
    stale = wso2_instance()
    stale.dimensions["request_timestamp"].CopyFrom(_ts(1_600_000_000_000))
    future = wso2_instance()
    future.dimensions["request_timestamp"].CopyFrom(_ts(1_700_001_000_000))
    req = m.HandleMetricRequest(dedup_id="5", instances=[
        wso2_instance(), wso2_instance(name="mystery.instance.default"), bad_kind, negative, too_long, stale,
        future])
    mapped = mapper_().map_call(decode(req), "cid")
    assert [e["call_index"] for e in mapped.events] == [0]
    assert [(r.index, r.code) for r in mapped.rejected] == [
        (1, RejectCode.UNKNOWN_INSTANCE), (2, RejectCode.WRONG_VALUE_KIND), (3, RejectCode.VALUE_OUT_OF_RANGE),
        (4, RejectCode.STRING_TOO_LONG), (5, RejectCode.TIMESTAMP_OUT_OF_RANGE),
        (6, RejectCode.TIMESTAMP_OUT_OF_RANGE)]
    assert "unknown instance 'mystery.instance.default'" in mapped.rejected[0].reason
    assert "not an integer" in mapped.rejected[1].reason
    assert "negative value -5" in mapped.rejected[2].reason


def istio_instance(kind: str, value: t.Value, code: int = 200, workload: str = "reviews-v1") -> m.InstanceMsg:
    inst = m.InstanceMsg(name=f"{kind}.instance.istio-system", value=value, monitored_resource_type="UNSPECIFIED")
    s = lambda v: t.Value(string_value=v)  # noqa: E731
    dims = {"reporter": s("destination"), "source_workload": s("productpage-v1"),
            "source_workload_namespace": s("default"), "source_principal": s("spiffe://cluster.local/ns/default/sa/pp"),
            "destination_workload": s(workload), "destination_workload_namespace": s("default"),
            "destination_service": s("reviews.default.svc.cluster.local"), "destination_service_name": s("reviews"),
            "destination_version": s("v1"), "request_protocol": s("http"),
            "response_code": t.Value(int64_value=code), "response_flags": s("-"),
            "connection_security_policy": s("mutual_tls")}
    for k, v in dims.items():
        inst.dimensions[k].CopyFrom(v)
    return inst


def _dur(ms: int) -> t.Value:
    from google.protobuf import duration_pb2

    return t.Value(duration_value=t.Duration(value=duration_pb2.Duration(seconds=ms // 1000,
                                                                         nanos=(ms % 1000) * 1_000_000)))


def test_istio_default_instances_combine_into_one_event_per_request() -> None:
    """requestcount/requestduration/requestsize/responsesize of one request -> one event with all measures;
    two identical requests -> two events; another request with other dimensions -> its own event."""
    one = t.Value(int64_value=1)
    req = m.HandleMetricRequest(dedup_id="9", instances=[
        istio_instance("requestcount", one), istio_instance("requestduration", _dur(12)),
        istio_instance("requestsize", t.Value(int64_value=100)),
        istio_instance("responsesize", t.Value(int64_value=900)),
        istio_instance("requestcount", one), istio_instance("requestduration", _dur(30)),
        istio_instance("requestsize", t.Value(int64_value=0)), istio_instance("responsesize", t.Value(int64_value=50)),
        istio_instance("requestcount", one, code=503), istio_instance("requestduration", _dur(7), code=503),
    ])
    mapped = mapper_().map_call(decode(req), "cid")
    assert not mapped.rejected
    events = [event_to_proto(e, "cid") for e in mapped.events]
    assert [(e.event_id, e.response_code, e.response_latency_ms, e.request_size_bytes, e.response_size_bytes)
            for e in events] == [("cid/0", 200, 12.0, 100, 900), ("cid/4", 200, 30.0, 0, 50),
                                 ("cid/8", 503, 7.0, 0, 0)]
    first = events[0]
    assert (first.api_name, first.api_version, first.destination, first.destination_service) == (
        "reviews", "v1", "reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local")
    assert (first.source_workload, first.destination_workload, first.reporter, first.protocol) == (
        "productpage-v1", "reviews-v1", "destination", "http")
    assert first.properties["connection_security_policy"] == "mutual_tls"
    assert (first.application_id, first.subscription_tier) == ("anonymous", "Unauthenticated")
    assert first.request_timestamp_ms == int(NOW_S * 1000)  # no time dimension: the collector's receive time
    assert events[2].fault


def test_privacy_options_minimise_ip_and_user() -> None:
    mapper = mapper_(privacy=Privacy(user_ip="truncate", user_name="hash"))
    ev = map_one(mapper, wso2_instance("Bearer " + make_jwt(CLAIMS)))
    assert ev.user_ip == "10.0.0.0"
    assert ev.user_name.startswith("sha256:") and "alice" not in ev.user_name
    ev = map_one(mapper_(privacy=Privacy(user_ip="hash")), wso2_instance())
    assert ev.user_ip.startswith("sha256:") and "10.0.0.7" not in ev.user_ip


def test_limits_are_configurable() -> None:
    inst = wso2_instance()
    inst.dimensions["user_agent"].CopyFrom(t.Value(string_value="x" * 50))
    mapped = mapper_(limits=Limits(max_string_bytes=10)).map_call(decode(m.HandleMetricRequest(instances=[inst])), "c")
    assert [r.code for r in mapped.rejected] == [RejectCode.STRING_TOO_LONG]


def test_an_instance_naming_no_api_is_refused_with_its_own_code() -> None:
    """Usage no API owns cannot be attributed, billed or throttled: dead-lettered, not counted as ''."""
    mapper = mapper_()
    for api_name in (None, ""):
        inst = wso2_instance()
        if api_name is None:
            del inst.dimensions["api_name"]
        else:
            inst.dimensions["api_name"].CopyFrom(t.Value(string_value=api_name))
        mapped = mapper.map_call(decode(m.HandleMetricRequest(dedup_id="1", instances=[inst])), "cid")
        assert mapped.events == []
        assert [r.code for r in mapped.rejected] == [RejectCode.MISSING_API]
