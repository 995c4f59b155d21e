"""``python -m bench`` (``make bench``): every benchmark, on this machine, with the real broker and
PostgreSQL, then the summary table (bench/report.py) written into the README.

In order: the CLI's start-up CPU; the spine, Kafka record and spool micro-benchmarks; collector ingest
(events/s per core, CPU-s per 1,000 events), also per protocol (Mixer, ALS, OTLP); pipeline throughput
against the pandas baseline measured in the same run (SQLite and PostgreSQL); end-to-end freshness at
20,000 offered events/s and at a rate this machine sustains; analyst query latency on PostgreSQL holding
30 days; peak memory of the collector and of the pipeline working off a 10,000,000-event backlog; the
fault scenarios, for Mixer and for ALS and OTLP. Each writes its JSON to bench/results/. About an hour
on 2 cores.
"""

import sys

from bench import (
    cli_startup,
    collector_ceiling,
    collector_protocols,
    faults,
    freshness,
    kafka_records,
    memory,
    pipeline,
    pipeline_idle,
    query_latency,
    report,
    spine,
    spool,
)
from core import logs

logs.configure("WARNING")
steps = [
    ("CLI start-up", lambda: cli_startup.main([])),
    ("idle pipeline run --once", lambda: pipeline_idle.main([])),
    ("spine", lambda: spine.main(sys.argv[1:])),
    ("kafka records", lambda: kafka_records.main([])),
    ("spool", lambda: spool.main([])),
    ("collector ingest", lambda: collector_ceiling.main([])),
    ("collector ingest per protocol (Mixer, ALS, OTLP)", lambda: collector_protocols.main([])),
    ("pipeline, SQLite", lambda: pipeline.main(["--store", "sqlite"])),
    ("pipeline, PostgreSQL", lambda: pipeline.main(["--store", "postgresql", "--kafka-clients", "kafka-python"])),
    ("freshness at 20,000 events/s", lambda: freshness.main(["--rate", "20000"])),
    ("freshness at 2,000 events/s", lambda: freshness.main(["--rate", "2000", "--out",
                                                            str(freshness.RESULTS.with_name("freshness-2000.json"))])),
    ("analyst query latency", lambda: query_latency.main([])),
    ("memory", lambda: memory.main([])),
    ("faults", lambda: faults.main([])),
    ("faults, Envoy ALS", lambda: faults.main(["--protocol", "als"])),
    ("faults, OTLP", lambda: faults.main(["--protocol", "otel"])),
]
status = 0
for name, step in steps:
    print(f"\n=== {name}", flush=True)
    status |= step()
print()
report.main(["--readme", "README.md"])
sys.exit(status)
