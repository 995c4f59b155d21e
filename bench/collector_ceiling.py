"""Where the collector's CPU goes: the same traffic against the collector with stages switched off.

Three collector processes in turn, each sent the same pre-built Mixer calls
(100 instances each, 8 in flight) from this process; the collector's CPU is
read from /proc:

- ``no-op``: a gRPC server whose handler returns at once (grpc.aio's own cost);
- ``no-mapping``: the real collector with mapping switched off (gRPC, decode,
  call digest, retry window; no events, so nothing for Kafka);
- ``no-kafka``: the real collector with delivery switched off (everything but Kafka);
- ``full``: the real collector, producing to the real broker.

The differences price each stage; ``no-mapping`` is the ceiling of the
architecture however fast mapping and producing become.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from apim_analytics.demo import _free_port
from bench.cpu import process_cpu_s

MODES = ("no-op", "no-mapping", "no-kafka", "full")
#: Calls in flight from the load generator.
CONCURRENCY = 8


def build_calls(events: int, batch: int = 100, seed: int = 7) -> list:
    """The load: simulated Mixer calls (``batch`` instances each, an hour old) covering ``events`` requests."""
    from simulator.catalog import build_catalog
    from simulator.mixer import build_requests
    from simulator.traffic import generate

    catalog = build_catalog(seed=seed)
    start_ms = (int(time.time()) // 3600 - 1) * 3_600_000
    return list(build_requests(generate(catalog, rate=1000.0, duration_s=events / 1000.0, start_ms=start_ms,
                                        seed=seed), batch_size=batch))


def serve(mode: str, port: int, kafka: str, spool: str) -> None:
    """Run one collector variant (in a child process)."""
    import grpc

    if mode == "no-op":
        async def noop() -> None:
            async def handler(raw: bytes, context: object) -> bytes:
                return b""

            server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                "metric.HandleMetricService", {"HandleMetric": grpc.unary_unary_rpc_method_handler(handler)}),))
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            print("ready", flush=True)
            await server.wait_for_termination()

        asyncio.run(noop())
        return
    from collector import delivery, mapping
    from collector.server import Collector
    from collector.settings import CollectorSettings

    if mode == "no-mapping":
        mapping.InstanceMapper.map_call = lambda self, decoded, call_id="": mapping.MappedCall()  # a stage switched off
    elif mode == "no-kafka":
        async def deliver(self: object, records: list) -> str:
            return "kafka"

        delivery.SafeDelivery.deliver = deliver

    async def real() -> None:
        collector = Collector(CollectorSettings(listen=f"127.0.0.1:{port}", kafka=kafka, topic="bench.ceiling",
                                                metrics_listen="", spool_dir=spool))
        await collector.start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(real())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "PORT", "SPOOL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.kafka, args.serve[2])
        return 0

    from simulator.sender import SendSettings, send

    calls = build_calls(args.events)
    results = []
    for mode in MODES:
        port = _free_port()
        spool = f"/tmp/apim-bench-ceiling-{os.getpid()}-{mode}"
        proc = subprocess.Popen([sys.executable, "-m", "bench.collector_ceiling", "--kafka", args.kafka,
                                 "--serve", mode, str(port), spool],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            proc.stdout.readline()
            cpu0 = process_cpu_s(proc.pid)
            report = send(iter(calls), SendSettings(target=f"127.0.0.1:{port}", concurrency=CONCURRENCY))
            cpu = process_cpu_s(proc.pid) - cpu0
        finally:
            proc.kill()
            proc.wait()
        results.append({"mode": mode, "events": report.instances, "cpu_s": round(cpu, 3),
                        "events_per_cpu_s": round(report.instances / cpu) if cpu else None,
                        "cpu_us_per_event": round(cpu / report.instances * 1e6, 1)})
    print(f"{'collector variant':<14}{'events':>9}{'CPU-s':>8}{'events/CPU-s':>14}{'us/event':>10}")
    for r in results:
        print(f"{r['mode']:<14}{r['events']:>9,}{r['cpu_s']:>8}{r['events_per_cpu_s']:>14,}{r['cpu_us_per_event']:>10}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "collector-ceiling-latest.json").write_text(json.dumps(
        {"benchmark": "collector_ceiling", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
