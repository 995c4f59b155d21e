"""The traffic simulator: reproducible catalog and traffic, Mixer-exact messages, real tokens, gRPC replay."""

from __future__ import annotations

import argparse
import base64
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import fields, replace
from pathlib import Path

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from schemas.mixer.adapter.model.v1beta1.report_pb2 import ReportResult
from schemas.mixer.template.metric import template_handler_service_pb2_grpc as metric_grpc
from schemas.mixer.template.metric.template_handler_service_pb2 import HandleMetricRequest
from simulator import cli
from simulator.catalog import APPLICATION_TIERS, TIERS, Catalog, build_catalog
from simulator.config import SimulationConfig
from simulator.errors import CollectorUnavailable
from simulator.ground_truth import COLUMNS, GroundTruth
from simulator.mixer import DIMENSION_KINDS, MetricRequestBuilder, build_instance, build_requests
from simulator.runner import resolve_start_ms, simulate
from simulator.sender import SendSettings, send
from simulator.tokens import Credentials, SigningKey, opaque_token, subscription_catalog_rows
from simulator.traffic import SimRequest, generate

START_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z, a minute boundary


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def small_catalog() -> Catalog:
    return build_catalog(seed=11, apis=8, applications=25, users=40)


@pytest.fixture(scope="module")
def small_credentials(small_catalog: Catalog, key: SigningKey) -> Credentials:
    return Credentials(small_catalog, key, start_ms=START_MS, duration_s=600)


def _traffic(catalog: Catalog, credentials: Credentials, *, rate: float = 200, duration_s: float = 60, seed: int = 3,
             start_ms: int = START_MS) -> list[SimRequest]:
    return list(generate(catalog, rate=rate, duration_s=duration_s, start_ms=start_ms, seed=seed,
                         credentials=credentials))


def _b64url_json(segment: str) -> dict:
    assert "=" not in segment and "+" not in segment and "/" not in segment
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


# --- catalog ---------------------------------------------------------------


def test_catalog_is_reproducible_and_seed_dependent() -> None:
    assert build_catalog(seed=7) == build_catalog(seed=7)
    assert build_catalog(seed=7) != build_catalog(seed=8)
    assert build_catalog(seed=7).applications[0].subscriptions == build_catalog(seed=7).applications[0].subscriptions


@pytest.mark.parametrize(("apis", "applications", "users"), [(20, 200, 500), (1, 1, 1), (5, 7, 3), (75, 30, 10)])
def test_catalog_has_exact_counts_and_valid_entries(apis: int, applications: int, users: int) -> None:
    c = build_catalog(seed=5, apis=apis, applications=applications, users=users)
    assert (len(c.apis), len(c.applications), len(c.users)) == (apis, applications, users)
    assert len({a.key for a in c.apis}) == apis
    assert len({a.api_id for a in c.apis}) == apis
    assert len({a.id for a in c.applications}) == applications
    assert len({u.name for u in c.users}) == users
    for api in c.apis:
        slug = api.name[:-3].lower()
        assert api.context == f"/{slug}/{api.version}"
        assert api.hostname == f"{slug}.default.svc.cluster.local"
        assert api.destination.endswith(".svc.cluster.local")
        assert api.resources and all(m in {"GET", "POST", "PUT", "PATCH", "DELETE"} and t.startswith("/")
                                     for m, t in api.resources)
        assert api.popularity > 0 and re.fullmatch(r"[0-9a-f-]{36}", api.api_id)
    for app in c.applications:
        assert re.fullmatch(r"[A-Za-z0-9]{28}", app.consumer_key)
        assert app.key_type in {"PRODUCTION", "SANDBOX"} and app.credential in {"JWT", "OPAQUE"}
        assert app.tier in APPLICATION_TIERS
        assert 1 <= len(app.subscriptions) <= min(6, apis)
        assert all(key in {a.key for a in c.apis} and tier in TIERS for key, tier in app.subscriptions.items())
        assert app.users[0] == app.owner and len(set(app.users)) == len(app.users)
        assert all(c.user(u).tenant_domain == app.tenant_domain for u in app.users)
    for user in c.users:
        assert re.fullmatch(r"user\d+@(carbon\.super|acme\.com)", user.name)
        assert len(user.ip) in (4, 16)


def test_catalog_mix_is_realistic() -> None:
    c = build_catalog(seed=7)
    apps = c.applications
    assert 0.08 <= sum(a.key_type == "SANDBOX" for a in apps) / len(apps) <= 0.25
    assert 0.04 <= sum(a.credential == "OPAQUE" for a in apps) / len(apps) <= 0.18
    assert sum(a.creator_tenant_domain == "carbon.super" for a in c.apis) > len(c.apis) / 2
    assert any(a.version in ("2.0.0", "v2") for a in c.apis)  # some APIs have two versions
    popularity = sorted((a.popularity for a in c.apis), reverse=True)
    assert popularity[0] > 5 * popularity[-1]  # Zipf-like skew
    assert TIERS == {"Gold": 5000, "Silver": 2000, "Bronze": 1000, "Unlimited": None, "Unauthenticated": 500}


# --- traffic ---------------------------------------------------------------


def test_traffic_is_reproducible_and_seed_dependent(small_catalog: Catalog, small_credentials: Credentials) -> None:
    a = _traffic(small_catalog, small_credentials, duration_s=30)
    b = _traffic(build_catalog(seed=11, apis=8, applications=25, users=40), small_credentials, duration_s=30)
    assert a == b
    assert GroundTruth().add_all(a) == GroundTruth().add_all(b)
    c = _traffic(small_catalog, small_credentials, duration_s=30, seed=4)
    assert a != c
    assert GroundTruth().add_all(a) != GroundTruth().add_all(c)


@pytest.mark.parametrize(("rate", "duration_s"), [(200, 60), (3, 0.5), (1000, 0.0015), (7, 13.7)])
def test_timestamps_stay_in_the_window(small_catalog: Catalog, small_credentials: Credentials, rate: float,
                                       duration_s: float) -> None:
    reqs = _traffic(small_catalog, small_credentials, rate=rate, duration_s=duration_s,
                    start_ms=START_MS + 123)
    assert len(reqs) == int(rate * duration_s)
    ts = [r.request_ts_ms for r in reqs]
    assert ts == sorted(ts)
    assert all(START_MS + 123 <= t < START_MS + 123 + duration_s * 1000 for t in ts)
    assert all(r.response_ts_ms >= r.request_ts_ms for r in reqs)


def test_response_code_mix_and_shapes_on_100k_requests(small_catalog: Catalog, small_credentials: Credentials) -> None:
    classes: Counter[str] = Counter()
    codes: Counter[int] = Counter()
    post_2xx: Counter[int] = Counter()
    anonymous = ipv6 = get_with_body = gets = 0
    latencies = []
    n = 0
    for r in generate(small_catalog, rate=1000, duration_s=100, start_ms=START_MS, seed=9,
                      credentials=small_credentials):
        n += 1
        classes[r.status_class] += 1
        codes[r.response_code] += 1
        if r.method == "POST" and r.response_code < 300:
            post_2xx[r.response_code] += 1
        if r.is_anonymous:
            anonymous += 1
            assert (r.application_id, r.tier, r.auth_header) == ("anonymous", "Unauthenticated", "")
        else:
            assert r.auth_header.startswith("Bearer ")
            assert small_catalog.api(r.api_name, r.api_version).key in \
                next(a for a in small_catalog.applications if a.id == r.application_id).subscriptions
        if r.method == "GET":
            gets += 1
            get_with_body += r.request_size > 0
        ipv6 += len(r.user_ip) == 16
        assert r.response_time_ms >= r.backend_time_ms >= 0
        if r.response_code in (401, 403, 429):
            assert r.backend_time_ms == 0
        if r.response_code in (204, 304):
            assert r.response_size == 0
        latencies.append(r.response_time_ms)
    assert n == 100_000
    expected = {"2xx": 0.88, "3xx": 0.02, "4xx": 0.08, "5xx": 0.02}
    for cls, share in expected.items():
        assert abs(classes[cls] / n - share) < 0.005, (cls, classes[cls] / n)
    assert set(classes) == set(expected)
    assert {200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 500, 502, 503, 504} <= set(codes)
    assert post_2xx.most_common(1)[0][0] == 201
    assert abs(anonymous / n - 0.03) < 0.005
    assert 0 < ipv6 / n < 0.3
    assert get_with_body / gets < 0.05
    latencies.sort()
    median, p99 = latencies[n // 2], latencies[int(n * 0.99)]
    assert 15 <= median <= 40 and p99 > 4 * median  # log-normal, heavy tail


def test_resource_paths_fill_templates(small_catalog: Catalog, small_credentials: Credentials) -> None:
    for r in _traffic(small_catalog, small_credentials, duration_s=10):
        pattern = re.sub(r"\\\{[^}]+\\\}", r"[0-9]+", re.escape(r.resource_template))
        assert re.fullmatch(pattern, r.resource_path), (r.resource_template, r.resource_path)
        assert (r.method, r.resource_template) in r.api.resources


def test_fast_constructor_builds_equal_requests(small_catalog: Catalog, small_credentials: Credentials) -> None:
    for r in _traffic(small_catalog, small_credentials, duration_s=1):
        plain = SimRequest(**{f.name: getattr(r, f.name) for f in fields(SimRequest)})
        assert plain == r and hash(plain) == hash(r)
        with pytest.raises(AttributeError):
            r.response_code = 1


# --- ground truth ----------------------------------------------------------


def test_ground_truth_counts_exactly_and_round_trips(tmp_path: Path, small_catalog: Catalog,
                                                     small_credentials: Credentials) -> None:
    reqs = _traffic(small_catalog, small_credentials, rate=50, duration_s=300)
    gt = GroundTruth().add_all(reqs)
    totals = gt.totals()
    assert totals == {"requests": len(reqs), "request_bytes": sum(r.request_size for r in reqs),
                      "response_bytes": sum(r.response_size for r in reqs)}
    assert sum(v["requests"] for v in gt.by("api_name", "tier").values()) == len(reqs)
    per_minute = gt.by("bucket_start_ms")
    assert list(per_minute) == [(START_MS + m * 60_000,) for m in range(5)]
    assert gt.by() == {(): totals}
    with pytest.raises(ValueError, match="unknown"):
        gt.by("nope")
    path = tmp_path / "gt.csv"
    gt.write_csv(path)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) == ("bucket_start_ms,api_name,api_version,application_id,tier,"
                                             "status_class,requests,request_bytes,response_bytes")
    assert lines[1:] == sorted(lines[1:], key=lambda line: (int(line.split(",")[0]), *line.split(",")[1:6]))
    assert GroundTruth.read_csv(path) == gt
    half = len(reqs) // 2
    merged = GroundTruth().add_all(reqs[:half]).merge(GroundTruth().add_all(reqs[half:]))
    assert merged == gt
    assert "requests" in gt.summary()


# --- mixer -----------------------------------------------------------------


def test_instances_carry_the_16_dimensions_with_mixer_value_kinds(small_catalog: Catalog,
                                                                  small_credentials: Credentials) -> None:
    reqs = _traffic(small_catalog, small_credentials, duration_s=30)
    msgs = list(build_requests(reqs, batch_size=64, dedup_base=41))
    assert [m.dedup_id for m in msgs] == [str(41 + i) for i in range(len(msgs))]
    assert [len(m.instances) for m in msgs[:-1]] == [64] * (len(msgs) - 1)
    assert sum(len(m.instances) for m in msgs) == len(reqs)
    assert len(DIMENSION_KINDS) == 16
    instances = [i for m in msgs for i in HandleMetricRequest.FromString(m.SerializeToString()).instances]
    saw_anonymous = False
    for r, inst in zip(reqs, instances, strict=True):
        assert inst.name == "wso2-metrics.instance.istio-system"
        assert inst.monitored_resource_type == "UNSPECIFIED"
        assert inst.value.WhichOneof("value") == "int64_value" and inst.value.int64_value == r.request_size
        assert set(inst.dimensions) == set(DIMENSION_KINDS)
        for name, kind in DIMENSION_KINDS.items():
            assert inst.dimensions[name].WhichOneof("value") == kind, name
        d = inst.dimensions
        assert d["auth_header_value"].string_value == r.auth_header
        assert d["resource_path"].string_value == r.resource_path
        assert d["resource_path_template"].string_value == r.resource_template
        assert (d["api_name"].string_value, d["api_version"].string_value, d["api_context"].string_value) == \
               (r.api_name, r.api_version, r.api_context)
        assert d["user_ip"].ip_address_value.value == r.user_ip
        assert d["request_timestamp"].timestamp_value.value.ToMilliseconds() == r.request_ts_ms
        assert d["response_timestamp"].timestamp_value.value.ToMilliseconds() == r.response_ts_ms
        assert (d["response_code"].int64_value, d["response_size"].int64_value) == (r.response_code, r.response_size)
        if r.is_anonymous:
            saw_anonymous = True
            assert d["auth_header_value"].string_value == ""
    assert saw_anonymous
    assert msgs[0].adapter_config.type_url == "type.googleapis.com/adapter.wso2.config.Params"
    assert b"wso2apim-with-analytics-apim-analytics-service.wso2:7575" in msgs[0].adapter_config.value


def test_cached_builder_matches_the_reference_instance(small_catalog: Catalog, small_credentials: Credentials) -> None:
    reqs = _traffic(small_catalog, small_credentials, duration_s=20)
    msg = MetricRequestBuilder(instance_name="custom.instance.ns").build(reqs, "7")
    assert msg.dedup_id == "7"
    for r, inst in zip(reqs, msg.instances, strict=True):
        assert inst == build_instance(r, instance_name="custom.instance.ns")


# --- tokens ----------------------------------------------------------------


def test_jwt_claims_and_signature_verify_with_the_jwks(tmp_path: Path, key: SigningKey) -> None:
    catalog = build_catalog(seed=7, apis=10, applications=20, users=30)
    app = next(a for a in catalog.applications if a.credential == "JWT" and len(a.subscriptions) > 1)
    user = app.users[0]
    creds = Credentials(catalog, key, start_ms=START_MS, duration_s=600)
    header = creds.auth_header(app, user)
    assert header is creds.auth_header(app, user)  # minted once, reused
    token = header.removeprefix("Bearer ")
    h, p, s = token.split(".")
    jwt_header, claims = _b64url_json(h), _b64url_json(p)
    assert jwt_header == {"alg": "RS256", "typ": "JWT", "kid": key.kid}
    subscribed = [{"name": n, "version": v, "context": catalog.api(n, v).context,
                   "publisher": catalog.api(n, v).creator, "subscriberTenantDomain": app.tenant_domain,
                   "subscriptionTier": tier} for (n, v), tier in app.subscriptions.items()]
    tier_info = {tier: {"tierQuotaType": "requestCount", "stopOnQuotaReach": True, "spikeArrestLimit": 0,
                        "spikeArrestUnit": None} for tier in app.subscriptions.values()}
    jti = claims.pop("jti")
    assert re.fullmatch(r"[0-9a-f-]{36}", jti)
    assert claims == {
        "iss": "https://apim.example.com/oauth2/token", "sub": user, "aud": app.consumer_key,
        "azp": app.consumer_key, "consumerKey": app.consumer_key, "keytype": app.key_type,
        "application": {"id": app.id, "uuid": app.id, "name": app.name, "owner": app.owner, "tier": app.tier},
        "subscribedAPIs": subscribed, "tierInfo": tier_info,
        "iat": START_MS // 1000 - 300, "exp": START_MS // 1000 - 300 + 3600,
    }
    jwks_path = tmp_path / "jwks.json"
    key.write_jwks(jwks_path)
    (jwk,) = json.loads(jwks_path.read_text())["keys"]
    assert (jwk["kty"], jwk["alg"], jwk["use"], jwk["kid"]) == ("RSA", "RS256", "sig", key.kid)

    def as_int(b64: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)), "big")

    public = rsa.RSAPublicNumbers(as_int(jwk["e"]), as_int(jwk["n"])).public_key()
    assert public.key_size == 2048
    signature = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    public.verify(signature, f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(InvalidSignature):
        public.verify(signature, f"{h}.{p}x".encode(), padding.PKCS1v15(), hashes.SHA256())
    assert key.public_pem().startswith(b"-----BEGIN PUBLIC KEY-----")
    # Token contents do not depend on the key: same claims with another key.
    other = Credentials(catalog, SigningKey.from_pem(key.private_pem()), start_ms=START_MS, duration_s=600)
    assert other.auth_header(app, user) == header


def test_opaque_tokens_and_subscription_rows_agree_with_the_collector(tmp_path: Path) -> None:
    from collector.credentials import CredentialResolver, SubscriptionCatalog

    catalog = build_catalog(seed=7)
    rows = subscription_catalog_rows(catalog)
    opaque_apps = [a for a in catalog.applications if a.credential == "OPAQUE"]
    assert len(rows) == sum(len(a.users) for a in opaque_apps) > 0
    assert subscription_catalog_rows(build_catalog(seed=7)) == rows
    path = tmp_path / "subscriptions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    resolver = CredentialResolver(SubscriptionCatalog.load(path))
    app = opaque_apps[0]
    user = app.users[-1]
    token = opaque_token(app, user)
    assert len(token) == 36 and "." not in token and token == opaque_token(app, user)
    (name, version), tier = next(iter(app.subscriptions.items()))
    caller = resolver.resolve(f"Bearer {token}", name, version)
    assert (caller.application_id, caller.subscription_tier, caller.key_type, caller.user_name) == \
           (app.id, tier, app.key_type, user)


# --- sender (real gRPC, in-process fake collector) -------------------------


class FakeCollector(metric_grpc.HandleMetricServiceServicer):
    """Fails the first attempt of each call with UNAVAILABLE; rejects chosen dedup_ids as INVALID_ARGUMENT."""

    def __init__(self, *, fail_first: bool = True, invalid: frozenset[str] = frozenset()) -> None:
        self.fail_first = fail_first
        self.invalid = invalid
        self.attempts: Counter[str] = Counter()
        self.payloads: dict[str, set[bytes]] = {}
        self.accepted: list[HandleMetricRequest] = []
        self.lock = threading.Lock()

    def HandleMetric(self, request: HandleMetricRequest, context: grpc.ServicerContext) -> ReportResult:  # noqa: N802
        with self.lock:
            self.attempts[request.dedup_id] += 1
            self.payloads.setdefault(request.dedup_id, set()).add(request.SerializeToString(deterministic=True))
            first = self.attempts[request.dedup_id] == 1
        if request.dedup_id in self.invalid:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad instance")
        if self.fail_first and first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        with self.lock:
            self.accepted.append(request)
        return ReportResult()


Fake = tuple[FakeCollector, str]


@pytest.fixture
def collector() -> Iterator[Fake]:
    servicer = FakeCollector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    metric_grpc.add_HandleMetricServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def _settings(target: str, **kw: object) -> SendSettings:
    return SendSettings(target=target, concurrency=4, timeout_s=5, initial_backoff_s=0.001, max_backoff_s=0.01,
                        **kw)


def test_sender_retries_unavailable_with_the_same_dedup_id(collector: Fake, small_catalog: Catalog,
                                                           small_credentials: Credentials) -> None:
    servicer, target = collector
    reqs = _traffic(small_catalog, small_credentials, rate=100, duration_s=10)
    msgs = list(build_requests(reqs, batch_size=50))
    done: list[tuple[str, bool]] = []
    report = send(msgs, _settings(target), on_done=lambda m, ok: done.append((m.dedup_id, ok)))
    n = len(msgs)
    assert (report.calls, report.attempts, report.retries, report.failures) == (n, 2 * n, n, 0)
    assert report.instances == len(reqs) and report.delivered_calls == n
    assert report.status_counts == {"OK": n, "UNAVAILABLE": n}
    assert set(servicer.attempts.values()) == {2}
    assert all(len(p) == 1 for p in servicer.payloads.values())  # the retry is byte-identical
    assert sorted(done) == sorted((str(i), True) for i in range(n))
    assert 0 < report.latency_p50_ms <= report.latency_p99_ms


def test_sender_counts_invalid_argument_without_retrying(collector: Fake, small_catalog: Catalog,
                                                         small_credentials: Credentials) -> None:
    servicer, target = collector
    servicer.fail_first, servicer.invalid = False, frozenset({"1", "3"})
    reqs = _traffic(small_catalog, small_credentials, rate=100, duration_s=5)
    msgs = list(build_requests(reqs, batch_size=100))
    done: dict[str, bool] = {}
    report = send(msgs, _settings(target), on_done=lambda m, ok: done.__setitem__(m.dedup_id, ok))
    assert (report.calls, report.attempts, report.retries) == (5, 5, 0)
    assert (report.failures, report.invalid_argument, report.failed_instances) == (2, 2, 200)
    assert servicer.attempts["1"] == servicer.attempts["3"] == 1
    assert done == {"0": True, "1": False, "2": True, "3": False, "4": True}


def test_sender_gives_up_after_max_attempts(collector: Fake, small_catalog: Catalog,
                                            small_credentials: Credentials) -> None:
    _servicer, target = collector
    reqs = _traffic(small_catalog, small_credentials, rate=10, duration_s=2)
    msgs = list(build_requests(reqs, batch_size=10))
    with pytest.raises(CollectorUnavailable, match="took no call: UNAVAILABLE after 2 attempts") as info:
        send(msgs, _settings(target, max_attempts=1))  # every call failed: one error, carrying the report
    report = info.value.report
    assert (report.calls, report.attempts, report.failures, report.invalid_argument) == (2, 2, 2, 0)


def test_realtime_pacing_spreads_calls_over_scaled_time(collector: Fake, small_catalog: Catalog,
                                                        small_credentials: Credentials) -> None:
    servicer, target = collector
    servicer.fail_first = False
    reqs = _traffic(small_catalog, small_credentials, rate=20, duration_s=1)
    msgs = list(build_requests(reqs, batch_size=4))
    report = send(msgs, _settings(target, realtime=True, speed=2.0, start_ms=START_MS))
    assert report.failures == 0 and report.calls == 5
    assert 0.3 <= report.elapsed_s < 3.0  # last call due ~0.4 s after the start at 2x speed


# --- simulate() and the CLI ------------------------------------------------


def test_simulate_delivers_exactly_the_ground_truth(collector: Fake, key: SigningKey, tmp_path: Path) -> None:
    servicer, target = collector
    servicer.invalid = frozenset({"102"})
    config = SimulationConfig(target=target, rate=50, duration=30, start=START_MS, seed=5, apis=6,
                              applications=20, users=30, batch_size=25, concurrency=3, dedup_base=100,
                              initial_backoff=0.001, ground_truth=str(tmp_path / "gt.csv"),
                              jwks_out=str(tmp_path / "jwks.json"), key=key)
    report, truth = simulate(config)
    assert (report.calls, report.failures, report.retries) == (60, 1, 59)
    assert truth.totals()["requests"] == report.instances == 1500 - 25
    received = Counter(i.dimensions["api_name"].string_value for m in servicer.accepted for i in m.instances)
    assert received == Counter({k[0]: v["requests"] for k, v in truth.by("api_name").items()})
    assert GroundTruth.read_csv(tmp_path / "gt.csv") == truth
    assert json.loads((tmp_path / "jwks.json").read_text())["keys"][0]["kid"] == key.kid
    dry_report, dry_truth = simulate(replace(config, dry_run=True, ground_truth=None, dedup_base=0))
    assert dry_report.dry_run and dry_report.instances == 1500
    assert dry_truth.totals()["requests"] == 1500
    assert dry_truth.by("api_name", "tier") != truth.by("api_name", "tier")  # the rejected batch is missing


def test_cli_dry_run_writes_ground_truth_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("APIM_SIM_RATE", "40")
    monkeypatch.delenv("APIM_CONFIG", raising=False)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    gt_path = tmp_path / "truth.csv"
    args = parser.parse_args(["--dry-run", "--duration", "5", "--start", "2024-05-01T12:00:00Z", "--apis", "4",
                              "--applications", "6", "--users", "8", "--ground-truth", str(gt_path), "--json"])
    assert cli.run(args) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert (report["instances"], report["calls"], report["start_ms"], report["dry_run"]) == (200, 2, START_MS, True)
    assert report["ground_truth"]["requests"] == 200
    assert "200 events in 2 HandleMetric calls" in out.err
    assert GroundTruth.read_csv(gt_path).totals()["requests"] == 200
    assert "[env: APIM_SIM_TARGET;" in " ".join(parser.format_help().split())


def test_start_accepts_iso_and_epoch_and_defaults_to_the_minute() -> None:
    assert resolve_start_ms("2024-05-01T12:00:00Z") == START_MS
    assert resolve_start_ms("2024-05-01T14:00:00+02:00") == START_MS
    assert resolve_start_ms("2024-05-01T12:00:00") == START_MS
    assert resolve_start_ms(str(START_MS)) == resolve_start_ms(START_MS) == START_MS
    assert resolve_start_ms(None, now_ms=START_MS + 59_999) == START_MS
