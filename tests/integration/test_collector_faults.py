"""The collector under faults, with real processes: a private Kafka broker that
the test kills with SIGKILL, a collector process killed with SIGKILL while it
holds a spool, and a spool that runs out of room.

Each scenario ends with the pipeline run into a store and a key-by-key
comparison with the simulator's ground truth: nothing lost, nothing doubled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from apim_analytics.demo import _free_port, start_collector, stop_collector
from pipeline.job import run as run_pipeline
from pipeline.settings import PipelineSettings
from schemas.mixer.template.metric import template_handler_service_pb2_grpc as metric_grpc
from simulator.catalog import build_catalog
from simulator.check import compare
from simulator.cli import SimulationConfig, simulate
from simulator.mixer import build_requests
from simulator.tokens import Credentials, SigningKey, subscription_catalog_rows
from simulator.traffic import generate

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

REPO = Path(__file__).resolve().parents[2]
SEED = 5
START_MS = (int(time.time()) // 3600 - 1) * 3600 * 1000


class PrivateBroker:
    """A Kafka broker of our own (other ports, other data folder) that a test may kill."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.env = {**os.environ, "APIM_LOCAL_DIR": str(root), "KAFKA_PORT": str(self.port),
                    "KAFKA_CONTROLLER_PORT": str(_free_port()), "KAFKA_HEAP": "384m",
                    # reuse the jars the main broker already fetched
                    "KAFKA_LIBS": str(REPO / ".local" / "kafka" / "libs")}
        self.root = root

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _script(self, action: str) -> None:
        subprocess.run([str(REPO / "deploy/local/kafka.sh"), action], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=180)

    def start(self) -> None:
        self._script("start")

    def kill(self) -> None:
        pid = int((self.root / "kafka" / "broker.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)

    def stop(self) -> None:
        self._script("stop")


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    b = PrivateBroker(tmp_path_factory.mktemp("broker"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _subscriptions(tmp_path: Path) -> Path:
    path = tmp_path / "subscriptions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in subscription_catalog_rows(build_catalog(seed=SEED))))
    return path


class CollectorProcess:
    """A real collector process, with its Prometheus endpoint for the test to read."""

    def __init__(self, broker: PrivateBroker, topic: str, tmp_path: Path, *extra: str) -> None:
        self.target = f"127.0.0.1:{_free_port()}"
        self.metrics = f"127.0.0.1:{_free_port()}"
        self.proc = start_collector(self.target, broker.bootstrap, topic, _subscriptions(tmp_path),
                                    tmp_path / "collector.log", metrics_listen=self.metrics,
                                    extra_args=["--ack-timeout-s", "2", *extra])

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5).read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not exported")

    def wait_drained(self, timeout_s: float = 120.0) -> None:
        """The spool is durable: before comparing, let what it holds reach Kafka."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.metric("apim_collector_spool_depth_records") == 0 and self.metric("apim_collector_spooling") == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"spool not drained after {timeout_s}s")

    def stop(self) -> None:
        stop_collector(self.proc)


def _pipeline(broker: PrivateBroker, topic: str, store: str) -> None:
    run_pipeline(PipelineSettings(kafka=broker.bootstrap, topic=topic, store=store, max_records_per_run=500))


def test_broker_killed_twice_mid_stream_every_event_exactly_once(broker: PrivateBroker, tmp_path: Path) -> None:
    topic = "usage.faults"
    store = f"sqlite:///{tmp_path / 'store.db'}"
    collector = CollectorProcess(broker, topic, tmp_path)
    target = collector.target
    outcome: dict[str, object] = {}

    def send() -> None:
        config = SimulationConfig(target=target, rate=200.0, duration=150.0, start=START_MS, seed=SEED,
                                  batch_size=50, concurrency=4, realtime=True, speed=15.0, ground_truth=None,
                                  max_attempts=10)
        outcome["report"], outcome["truth"] = simulate(config)

    sender = threading.Thread(target=send)
    try:
        sender.start()
        for _ in range(2):  # twice, with traffic flowing the whole time
            time.sleep(2.0)
            broker.kill()
            time.sleep(3.0)
            broker.start()
        sender.join(120)
        assert not sender.is_alive()
        # the broker was really away while calls arrived: their records went to the spool
        assert collector.metric("apim_collector_records_spooled_total") > 0
        collector.wait_drained()
    finally:
        collector.stop()
    report, truth = outcome["report"], outcome["truth"]
    assert report.failures == 0
    assert report.instances == 30_000
    _pipeline(broker, topic, store)
    result = compare(store, truth)
    assert result.exact, result.describe()
    assert result.stored_requests == 30_000


def test_collector_sigkilled_holding_a_spool_loses_nothing(broker: PrivateBroker, tmp_path: Path) -> None:
    topic = "usage.spool"
    store = f"sqlite:///{tmp_path / 'store.db'}"
    collector = CollectorProcess(broker, topic, tmp_path)
    broker.kill()  # Kafka goes away; the collector must spool
    config = SimulationConfig(target=collector.target, rate=100.0, duration=100.0, start=START_MS, seed=SEED,
                              batch_size=100, concurrency=4, ground_truth=None)
    report, truth = simulate(config)
    assert (report.failures, report.instances) == (0, 10_000)
    spool = tmp_path / "spool"
    assert any(spool.glob("*.seg")), "calls were answered, so their events must be in the spool"
    assert collector.metric("apim_collector_spool_depth_records") > 0
    collector.proc.send_signal(signal.SIGKILL)  # no graceful shutdown, no flush
    collector.proc.wait()
    broker.start()
    collector = CollectorProcess(broker, topic, tmp_path)  # same spool folder: drains on start
    try:
        collector.wait_drained()
        assert collector.metric("apim_collector_records_drained_total") > 0
    finally:
        collector.stop()
    _pipeline(broker, topic, store)
    result = compare(store, truth)
    assert result.exact, result.describe()
    assert result.stored_requests == 10_000


def test_full_spool_refuses_with_unavailable_and_drops_nothing(broker: PrivateBroker, tmp_path: Path) -> None:
    topic = "usage.full"
    store = f"sqlite:///{tmp_path / 'store.db'}"
    collector = CollectorProcess(broker, topic, tmp_path, "--spool-max-mb", "1")
    target = collector.target
    catalog = build_catalog(seed=SEED)
    credentials = Credentials(catalog, SigningKey.generate(), start_ms=START_MS, duration_s=60)
    requests = list(build_requests(generate(catalog, rate=100.0, duration_s=60.0, start_ms=START_MS, seed=SEED,
                                            credentials=credentials), batch_size=100))
    accepted, refused = [], []
    try:
        broker.kill()
        with grpc.insecure_channel(target) as channel:
            stub = metric_grpc.HandleMetricServiceStub(channel)
            for req in requests:
                try:
                    stub.HandleMetric(req, timeout=30)
                    accepted.append(req)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    assert "spool" in exc.details()
                    refused.append(req)
            assert accepted and refused  # the spool filled up part way
            broker.start()
            # Mixer retries the refused calls once Kafka is back: now they are accepted.
            deadline = time.monotonic() + 60
            pending = list(refused)
            while pending and time.monotonic() < deadline:
                try:
                    stub.HandleMetric(pending[0], timeout=30)
                    pending.pop(0)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    time.sleep(0.5)
            assert not pending
        collector.wait_drained()
    finally:
        collector.stop()
    _pipeline(broker, topic, store)
    from simulator.ground_truth import GroundTruth

    truth = GroundTruth()
    truth.add_all(generate(catalog, rate=100.0, duration_s=60.0, start_ms=START_MS, seed=SEED,
                           credentials=credentials))
    result = compare(store, truth)
    assert result.exact, result.describe()
    assert result.stored_requests == 6_000
