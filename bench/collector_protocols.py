"""The collector's CPU per 1,000 events for each protocol a mesh speaks: ``python -m bench.collector_protocols``.

The same simulated requests, pre-built, go to a real ``apim-analytics
collector serve`` process producing to the real broker, once per protocol:

- ``mixer``: HandleMetric calls of 100 ``wso2-metrics`` instances, 8 in flight (Istio 1.1-1.7);
- ``als``: Envoy ALS v3 streams, one per sidecar, each message one sidecar flush
  (Envoy's 16 KiB ``buffer_size_bytes``), a reconnect every 100 messages;
- ``otel``: OTLP log exports of the same flushes, 8 in flight.

The collector's CPU time comes from /proc. Mixer is the baseline of the same
run. Results go to bench/results/collector-protocols.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from apim_analytics.demo import _free_port, start_collector, stop_collector
from bench.cpu import process_cpu_s

RESULTS = Path(__file__).resolve().parent / "results" / "collector-protocols.json"
PROTOCOLS = ("mixer", "als", "otel")
CONCURRENCY = 8


def build_load(protocol: str, events: int, seed: int = 7) -> list[Any]:
    """Pre-built calls, flushes or exports covering ``events`` requests an hour old."""
    from simulator.catalog import build_catalog
    from simulator.envoy import flushes, otlp_export
    from simulator.mixer import build_requests
    from simulator.traffic import generate

    catalog = build_catalog(seed=seed)
    start_ms = (int(time.time()) // 3600 - 1) * 3_600_000
    requests = generate(catalog, rate=1000.0, duration_s=events / 1000.0, start_ms=start_ms, seed=seed)
    if protocol == "mixer":
        return list(build_requests(requests, batch_size=100))
    batches = list(flushes(requests, flush_interval_ms=1000, buffer_bytes=16384))
    return batches if protocol == "als" else [otlp_export(f) for f in batches]


def measure(protocol: str, load: list[Any], kafka: str, work: Path, kafka_client: str = "kafka-python"
            ) -> dict[str, Any]:
    from simulator.catalog import build_catalog
    from simulator.openapi import load_catalog
    from simulator.sender import SendSettings, send
    from simulator.tokens import subscription_catalog_rows

    catalog = build_catalog(seed=7)
    subs = work / "subscriptions.jsonl"
    subs.write_text("".join(json.dumps(r) + "\n" for r in subscription_catalog_rows(catalog)))
    store = f"sqlite:///{work / 'apis.db'}"
    load_catalog(store, catalog.apis)
    target = f"127.0.0.1:{_free_port()}"
    topic = f"bench.protocols.{protocol}.{os.getpid()}"
    proc = start_collector(target, kafka, topic, subs, work / f"collector-{protocol}.log",
                           extra_args=["--apis-store", store, "--apis-refresh-s", "0", "--kafka-client", kafka_client])
    settings = SendSettings(target=target, concurrency=CONCURRENCY)
    try:
        cpu0, t0 = process_cpu_s(proc.pid), time.perf_counter()
        if protocol == "als":
            from simulator.als_sender import send_streams

            report = send_streams(iter(load), settings, stream_messages=100)
        else:
            report = send(iter(load), settings, protocol=protocol)
        wall = time.perf_counter() - t0
        cpu = process_cpu_s(proc.pid) - cpu0
    finally:
        stop_collector(proc)
    events = report.instances
    return {"protocol": protocol, "events": events, "messages": report.calls, "failures": report.failures,
            "events_per_message": round(events / report.calls, 1) if report.calls else None,
            "wall_s": round(wall, 3), "events_per_s_wall": round(events / wall) if wall else None,
            "collector_cpu_s": round(cpu, 3), "events_per_cpu_s": round(events / cpu) if cpu else None,
            "cpu_s_per_1000_events": round(cpu / events * 1000, 4) if events else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.collector_protocols", description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=60_000, help="requests per protocol (default 60,000)")
    parser.add_argument("--kafka-client", default="kafka-python", choices=("kafka-python", "confluent"),
                        help="the collector's producer library")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"default {RESULTS.name}, or collector-protocols-confluent.json for confluent")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS if args.kafka_client == "kafka-python" else RESULTS.with_name(
            "collector-protocols-confluent.json")
    results = []
    with tempfile.TemporaryDirectory(prefix="apim-bench-protocols-") as tmp:
        for protocol in PROTOCOLS:
            load = build_load(protocol, args.events)
            results.append(measure(protocol, load, args.kafka, Path(tmp), args.kafka_client))
    base = results[0]["cpu_s_per_1000_events"]
    print(f"{'protocol':<8}{'events':>9}{'messages':>10}{'events/msg':>11}{'events/s':>10}{'events/CPU-s':>14}"
          f"{'CPU-s/1k events':>17}{'vs mixer':>10}")
    for r in results:
        ratio = round(r["cpu_s_per_1000_events"] / base, 2) if base and r["cpu_s_per_1000_events"] else None
        r["cpu_vs_mixer"] = ratio
        print(f"{r['protocol']:<8}{r['events']:>9,}{r['messages']:>10,}{r['events_per_message']:>11}"
              f"{r['events_per_s_wall']:>10,}{r['events_per_cpu_s']:>14,}{r['cpu_s_per_1000_events']:>17}{ratio:>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "collector_protocols", "kafka_client": args.kafka_client,
                                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "machine": {"cores": os.cpu_count()}, "results": results}, indent=2) + "\n")
    return 0 if all(r["failures"] == 0 and r["events"] == args.events for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
