"""Issue 4, section 6: the pipeline against the real broker and both real stores.

Crashes at chosen points (while reading, before the store transaction, inside
it, after it), replays of the same offsets, late and out-of-order events,
duplicate event ids, poison records, bounded runs, and the database going
away and coming back. Every test ends by comparing the store with the
simulator's ground truth, exactly, at every granularity.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import func, select, text

import pipeline.bounded as bounded
import pipeline.job as job
import pipeline.transforms as source
from bench.feed import Feed, simulated_calls
from collector.columns import build_columns
from core.record_format import USAGE_RECORD_SCHEMA
from pipeline.job import run, run_once
from pipeline.offsets import stored_offsets
from pipeline.settings import PipelineSettings
from schemas.apim.usage.v1.dead_letter_pb2 import DeadLetter
from simulator.check import compare_all
from simulator.ground_truth import GroundTruth
from store import tables as t
from store.engine import make_engine
from tests.support.planning import plan_ranges

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

HOUR_MS = 3_600_000
# Three hours ago, on the hour, so the minute buckets are whole.
START_MS = (int(time.time() * 1000) // HOUR_MS - 3) * HOUR_MS
HEADERS = [("schema", USAGE_RECORD_SCHEMA)]


def produce(bootstrap: str, topic: str, *, seed: int, rate: float, duration_s: float, start_ms: int = START_MS,
            feed: Feed | None = None) -> Feed:
    """Simulated traffic through the collector's code path onto the topic; returns its ground truth."""
    feed = feed or Feed(GroundTruth())
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, compression_type="lz4")
    for _call_id, records in simulated_calls(seed=seed, rate=rate, duration_s=duration_s, start_ms=start_ms,
                                            partitions=3, feed=feed):
        for r in records:
            producer.send(topic, r.value, key=r.batch_id.encode(), partition=r.partition, headers=HEADERS)
    producer.flush()
    producer.close()
    return feed


def settings(bootstrap: str, topic: str, store_url: str, **kw) -> PipelineSettings:
    return PipelineSettings(kafka=bootstrap, topic=topic, store=store_url, dead_letter_topic=f"{topic}.dlq",
                            interval_s=0.2, **kw)


def assert_exact(store_url: str, truth: GroundTruth) -> None:
    for granularity, comparison in compare_all(store_url, truth).items():
        assert comparison.exact, f"{granularity}: {comparison.describe()}"


def scalar(store_url: str, stmt) -> int:
    engine = make_engine(store_url, readonly=True)
    try:
        with engine.connect() as conn:
            return int(conn.execute(stmt).scalar() or 0)
    finally:
        engine.dispose()


def total_records(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


class Crash(RuntimeError):
    """Injected."""


@contextmanager
def crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> Iterator[None]:
    """Make the next run fail at ``point``; the FnApiRunner runs DoFns in this process, so patches apply."""
    with monkeypatch.context() as m:
        if point == "while reading":
            calls = {"n": 0}
            real = source.aggregate_chunk

            def failing(chunk, keep=None):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise Crash("between reads")
                return real(chunk, keep)
            m.setattr(source, "aggregate_chunk", failing)
        elif point == "before the transaction":
            m.setattr(bounded, "commit_run", lambda *a, **k: (_ for _ in ()).throw(Crash("before commit")))
        elif point == "inside the transaction":
            import pipeline.commit as commit

            def failing_remember(*a, **k):
                raise Crash("after the facts were written, before COMMIT")
            m.setattr(commit, "_remember_calls", failing_remember)
        elif point == "after the transaction":
            real_commit = bounded.commit_run

            def commit_then_crash(*a, **k):
                real_commit(*a, **k)
                raise Crash("after COMMIT")
            m.setattr(bounded, "commit_run", commit_then_crash)
        else:
            raise ValueError(point)
        yield


POINTS = ("while reading", "before the transaction", "inside the transaction", "after the transaction")


def test_crashes_at_random_points_then_reruns_give_identical_totals(
        kafka_bootstrap: str, topic: str, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    feed = produce(kafka_bootstrap, topic, seed=21, rate=100, duration_s=120)
    records = total_records(kafka_bootstrap, topic)
    s = settings(kafka_bootstrap, topic, store_url, max_records_per_run=10,  # 120 records: one per call
                 chunk_events=1500)
    job.prepare_store(s)
    rng = random.Random(4)
    crashes = [rng.choice(POINTS) for _ in range(6)]
    crashes[:4] = POINTS  # every point at least once, then random ones
    committed_runs = 0
    for point in crashes:
        with crash_at(monkeypatch, point), pytest.raises(Exception, match=r"Crash|between reads|before commit|COMMIT"):
            run_once(s, [])
        if point == "after the transaction":
            committed_runs += 1
    results = run(s)
    assert sum(r.records for r in results) == records - s.max_records_per_run * committed_runs
    assert_exact(store_url, feed.truth)
    assert scalar(store_url, select(func.sum(t.usage_minute.c.requests))) == 12_000
    # the throttle counters saw every admitted request exactly once too
    admitted = scalar(store_url, select(func.sum(t.usage_minute.c.requests - t.usage_minute.c.throttled_out)))
    assert scalar(store_url, select(func.sum(t.throttle_counters.c.requests))
                  .where(t.throttle_counters.c.level == "subscription")) == admitted
    assert scalar(store_url, select(func.sum(t.pipeline_runs.c.events))) == 12_000


def test_a_replay_of_the_same_offsets_is_refused_and_changes_nothing(
        kafka_bootstrap: str, topic: str, store_url: str) -> None:
    feed = produce(kafka_bootstrap, topic, seed=22, rate=50, duration_s=60)
    s = settings(kafka_bootstrap, topic, store_url)
    job.prepare_store(s)
    engine = make_engine(store_url)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    plan = plan_ranges(consumer, topic, stored_offsets(engine, topic), 10_000)
    consumer.close()
    assert run(s)[0].events == 3_000
    offsets = stored_offsets(engine, topic)
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    with (pytest.raises(Exception, match=r"ConcurrentRunError|is at offset"),
          beam.Pipeline(options=PipelineOptions(bounded.DEFAULT_BEAM_ARGS)) as p):
        bounded.build_pipeline(p, s, plan, {})
    assert stored_offsets(engine, topic) == offsets
    engine.dispose()
    assert_exact(store_url, feed.truth)
    assert run(s) == []


def test_late_and_out_of_order_events_land_in_their_own_buckets(
        kafka_bootstrap: str, topic: str, store_url: str) -> None:
    s = settings(kafka_bootstrap, topic, store_url)
    feed = produce(kafka_bootstrap, topic, seed=23, rate=50, duration_s=120, start_ms=START_MS + HOUR_MS)
    assert run(s)[0].events == 6_000
    # Then traffic from an hour earlier, a day earlier and two days earlier arrives, newest first
    # (within the minute table's 3-day retention, which the run's purge enforces).
    for offset_ms in (0, -24 * HOUR_MS, -48 * HOUR_MS):
        produce(kafka_bootstrap, topic, seed=24, rate=20, duration_s=60, start_ms=START_MS + offset_ms, feed=feed)
        run(s)
    assert feed.events == 6_000 + 3 * 1_200
    assert_exact(store_url, feed.truth)
    days = scalar(store_url, select(func.count(func.distinct(t.usage_day.c.bucket_start))))
    assert days == len({(START_MS + o) // (24 * HOUR_MS) for o in (HOUR_MS, 0, -24 * HOUR_MS, -48 * HOUR_MS)})


def test_retention_purges_each_granularity_at_its_own_age(store_url: str) -> None:
    import datetime as dt

    from store.engine import create_schema
    from store.retention import RetentionSettings, purge

    engine = make_engine(store_url)
    create_schema(engine)
    now = dt.datetime(2026, 11, 26, 12, 0)
    ages = [dt.timedelta(days=d) for d in (1, 4, 100, 400, 4000)]
    dims = {"api_name": "A", "api_version": "1", "api_context": "/a", "application_id": "x", "tier": "Gold",
            "key_type": "PRODUCTION", "resource_template": "/r", "method": "GET"}
    with engine.begin() as conn:
        for table in t.USAGE_TABLES.values():
            conn.execute(table.insert(), [{**dims, "bucket_start": now - age, "requests": 1} for age in ages])
    deleted = purge(engine, RetentionSettings(), now=now)
    assert {k: v for k, v in deleted.items() if k.startswith("usage_") and v} == {
        "usage_minute": 4, "usage_hour": 3, "usage_day": 2, "usage_month": 1}
    with engine.connect() as conn:
        left = {g: conn.execute(select(func.count()).select_from(tb)).scalar() for g, tb in t.USAGE_TABLES.items()}
    assert left == {"minute": 1, "hour": 2, "day": 3, "month": 4}
    engine.dispose()


def test_duplicate_event_ids_and_poison_records(kafka_bootstrap: str, topic: str, store_url: str) -> None:
    """Producers that set event ids: a repeated id counts once. Poison goes to the dead-letter topic."""
    def batch(ids: list[str], code: int, call_id: str):
        b = build_columns(events(len(ids), code), call_id=call_id, producer_id="other-gateway")
        b.event_id.values.extend(sorted(set(ids)))
        b.event_id.codes.extend(sorted(set(ids)).index(i) for i in ids)
        return b

    def events(n: int, code: int) -> list[dict]:
        return [{"call_index": i, "request_timestamp_ms": START_MS + i * 1000,
                 "api_name": "PizzaAPI", "api_version": "1.0.0", "api_context": "/pizza/1.0.0",
                 "application_id": "app-1", "subscription_tier": "Gold", "response_code": code,
                 "request_size_bytes": 10, "response_size_bytes": 100} for i in range(n)]

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    first = batch(["e1", "e2", "e3", "e2"], 200, "k1")
    second = batch(["e3", "e4"], 503, "k2")
    sends = [(b"k1", first.SerializeToString(), HEADERS), (b"bad", b"\x0a\xff\xff\xff", HEADERS),
             (b"k2", second.SerializeToString(), HEADERS), (b"old", second.SerializeToString(),
                                                            [("schema", b"apim.usage.v1.UsageEventColumns")])]
    for key, value, headers in sends:
        producer.send(topic, value, key=key, partition=0, headers=headers).get(30)
    producer.close()
    s = settings(kafka_bootstrap, topic, store_url)
    [result] = run(s)
    assert (result.records, result.events, result.duplicates, result.undecodable) == (4, 4, 2, 2)
    usage = t.usage_minute.c
    assert scalar(store_url, select(func.sum(usage.requests))) == 4
    assert scalar(store_url, select(func.sum(usage.count_5xx))) == 1  # e4 only: e3 was counted with k1
    assert stored_offsets(make_engine(store_url), topic) == {0: 4}
    consumer = KafkaConsumer(f"{topic}.dlq", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    letters = [DeadLetter.FromString(m.value) for m in consumer]
    consumer.close()
    assert [(d.stage, d.partition, d.offset, d.reason_code) for d in letters] == [
        ("pipeline", 0, 1, "UNDECODABLE_RECORD"), ("pipeline", 0, 3, "UNKNOWN_SCHEMA")]
    assert letters[0].record_value == b"\x0a\xff\xff\xff"
    assert "expected apim.usage.v1.UsageEventColumns;format=2" in letters[1].reason


def test_a_large_backlog_is_worked_off_in_bounded_runs(kafka_bootstrap: str, topic: str, store_url: str) -> None:
    feed = produce(kafka_bootstrap, topic, seed=25, rate=100, duration_s=60)
    records = total_records(kafka_bootstrap, topic)
    results = run(settings(kafka_bootstrap, topic, store_url, max_records_per_run=40))
    assert [r.records for r in results] == [40] * (records // 40) + ([records % 40] if records % 40 else [])
    assert sum(r.events for r in results) == 6_000
    assert_exact(store_url, feed.truth)


def http_get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(port: int | None, name: str) -> float:
    """A sample from the pipeline's /metrics (or, with no port, from this process's registry)."""
    if port is None:
        from prometheus_client import REGISTRY

        return REGISTRY.get_sample_value(name) or 0.0
    for line in http_get(port, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


class Proxy:
    """A TCP forwarder to the real PostgreSQL that can be taken down and brought back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.listen(64)
        self.up = threading.Event()
        self.up.set()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            server = socket.create_connection(self.target)
            self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self) -> None:
        self.up.clear()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def close(self) -> None:
        self.down()
        self.listener.close()


def test_the_database_unavailable_and_then_back(kafka_bootstrap: str, topic: str, store_url: str) -> None:
    """Follow mode keeps going through an outage: PostgreSQL behind a proxy that is cut; SQLite held locked."""
    feed = produce(kafka_bootstrap, topic, seed=26, rate=100, duration_s=60)
    proxy = None
    url = store_url
    if store_url.startswith("postgresql"):
        from sqlalchemy.engine import make_url

        parsed = make_url(store_url)
        proxy = Proxy((parsed.host, parsed.port))
        url = parsed.set(port=proxy.port).render_as_string(hide_password=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s = settings(kafka_bootstrap, topic, url, follow=True, max_records_per_run=50,
                 metrics_listen=f"127.0.0.1:{port}", unhealthy_after_s=3.0)
    job.prepare_store(s)
    events_before = metric(None, "apim_pipeline_events_total")
    stop = threading.Event()
    results: list = []
    worker = threading.Thread(target=lambda: results.extend(run(s, stop=stop)), daemon=True)
    blocker = None
    if proxy is not None:
        proxy.down()
    else:
        import sqlite3

        blocker = sqlite3.connect(store_url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
    worker.start()
    time.sleep(6)  # the pipeline meets the outage and backs off
    assert scalar(store_url, select(func.count()).select_from(t.pipeline_runs)) == 0
    assert http_get(port, "/healthz")[0] == 503  # records waiting, nothing committing
    if proxy is not None:
        proxy.up.set()
    else:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and scalar(store_url, select(func.sum(t.pipeline_runs.c.events))) < 6_000:
        time.sleep(0.5)
    # the metrics move just after a run's commit, and the backlog gauge when the next (empty) run is planned
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (metric(port, "apim_pipeline_events_total") - events_before != 6_000
                                           or metric(port, "apim_pipeline_backlog_records") != 0):
        time.sleep(0.2)
    assert metric(port, "apim_pipeline_events_total") - events_before == 6_000
    assert metric(port, "apim_pipeline_backlog_records") == 0
    assert http_get(port, "/healthz") == (200, "ok\n")
    stop.set()
    worker.join(60)
    if proxy is not None:
        proxy.close()
    assert scalar(store_url, select(func.sum(t.pipeline_runs.c.events))) == 6_000
    assert_exact(store_url, feed.truth)
    with make_engine(store_url).connect() as conn:
        assert conn.execute(text("select 1")).scalar() == 1


def test_an_idle_once_run_imports_neither_beam_nor_pandas(kafka_bootstrap: str, topic: str, store_url: str) -> None:
    """A ``--once`` that finds nothing to read plans with the store and one consumer only: Beam alone
    costs 1.6 CPU-s to import here, and a cron job runs ``--once`` whether or not events came."""
    import subprocess
    import sys

    probe = ("import sys; from apim_analytics.cli import main; rc = main(); "
             "print(sorted(m for m in ('apache_beam', 'pandas', 'numpy', 'alembic') if m in sys.modules)); "
             "sys.exit(rc)")
    args = ["pipeline", "run", "--once", "--kafka", kafka_bootstrap, "--topic", topic, "--store", store_url]
    first = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]  # creates the schema: Alembic may load here
    idle = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert idle.returncode == 0, idle.stderr[-2000:]
    assert idle.stdout.splitlines() == ["pipeline: 0 run(s), 0 records, 0 events, 0 duplicates dropped, 0 records "
                                        "sent to the dead-letter topic, 0 requests folded into resource 'other'",
                                        "[]"]
