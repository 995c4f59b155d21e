"""Signing-key rotation without a restart: a real collector process re-reads its
JWKS on SIGHUP (collector.server.serve), and a token signed by the new key is
then accepted, while a broken file keeps the keys it had.

The collector runs as its own process (``apim-analytics collector serve``), so
the signal goes to the real serve loop, as in production; the test reads its
Prometheus endpoint and the Kafka topic it writes.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import timestamp_pb2
from kafka import KafkaConsumer, TopicPartition

from apim_analytics.demo import _free_port, start_collector, stop_collector
from schemas.apim.usage.v1 import usage_event_columns_pb2 as cols_pb
from schemas.apim.usage.v1 import usage_event_pb2 as pb
from schemas.mixer.template.metric import template_handler_service_pb2 as m
from schemas.policy.v1beta1 import type_pb2 as t
from tests.support.columns import rows
from tests.unit.test_jwt_verify import jwk, mint, write_jwks
from tests.unit.test_mapping import CLAIMS, wso2_instance

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def instance_now(auth: str) -> m.InstanceMsg:
    """The WSO2 instance of tests.unit.test_mapping, timed a second ago (inside the event-age window)."""
    inst = wso2_instance(auth)
    ms = int(time.time() * 1000) - 1000
    for name, at in (("request_timestamp", ms), ("response_timestamp", ms + 30)):
        inst.dimensions[name].CopyFrom(t.Value(timestamp_value=t.TimeStamp(
            value=timestamp_pb2.Timestamp(seconds=at // 1000, nanos=(at % 1000) * 1_000_000))))
    return inst


def callers_by_call(kafka: str, topic: str) -> dict[str, list[tuple[int, str]]]:
    """(credential kind, application id) of every event on ``topic``, by record key (the call id)."""
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: dict[str, list[tuple[int, str]]] = {}
        deadline = time.monotonic() + 20
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end offsets {ends}"
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    events = rows(cols_pb.UsageEventColumns.FromString(record.value))
                    out.setdefault(record.key.decode(), []).extend(
                        (e.credential_kind, e.application_id) for e in events)
        return out
    finally:
        consumer.close()


class Collector:
    """A collector process verifying JWTs against ``jwks``, with only SIGHUP reloading them."""

    def __init__(self, kafka: str, topic: str, jwks: Path, tmp_path: Path) -> None:
        subs = tmp_path / "subscriptions.jsonl"
        subs.write_text("")
        self.target = f"127.0.0.1:{_free_port()}"
        self.metrics = f"127.0.0.1:{_free_port()}"
        self.log = tmp_path / "collector.log"
        self.jwks = jwks
        self.proc = start_collector(self.target, kafka, topic, subs, self.log, metrics_listen=self.metrics,
                                    extra_args=["--jwt-jwks", str(jwks), "--jwt-reload-s", "0"])

    def metric(self, name: str, **labels: str) -> float:
        text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5).read().decode()
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[1])
        return 0.0

    def sighup_and_wait(self, result: str, timeout_s: float = 20.0) -> None:
        """Send SIGHUP and wait until the reload it causes is counted with ``result``."""
        before = self.metric("apim_collector_jwt_key_reloads_total", result=result)
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while self.metric("apim_collector_jwt_key_reloads_total", result=result) <= before:
            assert self.proc.poll() is None, f"collector exited on SIGHUP: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no {result} reload counted {timeout_s}s after SIGHUP"
            time.sleep(0.1)

    def call(self, auth: str, dedup_id: str) -> str:
        """One HandleMetric call with one WSO2 instance; returns its call id (the Kafka record key)."""
        raw = m.HandleMetricRequest(dedup_id=dedup_id, instances=[instance_now(auth)]).SerializeToString()
        with grpc.insecure_channel(self.target) as channel:
            channel.unary_unary("/metric.HandleMetricService/HandleMetric", request_serializer=None,
                                response_deserializer=None)(raw, timeout=15)
        return hashlib.blake2b(raw, digest_size=16).hexdigest()


@pytest.fixture
def keys() -> dict[str, Any]:
    return {"old": rsa.generate_private_key(65537, 2048), "new": rsa.generate_private_key(65537, 2048)}


@pytest.fixture
def collector(kafka_bootstrap: str, topic: str, keys: dict[str, Any], tmp_path: Path) -> Iterator[Collector]:
    jwks = write_jwks(tmp_path / "jwks.json", jwk(keys["old"], "old"))
    running = Collector(kafka_bootstrap, topic, jwks, tmp_path)
    try:
        yield running
    finally:
        stop_collector(running.proc)


def test_sighup_reloads_the_jwks_and_a_token_of_the_new_key_is_accepted(
        collector: Collector, kafka_bootstrap: str, topic: str, keys: dict[str, Any]) -> None:
    claims = {**CLAIMS, "exp": int(time.time()) + 3600}
    old_token = "Bearer " + mint(keys["old"], "RS256", claims, kid="old")
    new_token = "Bearer " + mint(keys["new"], "RS256", claims, kid="new")
    jwks = collector.jwks

    accepted_old = collector.call(old_token, "old-key")
    before_rotation = collector.call(new_token, "new-key-before")
    assert collector.metric("apim_collector_jwt_rejected_total", reason="unknown_kid") == 1

    # A half-written file on SIGHUP: counted as failed, the old key stays.
    jwks.write_text('{"keys": [')
    collector.sighup_and_wait("failed")
    still_old = collector.call(old_token, "old-key-after-broken-reload")

    write_jwks(jwks, jwk(keys["new"], "new"))
    collector.sighup_and_wait("ok")
    # The same token as before the rotation: its cached rejection must not survive the reload.
    after_rotation = collector.call(new_token, "new-key-after")
    retired = collector.call(old_token, "old-key-retired")
    assert collector.metric("apim_collector_jwt_rejected_total", reason="unknown_kid") == 2  # only `retired`

    assert callers_by_call(kafka_bootstrap, topic) == {
        accepted_old: [(pb.JWT, "app-1")],
        before_rotation: [(pb.UNRESOLVED, "unknown")],
        still_old: [(pb.JWT, "app-1")],
        after_rotation: [(pb.JWT, "app-1")],
        retired: [(pb.UNRESOLVED, "unknown")],
    }
    log = collector.log.read_text()
    assert re.search(r"JWT key reload: JWKS .*keeping the 1 key\(s\) loaded before", log)
