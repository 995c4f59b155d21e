"""simulator.envoy and simulator.openapi: Envoy-shaped flushes, entries the collector reads back exactly,
and OpenAPI documents the catalog loader accepts."""

from __future__ import annotations

from collections import Counter

from collector.access_log import http_attributes, split_message
from core.api_catalog import ApiCatalog, check_loadable, parse_openapi
from schemas.envoy.data.accesslog.v3 import accesslog_pb2 as log_pb
from simulator.catalog import build_catalog
from simulator.envoy import als_message, flushes, otlp_export, sidecar_of
from simulator.openapi import openapi_document
from simulator.tokens import Credentials, SigningKey
from simulator.traffic import generate

START = 1_700_000_040_000
KEY = SigningKey.generate()


def requests(rate: float = 200.0, duration: float = 5.0):
    catalog = build_catalog(seed=5)
    credentials = Credentials(catalog, KEY, start_ms=START, duration_s=duration)
    return catalog, list(generate(catalog, rate=rate, duration_s=duration, start_ms=START, seed=5,
                                  credentials=credentials))


def test_flushes_are_per_sidecar_within_the_interval_and_the_buffer_size() -> None:
    _, reqs = requests()
    out = list(flushes(reqs, flush_interval_ms=1000, buffer_bytes=4096))
    assert sum(len(f.requests) for f in out) == len(reqs) == 1000
    assert sorted(id(r) for f in out for r in f.requests) == sorted(id(r) for r in reqs)  # each once
    for f in out:
        assert {r.api.destination for r in f.requests} == {f.requests[0].api.destination}
        assert sidecar_of(f.requests[0].api) == f.sidecar
        assert max(r.request_ts_ms for r in f.requests) // 1000 == min(r.request_ts_ms for r in f.requests) // 1000
        assert sum(map(len, f.entries)) < 4096 + max(map(len, f.entries))  # flushed as soon as it is full
    per_second = Counter((f.sidecar.node_id, f.requests[0].request_ts_ms // 1000) for f in out)
    assert max(per_second.values()) > 1  # busy sidecars flush on size before the timer
    one_big = list(flushes(reqs, flush_interval_ms=10_000, buffer_bytes=1 << 30))
    assert len(one_big) == len({r.api.destination for r in reqs})


def test_the_collector_reads_back_exactly_what_the_simulator_logged() -> None:
    catalog, reqs = requests(duration=1.0)
    apis = ApiCatalog(parse_openapi(openapi_document(a), a.name) for a in catalog.apis)
    flush = next(iter(flushes(reqs, flush_interval_ms=1000, buffer_bytes=1 << 20)))
    message = split_message(als_message(flush, first=True))
    assert message.identifier is not None and len(message.http) == len(flush.requests)
    for raw, r in zip(message.http, flush.requests, strict=True):
        attrs = http_attributes(log_pb.HTTPAccessLogEntry.FromString(raw), {})
        assert (attrs["request.time"], attrs["request.size"], attrs["response.size"], attrs["response.code"]) == \
            (("ts", r.request_ts_ms), r.request_size, r.response_size, r.response_code)
        assert attrs["request.auth_header"] == r.auth_header
        found = apis.match(attrs["request.host"], attrs["request.path"], attrs["request.method"])
        assert found is not None
        assert (found.api.name, found.api.version, found.resource_template, found.resource_path) == \
            (r.api.name, r.api.version, r.resource_template, r.resource_path)
        if r.response_code == 429:
            assert attrs["response.flags"] == "RL"
    records = otlp_export(flush).resource_logs[0].scope_logs[0].log_records
    assert [x.time_unix_nano // 1_000_000 for x in records] == [r.request_ts_ms for r in flush.requests]


def test_the_catalog_as_openapi_loads_and_routes_apart() -> None:
    catalog = build_catalog(seed=7)
    apis = [parse_openapi(openapi_document(a), f"{a.name}.yaml") for a in catalog.apis]
    check_loadable(apis)
    assert [(a.name, a.version, a.context, a.hostnames) for a in apis] == \
        [(a.name, a.version, a.context, (a.hostname,)) for a in catalog.apis]
    assert [sorted((r.method, r.template) for r in a.resources) for a in apis] == \
        [sorted(a.resources) for a in catalog.apis]
