"""The spine, end to end, against the real broker and both stores.

Simulator -> real gRPC -> collector -> real Kafka -> Beam pipeline -> store,
then the store must equal the simulator's ground truth exactly, key by key.
Mixer retries (the same dedup ids sent again) must not change a single count.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from collector.server import Collector
from collector.settings import CollectorSettings
from pipeline.job import run as run_pipeline
from pipeline.settings import PipelineSettings
from schemas.mixer.template.metric import template_handler_service_pb2_grpc as metric_grpc
from simulator.catalog import build_catalog
from simulator.check import compare, stored_cells, truth_cells
from simulator.cli import SimulationConfig, simulate
from simulator.mixer import build_requests
from simulator.tokens import Credentials, SigningKey, subscription_catalog_rows
from simulator.traffic import generate

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

SEED = 11
RATE, DURATION = 100.0, 150.0  # 15,000 requests over 2.5 simulated minutes
# Two hours ago, on the hour: recent enough for the collector's event-age check, and
# whole minutes so the ground truth's buckets are stable.
START_MS = (int(time.time()) // 3600 - 2) * 3600 * 1000


class RunningCollector:
    """An in-process collector on an ephemeral port, its event loop in a thread."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.loop = asyncio.new_event_loop()
        self.collector = Collector(settings)
        self.port = self.loop.run_until_complete(self.collector.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.collector.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def collector(kafka_bootstrap: str, topic: str, tmp_path: Path) -> Iterator[RunningCollector]:
    subs = tmp_path / "subscriptions.jsonl"
    subs.write_text("".join(json.dumps(r) + "\n" for r in subscription_catalog_rows(build_catalog(seed=SEED))))
    running = RunningCollector(CollectorSettings(listen="127.0.0.1:0", kafka=kafka_bootstrap, topic=topic,
                                                 subscriptions=str(subs), metrics_listen="",
                                                 spool_dir=str(tmp_path / "spool")))
    try:
        yield running
    finally:
        running.stop()


def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def test_store_equals_ground_truth_exactly_with_mixer_retries(
    collector: RunningCollector, kafka_bootstrap: str, topic: str, store_url: str, tmp_path: Path
) -> None:
    key = SigningKey.generate()
    config = SimulationConfig(target=collector.target, rate=RATE, duration=DURATION, start=START_MS, seed=SEED,
                              batch_size=100, concurrency=4, ground_truth=str(tmp_path / "truth.csv"), key=key)
    report, truth = simulate(config)
    assert report.failures == 0
    assert report.instances == int(RATE * DURATION)

    # Mixer retries the first 20 calls: same dedup ids, same instances. The
    # collector recognises them and publishes nothing new.
    retries_before = REGISTRY.get_sample_value("apim_collector_retries_recognised_total") or 0.0
    ends_before = _end_offsets(kafka_bootstrap, topic)
    catalog = build_catalog(seed=SEED)
    credentials = Credentials(catalog, key, start_ms=START_MS, duration_s=DURATION)
    requests = generate(catalog, rate=RATE, duration_s=DURATION, start_ms=START_MS, seed=SEED,
                        credentials=credentials)
    with grpc.insecure_channel(collector.target) as channel:
        stub = metric_grpc.HandleMetricServiceStub(channel)
        for i, req in enumerate(build_requests(requests, batch_size=100,
                                               instance_name="wso2-metrics.instance.istio-system",
                                               dedup_base=0)):
            if i == 20:
                break
            stub.HandleMetric(req, timeout=30)

    assert (REGISTRY.get_sample_value("apim_collector_retries_recognised_total") or 0.0) - retries_before == 20
    assert _end_offsets(kafka_bootstrap, topic) == ends_before

    # Small runs, so the backlog is worked off in several bounded steps.
    results = run_pipeline(PipelineSettings(kafka=kafka_bootstrap, topic=topic, store=store_url,
                                            max_records_per_run=100))
    assert len(results) >= 2
    assert sum(r.records for r in results) == sum(ends_before.values())
    assert sum(r.events for r in results) == int(RATE * DURATION)

    comparison = compare(store_url, truth)
    assert comparison.exact, comparison.describe()
    assert comparison.stored_requests == 15_000
    assert len(stored_cells(store_url)) == len(truth_cells(truth))

    # A second run finds nothing new and changes nothing.
    assert run_pipeline(PipelineSettings(kafka=kafka_bootstrap, topic=topic, store=store_url)) == []
    assert compare(store_url, truth).exact


def test_a_call_delivered_twice_counts_once_even_across_runs(kafka_bootstrap: str, topic: str,
                                                              store_url: str) -> None:
    """The same call id twice (a timed-out send that arrived plus its spooled copy),
    repeated event ids, and a poison record: each event is counted exactly once."""
    from collector.columns import build_columns
    from core.record_format import USAGE_RECORD_SCHEMA

    def events(codes: list[int]) -> list[dict]:
        return [{"call_index": i, "request_timestamp_ms": START_MS + i * 1000, "api_name": "PizzaAPI",
                 "api_version": "1.0.0", "application_id": "app-1", "subscription_tier": "Gold",
                 "response_code": c, "request_size_bytes": 10, "response_size_bytes": 100}
                for i, c in enumerate(codes)]

    call_a = build_columns(events([200] * 10), call_id="call-a", producer_id="p").SerializeToString()
    call_b = build_columns(events([404] * 4), call_id="call-b", producer_id="p").SerializeToString()
    headers = [("schema", USAGE_RECORD_SCHEMA)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for key, payload, hdrs in ((b"call-a", call_a, headers), (b"call-a", call_a, headers),
                               (b"x", b"\xff\xffnot a protobuf", headers),
                               (b"y", call_b, [("schema", b"other.v9.Thing")])):
        producer.send(topic, payload, key=key, partition=1, headers=hdrs).get(30)
    producer.flush()

    results = run_pipeline(PipelineSettings(kafka=kafka_bootstrap, topic=topic, store=store_url))
    assert [(r.records, r.events, r.duplicates, r.undecodable) for r in results] == [(4, 10, 10, 2)]

    # A third copy of call-a arrives later, in another run: still counted once.
    producer.send(topic, call_a, key=b"call-a", partition=1, headers=headers).get(30)
    producer.send(topic, call_b, key=b"call-b", partition=1, headers=headers).get(30)
    producer.close()
    results = run_pipeline(PipelineSettings(kafka=kafka_bootstrap, topic=topic, store=store_url))
    assert [(r.records, r.events, r.duplicates) for r in results] == [(2, 4, 10)]
    rows = stored_cells(store_url)
    assert sum(v[0] for v in rows.values()) == 10
    assert sum(v[2] for v in rows.values()) == 4
    assert sum(v[5] for v in rows.values()) == 1400


def test_the_optional_confluent_producer_lands_every_event(kafka_bootstrap: str, topic: str,
                                                            tmp_path: Path) -> None:
    """--kafka-client confluent (librdkafka) keeps the same contract as kafka-python."""
    subs = tmp_path / "subscriptions.jsonl"
    subs.write_text("".join(json.dumps(r) + "\n" for r in subscription_catalog_rows(build_catalog(seed=SEED))))
    running = RunningCollector(CollectorSettings(listen="127.0.0.1:0", kafka=kafka_bootstrap, topic=topic,
                                                 subscriptions=str(subs), metrics_listen="",
                                                 spool_dir=str(tmp_path / "spool"), kafka_client="confluent"))
    try:
        config = SimulationConfig(target=running.target, rate=50.0, duration=60.0, start=START_MS, seed=SEED,
                                  ground_truth=None)
        report, truth = simulate(config)
    finally:
        running.stop()
    assert (report.failures, report.instances) == (0, 3000)
    store = f"sqlite:///{tmp_path / 'store.db'}"
    run_pipeline(PipelineSettings(kafka=kafka_bootstrap, topic=topic, store=store))
    result = compare(store, truth)
    assert result.exact, result.describe()
    assert result.stored_requests == 3000
