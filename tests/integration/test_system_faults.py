"""Faults with the whole system running (bench.faults at a small scale): simulator -> collector
process -> real Kafka broker -> pipeline process (follow mode) -> real PostgreSQL, one part broken
while traffic flows; the store must equal the simulator's ground truth exactly afterwards."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench.faults import Plan, run_scenario
from bench.hostile import KINDS
from tests.conftest import KAFKA, fresh_store

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.postgres]

PLAN = Plan(rate=300.0, duration_s=8.0, seed=11, spool_max_mb=0.03, kafka_traffic_s=25.0)


def _run(name: str, tmp_path: Path, plan: Plan = PLAN):
    with fresh_store("postgresql", tmp_path) as url:
        result = run_scenario(name, plan, url, tmp_path, kafka=KAFKA)
    # every generated request was accepted in the end (Mixer retries), and stored once
    assert result.details["sender_failures"] == 0
    assert result.sent == result.details["generated"] >= plan.rate * plan.duration_s * 0.8
    assert (result.lost, result.doubled, result.stored) == (0, 0, result.sent), result
    return result


# The broker killed twice with Mixer traffic runs in `make bench` (bench.faults) only, to keep `make test` within
# 25 minutes: the collector's side of it is test_collector_faults.py's broker test, and the whole system's
# (collector, spool, follow-mode pipeline) is test_als_kafka_killed_and_restarted below, whose records the
# pipeline reads exactly as it reads Mixer's.


def test_collector_killed_while_holding_a_spool(tmp_path: Path) -> None:
    result = _run("collector_killed_holding_spool", tmp_path)
    assert result.details["records_spooled_before_the_kill"] >= 5
    assert result.details["sender_retries"] > 0  # Mixer's calls failed while the collector was down


def test_pipeline_killed_ten_times(tmp_path: Path) -> None:
    _run("pipeline_killed_ten_times", tmp_path)


def test_postgres_restarted_under_load(tmp_path: Path) -> None:
    _run("postgres_restarted", tmp_path)


def test_spool_quota_exhausted_gives_unavailable_not_loss(tmp_path: Path) -> None:
    result = _run("spool_quota_exhausted", tmp_path)
    assert result.details["unavailable_answers"] >= 3
    assert result.details["sender_retries"] >= result.details["unavailable_answers"]


def test_hostile_flood_mixed_into_real_traffic(tmp_path: Path) -> None:
    result = _run("hostile_flood", tmp_path)
    d = result.details
    calls = d["hostile_calls"]
    assert calls == 70 and d["by_kind"] == dict.fromkeys(KINDS, 10)
    assert d["collector_alive"] is True
    refused_calls = 10 * 5  # random_bytes, truncated, invalid_utf8, too_many_instances, oversize
    assert d["answered"] == {"INVALID_ARGUMENT": refused_calls, "OK": 20}
    assert d["collector_invalid_argument"] == refused_calls  # every refusal counted by the collector
    assert d["collector_instances_rejected"] == d["instances_refused_expected"] == 20


# --- issue 12: the same faults with the streaming job on Flink (the job server's embedded mini-cluster) ---

STREAMING = Plan(rate=300.0, duration_s=10.0, seed=13, kafka_traffic_s=15.0, pipeline="streaming", pipeline_kills=3,
                 kafka_kills=1)


# The streaming driver SIGKILLed mid-flow: tests/integration/test_pipeline_streaming.py
# (test_once_and_streaming_take_turns_and_a_sigkill_loses_nothing); bench.faults --pipeline streaming
# kills it ten times.


@pytest.mark.flink
def test_streaming_job_server_killed(tmp_path: Path) -> None:
    result = _run("jobserver_killed", tmp_path, STREAMING)
    assert result.details["job_submissions"] == 2  # the embedded Flink died with its job server


@pytest.mark.flink
def test_streaming_postgres_restarted(tmp_path: Path) -> None:
    _run("postgres_restarted", tmp_path, STREAMING)


@pytest.mark.flink
def test_streaming_kafka_killed_and_restarted(tmp_path: Path) -> None:
    _run("kafka_killed_twice", tmp_path, STREAMING)


# --- and on the standalone Flink cluster (parallelism 2, EXTERNAL workers) ---

CLUSTER = Plan(rate=300.0, duration_s=10.0, seed=17, pipeline="streaming-cluster")


@pytest.mark.flink
def test_cluster_job_server_killed(tmp_path: Path, flink_cluster: None) -> None:
    result = _run("jobserver_killed", tmp_path, CLUSTER)
    assert result.details["job_submissions"] == 1  # the job ran on, watched through Flink's REST API


@pytest.mark.flink
def test_cluster_taskmanager_killed(tmp_path: Path, flink_cluster: None) -> None:
    _run("taskmanager_killed", tmp_path, CLUSTER)


# --- issue 13: Istio 1.8+ sidecars, over Envoy ALS v3 streams and OTLP log exports ---

ACCESS_LOGS = Plan(rate=300.0, duration_s=8.0, seed=19, kafka_traffic_s=12.0, kafka_kills=1)


def test_als_kafka_killed_and_restarted(tmp_path: Path) -> None:
    """Entries are safe (Kafka or spool) before the next message is read: a broker kill loses nothing and
    every stream still ends OK, confirming all its messages."""
    result = _run("kafka_killed_twice", tmp_path, replace(ACCESS_LOGS, protocol="als"))
    assert (result.unconfirmed, result.details["sender_failures"]) == (0, 0)


def test_als_collector_sigkilled_loses_only_what_was_in_flight(tmp_path: Path) -> None:
    """ALS has no acknowledgement and Envoy never resends: a SIGKILL loses at most the entries of the streams it
    broke that were not yet safe, and nothing confirmed. While no collector listens, the sidecars' flushes are
    refused (Envoy drops those itself); none of them can be in the store."""
    plan = replace(ACCESS_LOGS, protocol="als")
    with fresh_store("postgresql", tmp_path) as url:
        result = run_scenario("collector_killed_holding_spool", plan, url, tmp_path, kafka=KAFKA)
    d = result.details
    assert result.sent + result.unconfirmed == d["generated"] == plan.rate * plan.duration_s
    assert (result.lost, result.doubled) == (0, 0), result
    assert d["refused"] > 0 and d["sender_retries"] > 0  # the sidecars reconnected after the kill
    assert result.sent <= result.stored <= result.sent + result.unconfirmed - d["refused"]
    assert 0 <= result.in_flight_lost <= result.unconfirmed - d["refused"]
    assert result.exact


# The OTLP collector SIGKILLed holding a spool runs in `make bench` (bench.faults --protocol otel) only, to keep
# `make test` within 25 minutes: OTLP exports are answered only when safe and retried like Mixer's calls, whose
# collector kill runs above (test_collector_killed_while_holding_a_spool), and the OTLP handler's answer-when-safe
# and retry recognition are tested on the real broker in test_collector_access_logs.py and the access-log spine.
