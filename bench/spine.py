"""Spine benchmark: collector ingest and pipeline throughput on this machine.

Measured in one run, against the real local Kafka broker:

1. collector: Mixer calls pre-built by the simulator are sent over gRPC to a
   real ``apim-analytics collector serve`` process; its CPU time comes from
   /proc, so the sender's own cost is not counted. Reported as events/s (wall),
   events per CPU-second (per core), and CPU-seconds per 1,000 events next to
   Mixer's published cost of about 0.6 vCPU per 1,000 requests/s.
2. pipeline: one bounded Beam run from Kafka into a fresh SQLite store, its
   process CPU time measured with getrusage, against a baseline over the same
   records in the same run: kafka-python read + columnar protobuf decode +
   a pandas groupby (the practical Python limit).

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

from apim_analytics.demo import _free_port, start_collector, stop_collector
from bench.cpu import own_cpu_s, process_cpu_s
from core.topics import ensure_topic
from pipeline.job import prepare_store, run_once
from pipeline.settings import PipelineSettings
from simulator.catalog import build_catalog
from simulator.mixer import build_requests
from simulator.sender import SendSettings, send
from simulator.tokens import subscription_catalog_rows
from simulator.traffic import generate

MIXER_CPU_S_PER_1000 = 0.6  # Istio's published Mixer cost: ~0.6 vCPU per 1,000 requests/s


def bench_collector(kafka: str, topic: str, events: int, batch: int, concurrency: int, work: Path,
                    client: str = "kafka-python") -> dict:
    catalog = build_catalog(seed=7)
    subs = work / "subscriptions.jsonl"
    subs.write_text("".join(json.dumps(r) + "\n" for r in subscription_catalog_rows(catalog)))
    t0 = time.perf_counter()
    requests = list(build_requests(generate(catalog, rate=1000.0, duration_s=events / 1000.0,
                                            start_ms=(int(time.time()) // 3600 - 1) * 3_600_000, seed=7),
                                   batch_size=batch))
    build_s = time.perf_counter() - t0
    target = f"127.0.0.1:{_free_port()}"
    proc = start_collector(target, kafka, topic, subs, work / "collector.log", extra_args=["--kafka-client", client])
    try:
        cpu0, t0 = process_cpu_s(proc.pid), time.perf_counter()
        report = send(iter(requests), SendSettings(target=target, concurrency=concurrency))
        wall = time.perf_counter() - t0
        cpu = process_cpu_s(proc.pid) - cpu0
    finally:
        stop_collector(proc)
    sent = report.instances
    return {
        "kafka_client": client, "events": sent, "calls": report.calls, "failures": report.failures, "batch": batch,
        "concurrency": concurrency, "simulator_build_s": round(build_s, 3),
        "wall_s": round(wall, 3), "events_per_s_wall": round(sent / wall),
        "collector_cpu_s": round(cpu, 3), "events_per_cpu_s": round(sent / cpu) if cpu else None,
        "cpu_s_per_1000_events": round(cpu / sent * 1000, 4) if sent else None,
        "mixer_cpu_s_per_1000_events": MIXER_CPU_S_PER_1000,
        "call_p50_ms": report.latency_p50_ms, "call_p99_ms": report.latency_p99_ms,
    }


def bench_pipeline(kafka: str, topic: str, work: Path, max_records: int) -> dict:
    store = f"sqlite:///{work / 'bench.db'}"
    settings = PipelineSettings(kafka=kafka, topic=topic, store=store, max_records_per_run=max_records)
    prepare_store(settings)
    cpu0, t0 = own_cpu_s(), time.perf_counter()
    result = run_once(settings)
    wall, cpu = time.perf_counter() - t0, own_cpu_s() - cpu0
    assert result is not None, "no events to aggregate"
    return {"events": result.events, "records": result.records, "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3), "events_per_s_wall": round(result.events / wall),
            "events_per_cpu_s": round(result.events / cpu)}


def bench_pandas_baseline(kafka: str, topic: str) -> dict:
    """Read the same records, decode, group with pandas: the same work without Beam or SQL."""
    from bench.pipeline import bench_baseline

    return bench_baseline(kafka, topic)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100, help="instances per Mixer call")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--kafka-client", default="kafka-python", choices=["kafka-python", "confluent"])
    args = parser.parse_args(argv)

    topic = f"bench.spine.{uuid.uuid4().hex[:8]}"
    ensure_topic(args.kafka, topic, 6)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        collector = bench_collector(args.kafka, topic, args.events, args.batch, args.concurrency, work,
                                    args.kafka_client)
        pipeline = bench_pipeline(args.kafka, topic, work, max_records=10**9)
        baseline = bench_pandas_baseline(args.kafka, topic)
    results = {
        "benchmark": "spine", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "collector": collector, "pipeline": pipeline, "pandas_baseline": baseline,
        "pipeline_vs_baseline_cpu": round(baseline["events_per_cpu_s"] / pipeline["events_per_cpu_s"], 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "spine-latest.json"
    path.write_text(json.dumps(results, indent=2) + "\n")

    c, p, b = collector, pipeline, baseline
    print(f"spine benchmark, {results['date']}, {os.cpu_count()} cores, {c['events']} events "
          f"({c['batch']} per call, {c['concurrency']} in flight)")
    print(f"{'stage':<34}{'events/s (wall)':>16}{'events/CPU-s':>14}{'CPU-s/1k events':>17}")
    print(f"{'collector (' + c['kafka_client'] + ')':<34}{c['events_per_s_wall']:>16,}{c['events_per_cpu_s']:>14,}"
          f"{c['cpu_s_per_1000_events']:>17}")
    print(f"{'  Istio Mixer, for comparison':<34}{'':>16}{round(1000 / MIXER_CPU_S_PER_1000):>14,}"
          f"{MIXER_CPU_S_PER_1000:>17}")
    print(f"{'pipeline (Kafka -> Beam -> SQLite)':<34}{p['events_per_s_wall']:>16,}{p['events_per_cpu_s']:>14,}"
          f"{round(p['cpu_s'] / p['events'] * 1000, 4):>17}")
    print(f"{'pandas baseline (same records)':<34}{b['events_per_s_wall']:>16,}{b['events_per_cpu_s']:>14,}"
          f"{round(b['cpu_s'] / b['events'] * 1000, 4):>17}")
    print(f"pipeline is {results['pipeline_vs_baseline_cpu']}x the baseline's CPU per event; "
          f"collector call latency p50 {c['call_p50_ms']} ms, p99 {c['call_p99_ms']} ms; results in {path}")
    return 0
