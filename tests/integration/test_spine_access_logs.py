"""The Istio 1.8+ spine, end to end, against the real broker and both stores, for ALS and OTLP.

The simulator's catalog is published as OpenAPI documents and loaded with
``apim-analytics apis load`` into the store; sidecar-shaped traffic goes to
the collector over Envoy ALS v3 streams or OTLP log exports; the pipeline lands
it; the store must equal the simulator's ground truth exactly, key by key, at
every granularity the compare checks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from apim_analytics.cli import main
from collector.settings import CollectorSettings
from pipeline.job import run as run_pipeline
from pipeline.settings import PipelineSettings
from simulator.catalog import build_catalog
from simulator.check import compare_all, stored_cells, truth_cells
from simulator.cli import SimulationConfig, simulate
from simulator.envoy import flushes, otlp_export
from simulator.openapi import write_openapi
from simulator.sender import OTLP_EXPORT
from simulator.tokens import Credentials, SigningKey, subscription_catalog_rows
from simulator.traffic import generate
from tests.integration.test_spine import RunningCollector, _end_offsets

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

SEED = 13
RATE, DURATION = 100.0, 75.0  # 7,500 requests over 1.25 simulated minutes (two minute buckets)
START_MS = (int(time.time()) // 3600 - 2) * 3600 * 1000


@pytest.fixture
def collector(kafka_bootstrap: str, topic: str, store_url: str, tmp_path: Path,
              capsys: pytest.CaptureFixture[str]) -> Iterator[RunningCollector]:
    files = write_openapi(tmp_path / "openapi", build_catalog(seed=SEED).apis)
    assert main(["apis", "load", *map(str, files), "--store", store_url]) == 0
    assert capsys.readouterr().out.startswith(f"apis: {len(files)} API version(s)")
    subs = tmp_path / "subscriptions.jsonl"
    subs.write_text("".join(json.dumps(r) + "\n" for r in subscription_catalog_rows(build_catalog(seed=SEED))))
    running = RunningCollector(CollectorSettings(listen="127.0.0.1:0", kafka=kafka_bootstrap, topic=topic,
                                                 subscriptions=str(subs), apis_store=store_url, metrics_listen="",
                                                 spool_dir=str(tmp_path / "spool")))
    try:
        yield running
    finally:
        running.stop()


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("protocol", ["als", "otel"])
def test_access_logs_land_in_the_store_equal_to_the_ground_truth(
        protocol: str, collector: RunningCollector, kafka_bootstrap: str, topic: str, store_url: str,
        tmp_path: Path) -> None:
    key = SigningKey.generate()
    no_api_before = _sample("apim_collector_access_log_entries_rejected_total",
                            {"protocol": "als" if protocol == "als" else "otlp", "reason": "NO_API"})
    config = SimulationConfig(target=collector.target, rate=RATE, duration=DURATION, start=START_MS, seed=SEED,
                              protocol=protocol, stream_messages=20, concurrency=4,
                              ground_truth=str(tmp_path / "truth.csv"), key=key)
    report, truth = simulate(config)
    assert (report.failures, report.failed_instances, report.invalid_argument) == (0, 0, 0)
    assert report.instances == int(RATE * DURATION)
    if protocol == "als":
        # one stream per sidecar per 20 messages, each confirmed by its OK; no reconnect after a failure
        assert report.retries == 0
        assert report.status_counts == {"OK": report.attempts}
        assert report.attempts >= report.calls / 20
    assert _sample("apim_collector_access_log_entries_rejected_total",
                   {"protocol": "als" if protocol == "als" else "otlp", "reason": "NO_API"}) == no_api_before

    if protocol == "otel":
        # An exporter's retry of answered exports (same bytes) publishes nothing new.
        ends_before = _end_offsets(kafka_bootstrap, topic)
        catalog = build_catalog(seed=SEED)
        credentials = Credentials(catalog, key, start_ms=START_MS, duration_s=DURATION)
        requests = generate(catalog, rate=RATE, duration_s=DURATION, start_ms=START_MS, seed=SEED,
                            credentials=credentials)
        with grpc.insecure_channel(collector.target) as channel:
            export = channel.unary_unary(OTLP_EXPORT, request_serializer=None, response_deserializer=None)
            for i, flush in enumerate(flushes(requests, flush_interval_ms=config.flush_interval_ms,
                                              buffer_bytes=config.buffer_bytes)):
                if i == 10:
                    break
                export(otlp_export(flush).SerializeToString(), timeout=30)
        assert _end_offsets(kafka_bootstrap, topic) == ends_before

    results = run_pipeline(PipelineSettings(kafka=kafka_bootstrap, topic=topic, store=store_url))
    assert sum(r.events for r in results) == int(RATE * DURATION)
    comparisons = compare_all(store_url, truth)
    assert set(comparisons) == {"minute", "hour", "day", "month", "app_day"}
    for granularity, comparison in comparisons.items():
        assert comparison.exact, f"{granularity}: {comparison.describe()}"
        assert comparison.stored_requests == 7_500
        assert len(stored_cells(store_url, granularity)) == len(truth_cells(truth, granularity))
