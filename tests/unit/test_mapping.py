"""WSO2 metric instances -> UsageEvents, and callers resolved from credentials."""

from __future__ import annotations

import base64
import json

import pytest
from google.protobuf import timestamp_pb2

from collector.credentials import CredentialResolver, SubscriptionCatalog, credential_hash
from collector.mapping import InstanceMapper, InstanceRejected, short_name
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


def test_short_name_strips_kind_and_namespace() -> None:
    assert short_name("wso2-metrics.instance.istio-system") == "wso2-metrics"
    assert short_name("requestcount.instance.default") == "requestcount"
    assert short_name("plain") == "plain"


def test_wso2_instance_maps_every_dimension() -> None:
    mapper = InstanceMapper(CredentialResolver(), clock=lambda: 1_700_000_001.0)
    ev = mapper.map_instance(wso2_instance("Bearer " + make_jwt(CLAIMS)), dedup_id="17", index=0)
    assert ev.source == pb.MIXER_METRIC_ADAPTER
    assert ev.source_instance == "wso2-metrics.instance.istio-system"
    assert (ev.api_name, ev.api_version, ev.api_context) == ("PizzaAPI", "1.0.0", "/pizza/1.0.0")
    assert (ev.api_resource_path, ev.api_resource_template, ev.api_method) == ("/orders/42", "/orders/{id}", "GET")
    assert (ev.user_ip, ev.user_agent) == ("10.0.0.7", "curl/8")
    assert (ev.request_timestamp_ms, ev.response_timestamp_ms) == (1_700_000_000_250, 1_700_000_000_280)
    assert ev.response_latency_ms == 30.0
    assert (ev.request_size_bytes, ev.response_size_bytes, ev.response_code) == (321, 2048, 200)
    assert (ev.protocol, ev.destination, ev.api_hostname, ev.gateway_type) == (
        "https", "pizza.default.svc.cluster.local", "api.example.com", "ISTIO")
    assert ev.collected_timestamp_ms == 1_700_000_001_000
    # caller, from the JWT claims
    assert (ev.application_id, ev.application_name, ev.application_owner, ev.application_tier) == (
        "app-1", "Shop", "bob", "50PerMin")
    assert (ev.subscription_tier, ev.consumer_key, ev.key_type) == ("Gold", "ck-123", pb.SANDBOX)
    assert (ev.user_name, ev.user_tenant_domain) == ("alice@acme.com", "acme.com")
    assert (ev.api_creator, ev.api_creator_tenant_domain) == ("admin@pub.org", "pub.org")
    assert ev.credential_kind == pb.JWT


def test_raw_token_never_appears_in_the_event() -> None:
    token = make_jwt(CLAIMS)
    ev = InstanceMapper(CredentialResolver()).map_instance(wso2_instance("Bearer " + token), dedup_id="1", index=0)
    raw = ev.SerializeToString()
    assert token.encode() not in raw
    for part in token.split("."):
        assert part.encode() not in raw
    assert ev.credential_hash == credential_hash(token)


def test_anonymous_request_is_kept_as_unauthenticated() -> None:
    ev = InstanceMapper(CredentialResolver()).map_instance(wso2_instance(""), dedup_id="1", index=0)
    assert (ev.application_id, ev.subscription_tier, ev.credential_kind) == ("anonymous", "Unauthenticated", pb.NONE)


def test_opaque_token_resolves_through_the_catalog(tmp_path) -> None:  # type: ignore[no-untyped-def]
    token = "0f8fad5b-d9cb-469f-a165-70867728950e"
    path = tmp_path / "subs.jsonl"
    path.write_text(json.dumps({
        "credential_sha256": credential_hash(token), "application_id": "app-9", "application_name": "Nine",
        "application_owner": "carol", "application_tier": "10PerMin", "consumer_key": "ck-9",
        "key_type": "PRODUCTION", "user_name": "carol@carbon.super",
        "subscriptions": [{"api_name": "PizzaAPI", "api_version": "1.0.0", "tier": "Silver"}],
    }) + "\n")
    resolver = CredentialResolver(SubscriptionCatalog.load(path))
    ev = InstanceMapper(resolver).map_instance(wso2_instance("Bearer " + token), dedup_id="1", index=0)
    assert (ev.application_id, ev.subscription_tier, ev.key_type, ev.credential_kind) == (
        "app-9", "Silver", pb.PRODUCTION, pb.OPAQUE_TOKEN)


def test_unknown_opaque_token_is_unresolved_not_dropped() -> None:
    ev = InstanceMapper(CredentialResolver()).map_instance(wso2_instance("Bearer opaque"), dedup_id="1", index=0)
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
    ev = InstanceMapper(CredentialResolver()).map_instance(wso2_instance(code=code), dedup_id="1", index=0)
    assert (ev.fault, ev.throttled_out) == (fault, throttled)


def test_event_ids_are_deterministic_and_distinct() -> None:
    mapper = InstanceMapper(CredentialResolver())
    req = m.HandleMetricRequest(dedup_id="99", instances=[wso2_instance(), wso2_instance(code=404)])
    first, _ = mapper.map_request(req)
    retry, _ = mapper.map_request(req)
    assert [e.event_id for e in first] == [e.event_id for e in retry]
    assert len({e.event_id for e in first}) == 2
    other_mixer = m.HandleMetricRequest(dedup_id="99", instances=[wso2_instance(code=500), wso2_instance()])
    ids, _ = mapper.map_request(other_mixer)
    assert not {e.event_id for e in ids} & {e.event_id for e in first}


def test_unknown_instance_and_wrong_kind_are_rejected_with_reasons() -> None:
    mapper = InstanceMapper(CredentialResolver())
    bad_kind = wso2_instance()
    bad_kind.dimensions["response_code"].CopyFrom(t.Value(string_value="two hundred"))
    req = m.HandleMetricRequest(dedup_id="5", instances=[
        wso2_instance(), wso2_instance(name="mystery.instance.default"), bad_kind])
    events, rejected = mapper.map_request(req)
    assert len(events) == 1
    assert [i for i, _ in rejected] == [1, 2]
    assert "unknown instance 'mystery.instance.default'" in rejected[0][1]
    assert "not an integer" in rejected[1][1]
    with pytest.raises(InstanceRejected):
        mapper.map_instance(req.instances[1], dedup_id="5", index=1)
