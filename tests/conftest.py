"""Shared fixtures: the real stores (SQLite and PostgreSQL) and the real Kafka broker.

The README's test command (``make test``) starts Kafka and PostgreSQL first
(deploy/local/services.sh). An integration test whose service is missing
fails with a message saying how to start it; it never skips silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import text

PG_URL = os.environ.get("APIM_TEST_PG_URL", "postgresql+psycopg://apim:apim@127.0.0.1:55432/apim_test")
KAFKA = os.environ.get("APIM_TEST_KAFKA", "127.0.0.1:9092")


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


@contextmanager
def fresh_store(kind: str, directory: Path) -> Iterator[str]:
    """A fresh, empty store URL: a SQLite file in ``directory``, or a private schema in the real
    PostgreSQL (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'store.db'}"
        return
    from store.engine import make_engine

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable ({exc}); start it with `make services`")
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store: a SQLite file, or a private schema in the real PostgreSQL."""
    with fresh_store(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def kafka_bootstrap() -> str:
    """The real local broker; fails (not skips) when it is down."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(bootstrap_servers=KAFKA, request_timeout_ms=10000)
        consumer.topics()
        consumer.close()
    except KafkaError as exc:
        pytest.fail(f"Kafka at {KAFKA} is not reachable ({exc}); start it with `make services`")
    return KAFKA


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    """A fresh 3-partition topic per test, deleted afterwards."""
    from kafka.admin import KafkaAdminClient

    name = f"test.{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics({name: {"num_partitions": 3, "replication_factor": 1}}, wait_for_metadata=True)
    try:
        yield name
    finally:
        try:
            admin.delete_topics([name])
        finally:
            admin.close()


@pytest.fixture
def flink_cluster(_flink_cluster_up: None) -> None:
    """The standalone Flink cluster, with no job left running by an earlier test (one that failed, or an
    interrupted run)."""
    from bench.harness import cancel_cluster_jobs

    cancel_cluster_jobs()


@pytest.fixture(scope="session")
def _flink_cluster_up() -> Iterator[None]:
    """The standalone Flink 1.19 cluster (2 slots, EXTERNAL worker pool), started for these tests and stopped
    after them (it holds 2.5 GB; `make services` does not start it)."""
    script = Path(__file__).resolve().parents[1] / "deploy" / "local" / "flink-cluster.sh"
    env = os.environ | {"APIM_PYTHON": sys.executable}
    was_up = subprocess.run([str(script), "status"], env=env, capture_output=True).returncode == 0
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.fail(f"flink-cluster.sh start failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
    yield
    if not was_up:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=300)
