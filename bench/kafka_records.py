"""How usage events should travel to Kafka: the record-shape and client options, measured.

The same 100,000 simulated events are produced to the real local broker with
acks=all, idempotence on, lz4, in four ways, and the producing process's CPU
per event is reported (lower is better):

- kafka-python, one UsageEvent row per record (the naive design);
- kafka-python, one UsageEventColumns record per (call of 100 events, partition): what the collector does;
- confluent-kafka (librdkafka), one row per record;
- confluent-kafka, one columnar record per (call, partition).

The encoding cost of each shape is included, since it is part of the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from pathlib import Path

from bench.cpu import own_cpu_s
from collector.columns import partitioned_records
from collector.mapping import event_to_proto
from core.topics import ensure_topic

PARTITIONS = 6


def _events(n: int) -> list[dict]:
    base = int(time.time() * 1000)
    return [{"call_index": i % 100, "request_timestamp_ms": base + i, "api_name": f"API{i % 20}", "api_version": "1.0",
             "api_context": f"/api{i % 20}/1.0", "api_resource_template": "/orders/{id}", "api_method": "GET",
             "application_id": f"app-{i % 200:04d}", "subscription_tier": "Gold", "consumer_key": "ck" * 10,
             "user_name": f"user{i % 500}@carbon.super", "user_ip": "10.1.2.3", "user_agent": "curl/8.4",
             "response_code": 200, "response_latency_ms": 12.5, "request_size_bytes": 120,
             "response_size_bytes": 2048, "destination": "svc.default.svc.cluster.local", "protocol": "https"}
            for i in range(n)]


def _kafka_python(bootstrap: str):
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
                             batch_size=1 << 20, compression_type="lz4", max_request_size=16 << 20)

    def send(topic: str, partition: int, key: bytes, value: bytes) -> None:
        producer.send(topic, value=value, key=key, partition=partition)

    return send, lambda: producer.flush(60), producer.close


def _confluent(bootstrap: str):
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5, "compression.type": "lz4", "message.max.bytes": 16 << 20,
                         "queue.buffering.max.messages": 1_000_000})

    def send(topic: str, partition: int, key: bytes, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition)
                producer.poll(0)
                return
            except BufferError:
                producer.poll(0.01)

    return send, lambda: producer.flush(60), lambda: None


def run_case(client: str, shape: str, events: list[dict], bootstrap: str) -> dict:
    topic = f"bench.records.{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, PARTITIONS)
    send, flush, close = (_kafka_python if client == "kafka-python" else _confluent)(bootstrap)
    cpu0, t0 = own_cpu_s(), time.perf_counter()
    records = 0
    if shape == "row per record":
        for e in events:
            value = event_to_proto(e, "call").SerializeToString()
            send(topic, hash(e["application_id"]) % PARTITIONS, e["application_id"].encode(), value)
            records += 1
    else:
        for start in range(0, len(events), 100):
            call = events[start:start + 100]
            for batch in partitioned_records(call, partitions=PARTITIONS, call_id=str(start), producer_id="bench"):
                send(topic, batch.partition, batch.batch_id.encode(), batch.value)
                records += 1
    flush()
    wall, cpu = time.perf_counter() - t0, own_cpu_s() - cpu0
    close()
    return {"client": client, "shape": shape, "events": len(events), "records": records,
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "events_per_s": round(len(events) / wall),
            "cpu_us_per_event": round(cpu / len(events) * 1e6, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    events = _events(args.events)
    clients = ["kafka-python"]
    try:
        import confluent_kafka  # noqa: F401

        clients.append("confluent-kafka")
    except ImportError:
        print("confluent-kafka not installed (pip install '.[bench]'); measuring kafka-python only")
    results = [run_case(c, shape, events, args.kafka)
               for c in clients for shape in ("row per record", "columns per call and partition")]
    print(f"{'client':<16}{'record shape':<34}{'records':>9}{'events/s':>11}{'CPU us/event':>14}")
    for r in results:
        print(f"{r['client']:<16}{r['shape']:<34}{r['records']:>9,}{r['events_per_s']:>11,}{r['cpu_us_per_event']:>14}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kafka-records-latest.json").write_text(json.dumps(
        {"benchmark": "kafka_records", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "results": results}, indent=2) + "\n")
    return 0
