"""Pipeline throughput: events per CPU-second from Kafka to the store, next to a pandas baseline.

``python -m bench.pipeline [--events N] [--store sqlite|postgresql]``

1. Simulated traffic goes through the collector's own code path (mapping,
   columnar records) once; the calls are then replayed with shifted
   timestamps and fresh call ids until there are ``--events`` events, and
   produced to a fresh topic. The record shape is what collectors publish.
2. The pipeline (``pipeline run --once`` with its default settings: FnApiRunner,
   bounded runs) works the backlog off into a fresh store. Its CPU seconds are
   this process's (the runner is in-process); the broker's are not counted.
3. The baseline reads the same records with kafka-python, decodes them with
   the same compiled decoder, and groups them with one pandas groupby on the
   same keys (integer codes): the practical limit for Python on this data.
4. A breakdown prices each stage on its own (fetch, decode, aggregate).

Results go to bench/results/pipeline-latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import pipeline.bounded  # noqa: F401 - Beam imported before measuring: bench.pipeline_idle prices start-up
from bench.cpu import own_cpu_s
from bench.feed import simulated_events
from collector.columns import BatchRecord, partitioned_records
from core.record_format import USAGE_RECORD_SCHEMA
from core.topics import ensure_topic
from pipeline.aggregate import aggregate_chunk, finish, merge
from pipeline.builders import new_builder
from pipeline.job import run
from pipeline.settings import PipelineSettings
from schemas.apim.usage.v1.usage_event_columns_pb2 import UsageEventColumns
from store.tables import USAGE_DIMENSIONS

HOUR_MS = 3_600_000
PG_URL = os.environ.get("APIM_BENCH_PG_URL", "postgresql+psycopg://apim:apim@127.0.0.1:55432/apim_test")


class Replay:
    """Calls replayed as copies: copy ``k`` has its request times shifted and its call ids suffixed ``.<k>``.

    The records of a copy are exactly what :func:`partitioned_records` makes of the shifted events (only the
    header's produced time differs): each call is encoded once, and its copies patch the timestamp column and
    the call id of the encoded records, about 15x cheaper than encoding every copy from event dicts.
    """

    def __init__(self, calls: list[tuple[str, list[dict]]], partitions: int) -> None:
        self.calls = [(call_id, len(evs), [(r, UsageEventColumns.FromString(r.value)) for r in partitioned_records(
            evs, partitions=partitions, call_id=call_id, producer_id="bench")]) for call_id, evs in calls]

    def copy(self, copy: int, shift_ms: int) -> Iterator[tuple[int, list[BatchRecord]]]:
        """(events, records) per call of copy ``copy``."""
        for call_id, events, encoded in self.calls:
            out = []
            for r, columns in encoded:
                batch_id = f"{call_id}.{copy}{r.batch_id[len(call_id):]}"
                copied = UsageEventColumns()
                copied.CopyFrom(columns)
                copied.header.call_id = batch_id
                del copied.request_timestamp_ms[:]
                copied.request_timestamp_ms.extend([t + shift_ms for t in columns.request_timestamp_ms])
                out.append(BatchRecord(r.partition, batch_id, copied.SerializeToString(), r.events))
            yield events, out


def produce(kafka: str, topic: str, events: int, partitions: int, rate: float, seed: int) -> dict:
    """Fill ``topic`` with ``events`` simulated events (replayed calls); returns what was produced."""
    base_duration = 100.0
    start_ms = (int(time.time() * 1000) // HOUR_MS - 6) * HOUR_MS
    calls = list(simulated_events(seed=seed, rate=rate, duration_s=base_duration, start_ms=start_ms))
    per_copy = sum(len(e) for _, e in calls)
    producer = KafkaProducer(bootstrap_servers=kafka, acks=1, linger_ms=20, batch_size=1 << 20,
                             compression_type="lz4", max_request_size=16 << 20)
    replay = Replay(calls, partitions)
    produced = records = copy = 0
    while produced < events:
        shift = int(copy * base_duration * 1000)
        for n, batch in replay.copy(copy, shift):
            if produced >= events:
                break
            for r in batch:
                producer.send(topic, r.value, key=r.batch_id.encode(), partition=r.partition,
                              headers=[("schema", USAGE_RECORD_SCHEMA)])
                records += 1
            produced += n
        copy += 1
    producer.flush()
    producer.close()
    return {"events": produced, "records": records, "events_per_record": round(produced / records, 1),
            "distinct_calls": len(calls), "events_per_copy": per_copy}


def bench_pipeline(kafka: str, topic: str, store: str, kafka_client: str = "kafka-python") -> dict:
    settings = PipelineSettings(kafka=kafka, topic=topic, store=store, dead_letter_topic="", kafka_client=kafka_client)
    cpu0, t0 = own_cpu_s(), time.perf_counter()
    results = run(settings)
    wall, cpu = time.perf_counter() - t0, own_cpu_s() - cpu0
    events = sum(r.events for r in results)
    return {"events": events, "runs": len(results), "records": sum(r.records for r in results),
            "fact_rows": sum(r.fact_rows for r in results), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "events_per_s_wall": round(events / wall), "events_per_cpu_s": round(events / cpu)}


def _read_all(kafka: str, topic: str):
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, auto_offset_reset="earliest",
                             max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    ends = consumer.end_offsets(tps)
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        for records in consumer.poll(timeout_ms=1000, max_records=20_000).values():
            yield from records
    consumer.close()


def bench_baseline(kafka: str, topic: str) -> dict:
    """Fetch + the same decoder + one pandas groupby on the same keys and sums."""
    cpu0, t0 = own_cpu_s(), time.perf_counter()
    builder = new_builder()
    for record in _read_all(kafka, topic):
        builder.add(record.value)
        builder.accept()
    chunk = builder.take()
    ts = chunk.numbers["request_timestamp_ms"]
    frame = {"minute": ts - ts % 60_000}
    dims = {"tier": "subscription_tier", "method": "api_method", "resource_template": "api_resource_template"}
    for d in USAGE_DIMENSIONS:
        frame[d] = chunk.strings[dims.get(d, d)][0] if d != "key_type" else chunk.numbers["key_type"]
    code = chunk.numbers["response_code"] // 100
    for c in range(2, 6):
        frame[f"count_{c}xx"] = (code == c)
    for name in ("request_size_bytes", "response_size_bytes", "throttled_out", "fault"):
        frame[name] = chunk.numbers[name]
    frame["latency_us"] = np.rint(chunk.numbers["response_latency_ms"] * 1000).astype(np.int64)
    df = pd.DataFrame(frame)
    grouped = df.groupby(["minute", *USAGE_DIMENSIONS], sort=False).agg(
        requests=("latency_us", "size"), latency_sum=("latency_us", "sum"), latency_min=("latency_us", "min"),
        latency_max=("latency_us", "max"), **{k: (k, "sum") for k in frame if k.startswith("count_")},
        request_bytes=("request_size_bytes", "sum"), response_bytes=("response_size_bytes", "sum"))
    wall, cpu = time.perf_counter() - t0, own_cpu_s() - cpu0
    return {"events": chunk.n, "groups": len(grouped), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "events_per_s_wall": round(chunk.n / wall), "events_per_cpu_s": round(chunk.n / cpu)}


def bench_stages(kafka: str, topic: str) -> dict:
    """Each stage alone, in microseconds per event."""
    cpu0 = own_cpu_s()
    values = [r.value for r in _read_all(kafka, topic)]
    fetch = own_cpu_s() - cpu0
    confluent_fetch = None
    try:
        from pipeline.offsets import OffsetRange
        from pipeline.readers import ConfluentRanges

        consumer = KafkaConsumer(bootstrap_servers=kafka)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(tps)
        consumer.close()
        cpu0 = own_cpu_s()
        reader = ConfluentRanges(kafka)
        got = sum(len(batch) for tp in tps for batch in reader.read(OffsetRange(topic, tp.partition, 0, ends[tp])))
        reader.close()
        confluent_fetch = own_cpu_s() - cpu0
        assert got == len(values)
    except ImportError:
        pass
    cpu0 = own_cpu_s()
    builder = new_builder()
    chunks = []
    for v in values:
        builder.add(v)
        builder.accept()
        if builder.n >= 200_000:
            chunks.append(builder.take())
    chunks.append(builder.take())
    decode = own_cpu_s() - cpu0
    n = sum(c.n for c in chunks)
    cpu0 = own_cpu_s()
    partials = [aggregate_chunk(c) for c in chunks]
    chunk_agg = own_cpu_s() - cpu0
    cpu0 = own_cpu_s()
    finish(merge(partials), {}, 200)
    merge_finish = own_cpu_s() - cpu0
    return {"events": n, "records": len(values), "fetch_us": round(fetch / n * 1e6, 3),
            "fetch_confluent_us": round(confluent_fetch / n * 1e6, 3) if confluent_fetch is not None else None,
            "decode_us": round(decode / n * 1e6, 3), "aggregate_chunk_us": round(chunk_agg / n * 1e6, 3),
            "merge_and_rollups_us": round(merge_finish / n * 1e6, 3)}


@contextmanager
def fresh_store(kind: str, sqlite_path: Path) -> Iterator[str]:
    """An empty SQLite file or a private PostgreSQL schema, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{sqlite_path}"
        return
    from sqlalchemy import text

    from store.engine import make_engine

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rate", type=float, default=2000.0, help="simulated requests/s of the base traffic")
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--kafka-clients", default="kafka-python,confluent",
                        help="pipeline runs to measure, one per Kafka client (the first is the headline)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    topic = f"bench.pipeline.{uuid.uuid4().hex[:8]}"
    ensure_topic(args.kafka, topic, args.partitions)
    produced = produce(args.kafka, topic, args.events, args.partitions, args.rate, args.seed)
    pipelines = {}
    with tempfile.TemporaryDirectory() as tmp:
        for client in args.kafka_clients.split(","):
            with fresh_store(args.store, Path(tmp) / f"{client}.db") as store:
                pipelines[client] = bench_pipeline(args.kafka, topic, store, client)
        baseline = bench_baseline(args.kafka, topic)
        stages = bench_stages(args.kafka, topic)
    pipeline = pipelines[args.kafka_clients.split(",")[0]]
    results = {
        "benchmark": "pipeline", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "store": args.store, "produced": produced, "pipeline": pipeline, "pipeline_by_kafka_client": pipelines,
        "pandas_baseline": baseline,
        "stages_us_per_event": stages,
        "pipeline_cpu_vs_baseline": round(baseline["events_per_cpu_s"] / pipeline["events_per_cpu_s"], 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"pipeline-{args.store}-latest.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    b, s = baseline, stages
    print(f"pipeline benchmark, {results['date']}, {os.cpu_count()} cores, {produced['events']:,} events in "
          f"{produced['records']:,} records ({produced['events_per_record']} per record), store {args.store}")
    print(f"{'':<52}{'events/s (wall)':>16}{'events/CPU-s':>14}")
    for client, q in pipelines.items():
        label = f"pipeline ({client} -> Beam -> {args.store}, {q['runs']} runs)"
        print(f"{label:<52}{q['events_per_s_wall']:>16,}{q['events_per_cpu_s']:>14,}")
    print(f"{'pandas baseline (kafka-python, decode, groupby)':<52}{b['events_per_s_wall']:>16,}"
          f"{b['events_per_cpu_s']:>14,}")
    print(f"pipeline uses {results['pipeline_cpu_vs_baseline']}x the baseline's CPU per event; "
          f"stages (us/event): fetch {s['fetch_us']} (confluent {s['fetch_confluent_us']}), "
          f"decode {s['decode_us']}, aggregate {s['aggregate_chunk_us']}, "
          f"merge+rollups {s['merge_and_rollups_us']}; results in {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
