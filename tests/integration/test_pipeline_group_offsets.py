"""The advisory Kafka commit (pipeline/group_offsets.py) against the real broker: after every run the
consumer group ``--consumer-group`` holds exactly the store's offsets, so Kafka lag tools see the
pipeline's lag; when Kafka refuses them the run still commits and only a warning is logged."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaConnectionError
from sqlalchemy import create_engine

import pipeline.group_offsets as group_offsets
from pipeline.job import run
from pipeline.offsets import stored_offsets
from store.engine import make_engine
from tests.conftest import fresh_store
from tests.integration.test_pipeline_exactly_once import produce, settings

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def group_offsets_of(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        committed = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {tp.partition: om.offset for tp, om in committed.items() if tp.topic == topic}


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])
    finally:
        consumer.close()
    return {tp.partition: o for tp, o in ends.items()}


def store_offsets(store_url: str, topic: str) -> dict[int, int]:
    engine = make_engine(store_url, readonly=True)
    try:
        return stored_offsets(engine, topic)
    finally:
        engine.dispose()


def test_the_group_mirrors_the_stores_offsets_after_every_run(kafka_bootstrap: str, topic: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    group = f"test-lag-{uuid.uuid4().hex[:8]}"
    with fresh_store("sqlite", tmp_path) as store_url:
        s = settings(kafka_bootstrap, topic, store_url, consumer_group=group, max_records_per_run=5)  # 20 records
        produce(kafka_bootstrap, topic, seed=31, rate=50, duration_s=40)
        assert len(run(s)) > 1  # several bounded runs, each followed by the advisory commit
        stored = store_offsets(store_url, topic)
        assert stored == end_offsets(kafka_bootstrap, topic) and sum(stored.values()) > 0
        assert group_offsets_of(kafka_bootstrap, group, topic) == stored

        # Kafka refuses the advisory commit: the run commits anyway, the group keeps its old offsets.
        class Unreachable:
            def __init__(self, **_: object) -> None:
                raise KafkaConnectionError("injected")

        produce(kafka_bootstrap, topic, seed=32, rate=50, duration_s=10)
        with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="pipeline.group_offsets"):
            m.setattr(group_offsets, "KafkaAdminClient", Unreachable)
            assert run(s)
        assert "advisory Kafka commit of the store's offsets failed" in caplog.text
        newer = store_offsets(store_url, topic)
        assert newer == end_offsets(kafka_bootstrap, topic) and newer != stored
        assert group_offsets_of(kafka_bootstrap, group, topic) == stored

        # The next run with new records catches the group up with every partition's stored offset.
        produce(kafka_bootstrap, topic, seed=33, rate=50, duration_s=5)
        assert run(s)
        assert group_offsets_of(kafka_bootstrap, group, topic) == store_offsets(store_url, topic)


def test_an_empty_consumer_group_turns_the_advisory_commit_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_offsets, "KafkaAdminClient", None)  # would fail if it were used
    assert group_offsets.mirror_group_offsets("127.0.0.1:1", "", "t", {0: 5})


def test_a_store_that_cannot_be_read_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'store.db'}")  # its folder does not exist
    with caplog.at_level(logging.WARNING, logger="pipeline.group_offsets"):
        assert not group_offsets.mirror_store_offsets(engine, "127.0.0.1:1", "g", "t")
    assert "the store's offsets could not be read" in caplog.text
    engine.dispose()
