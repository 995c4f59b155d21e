"""Alembic migrations against the real stores (SQLite file, private PostgreSQL schema).

The schema a migrated store ends up with must be exactly store/tables.py:
``compare_metadata`` (Alembic's own autogenerate diff) must find nothing, on
both databases. The PostgreSQL fixture points search_path at a private
schema, which is the default schema both Alembic and the comparison use.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event, inspect, select, text
from sqlalchemy.engine import make_url

from apim_analytics.cli import main
from store import migrate
from store.engine import StoreError, create_schema, make_engine
from store.latency import BUCKET_COUNT, bucket_rows
from store.tables import (
    USAGE_MAX_COLUMNS,
    USAGE_MIN_COLUMNS,
    USAGE_SUM_COLUMNS,
    USAGE_TABLES,
    latency_buckets,
    metadata,
    usage_app_day,
)

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _fresh_cli_logging() -> Iterator[None]:
    """main() installs its stderr log handler once per process, bound to the stderr of the
    test that first called it (capsys's, closed afterwards); drop it so each test gets its own."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_apim", False)]:
        root.removeHandler(handler)


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    eng = make_engine(store_url)
    try:
        yield eng
    finally:
        eng.dispose()


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def test_upgrade_gives_exactly_the_metadata_schema(engine: Engine) -> None:
    create_schema(engine)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":  # the fixture's private schema, not public
            assert inspect(conn).default_schema_name == make_url(str(engine.url)).query["options"].split("=")[1]
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diff = compare_metadata(context, metadata)
    assert diff == []
    assert _tables(engine) == set(metadata.tables) | {migrate.VERSION_TABLE}


def test_current_revision_is_head(engine: Engine) -> None:
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    script_head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert migrate.current_revision(engine) == migrate.head_revision() == script_head == "0007_usage_app_day"


def test_second_upgrade_is_a_no_op(engine: Engine) -> None:
    create_schema(engine)
    statements: list[str] = []

    def record(_conn, _cursor, statement, _params, _context, _many) -> None:
        statements.append(statement.strip().split()[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        create_schema(engine)
        migrate.upgrade(engine, "0007_usage_app_day")
    finally:
        event.remove(engine, "before_cursor_execute", record)
    writes = [s for s in statements if s in ("CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE")]
    assert writes == []
    assert migrate.current_revision(engine) == migrate.head_revision()
    with engine.connect() as conn:
        assert len(conn.execute(select(latency_buckets)).all()) == BUCKET_COUNT


def test_latency_buckets_are_filled_by_the_migration(engine: Engine) -> None:
    migrate.upgrade(engine)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(latency_buckets).order_by(latency_buckets.c.bucket))]
    assert len(rows) == BUCKET_COUNT
    assert rows == bucket_rows()  # floats round-trip exactly (REAL / double precision)
    assert rows[0]["lower_ms"] == 0.0 and rows[-1]["upper_ms"] is None
    assert all(a["upper_ms"] == b["lower_ms"] for a, b in itertools.pairwise(rows))


def test_usage_api_indexes_are_added_to_a_store_holding_data(engine: Engine) -> None:
    """0004 on a store at 0003 with usage rows: each usage table gains its (api_name, bucket_start) index."""
    migrate.upgrade(engine, "0003_billing")
    key = {"bucket_start": dt.datetime(2026, 3, 1), "api_name": "PizzaShackAPI", "api_version": "1.0.0",
           "api_context": "/pizzashack/1.0.0", "application_id": "app-1", "tier": "Gold", "key_type": "PRODUCTION",
           "resource_template": "/menu", "method": "GET"}
    measures = dict.fromkeys((*USAGE_SUM_COLUMNS, *USAGE_MIN_COLUMNS, *USAGE_MAX_COLUMNS), 0) | {"requests": 3}
    with engine.begin() as conn:
        for table in USAGE_TABLES.values():
            conn.execute(table.insert(), [key | measures])
    migrate.upgrade(engine)
    with engine.connect() as conn:
        indexes = {table.name: {i["name"]: i["column_names"] for i in inspect(conn).get_indexes(table.name)}
                   for table in USAGE_TABLES.values()}
        kept = [conn.execute(select(table.c.requests)).scalar_one() for table in USAGE_TABLES.values()]
    assert indexes == {f"usage_{g}": {f"ix_usage_{g}_api_bucket": ["api_name", "bucket_start"]}
                       for g in ("minute", "hour", "day", "month")}
    assert kept == [3, 3, 3, 3]
    with engine.begin() as conn:  # the revision's downgrade (developers only: no CLI for it)
        command.downgrade(migrate.alembic_config(conn), "0003_billing")
    with engine.connect() as conn:
        assert all(inspect(conn).get_indexes(table.name) == [] for table in USAGE_TABLES.values())


def test_usage_app_day_is_filled_from_usage_day_on_upgrade(engine: Engine) -> None:
    """0007 on a store at 0006 holding usage_day rows: usage_app_day holds their sums without resource and
    method, so a query reads the same from either table the moment the upgrade commits."""
    migrate.upgrade(engine, "0006_api_tcp_clusters")
    key = {"bucket_start": dt.datetime(2026, 3, 1), "api_name": "PizzaShackAPI", "api_version": "1.0.0",
           "api_context": "/pizzashack/1.0.0", "application_id": "app-1", "tier": "Gold", "key_type": "PRODUCTION"}
    zero = dict.fromkeys((*USAGE_SUM_COLUMNS, *USAGE_MIN_COLUMNS, *USAGE_MAX_COLUMNS), 0)
    rows = [key | zero | {"resource_template": "/menu", "method": "GET", "requests": 3, "lat_b10": 3,
                          "latency_min_us": 900, "latency_max_us": 5_000},
            key | zero | {"resource_template": "/order", "method": "POST", "requests": 4, "count_5xx": 1,
                          "latency_min_us": 700, "latency_max_us": 2_000},
            key | zero | {"application_id": "app-2", "resource_template": "/menu", "method": "GET", "requests": 5}]
    with engine.begin() as conn:
        conn.execute(USAGE_TABLES["day"].insert(), rows)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        got = [dict(r._mapping) for r in conn.execute(select(usage_app_day).order_by(usage_app_day.c.application_id))]
    assert [(r["application_id"], r["requests"], r["count_5xx"], r["lat_b10"], r["latency_min_us"],
             r["latency_max_us"]) for r in got] == [("app-1", 7, 1, 3, 700, 5_000), ("app-2", 5, 0, 0, 0, 0)]


def test_pre_alembic_store_is_refused_with_instructions(engine: Engine) -> None:
    metadata.create_all(engine)  # how stores were created before migrations
    with pytest.raises(StoreError, match="created before schema migrations") as info:
        create_schema(engine)
    assert "recreate" in str(info.value) and "\n" not in str(info.value)
    assert migrate.VERSION_TABLE not in _tables(engine)


def test_failed_upgrade_leaves_nothing_behind(engine: Engine) -> None:
    """The upgrade is one transaction (BEGIN IMMEDIATE on SQLite): a failure at the last step rolls back all."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE unrelated (x INTEGER)"))
        # the migration's last index name is taken: its create_index fails after every table was created
        conn.execute(text("CREATE INDEX ix_pipeline_runs_committed_at ON unrelated (x)"))
    with pytest.raises(Exception, match="ix_pipeline_runs_committed_at"):
        create_schema(engine)
    assert _tables(engine) == {"unrelated"}
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_pipeline_runs_committed_at"))
    create_schema(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()


_CHILD = """
import pathlib, sys, time
from sqlalchemy import text
from store.engine import create_schema, make_engine
url, ready, go = sys.argv[1:4]
engine = make_engine(url)
with engine.connect() as conn:
    conn.execute(text("SELECT 1"))
pathlib.Path(ready).touch()
deadline = time.monotonic() + 60
while not pathlib.Path(go).exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.002)
create_schema(engine)
"""


def _assert_migrated_once(store_url: str) -> None:
    eng = make_engine(store_url)
    try:
        assert migrate.current_revision(eng) == migrate.head_revision()
        with eng.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM latency_buckets")).scalar_one() == BUCKET_COUNT
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    finally:
        eng.dispose()


def test_concurrent_first_starts_in_processes(store_url: str, tmp_path: Path) -> None:
    """Processes opening an empty store at once: one migrates, the others wait for its lock and find it at head."""
    workers = 4
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, store_url, str(tmp_path / f"ready{i}"),
                               str(tmp_path / "go")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(workers)]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{i}").exists() for i in range(workers)):
            assert time.monotonic() < deadline, "workers did not connect"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            time.sleep(0.01)
        (tmp_path / "go").touch()  # all connected: release them together
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * workers, [err for _out, err in results]
    _assert_migrated_once(store_url)


def test_concurrent_first_starts_in_threads(store_url: str) -> None:
    """Threads of one process too (Alembic's op/context proxies are process-global)."""
    workers = 4
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def start() -> None:
        eng = make_engine(store_url)
        try:
            barrier.wait(timeout=30)
            create_schema(eng)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)
        finally:
            eng.dispose()

    threads = [threading.Thread(target=start) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    _assert_migrated_once(store_url)


def test_cli_migrate_and_revision(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    if store_url.startswith("sqlite"):  # reading never creates the file
        assert main(["store", "revision", "--store", store_url]) == 1
        assert "does not exist" in capsys.readouterr().err
        assert not Path(store_url.removeprefix("sqlite:///")).exists()
    else:
        assert main(["store", "revision", "--store", store_url]) == 0
        assert capsys.readouterr().out.strip() == "<empty>"
    assert main(["store", "migrate", "--store", store_url]) == 0
    assert capsys.readouterr().out.strip() == "store: <empty> -> 0007_usage_app_day"
    assert main(["store", "migrate", "--store", store_url, "--revision", "0007_usage_app_day"]) == 0
    assert capsys.readouterr().out.strip() == "store: 0007_usage_app_day -> 0007_usage_app_day"
    assert main(["store", "revision", "--store", store_url]) == 0
    assert capsys.readouterr().out.strip() == "0007_usage_app_day"


def test_cli_store_defaults_to_env(store_url: str, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIM_STORE_URL", store_url)
    assert main(["store", "migrate"]) == 0
    capsys.readouterr()
    assert main(["store", "revision"]) == 0
    assert capsys.readouterr().out.strip() == migrate.head_revision()


def test_cli_errors_are_one_line_exit_2(engine: Engine, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["store", "migrate", "--store", store_url, "--revision", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == ("apim-analytics: no schema revision 'nope'; name one of store/migrations/versions "
                   f"(the newest is '{migrate.head_revision()}')\n")
    metadata.create_all(engine)
    assert main(["store", "migrate", "--store", store_url]) == 1  # the store's state, not the invocation
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "created before schema migrations" in err
    assert main(["store", "migrate", "--store", "mysql://x/y"]) == 2
    assert "only sqlite and postgresql" in capsys.readouterr().err


def test_cli_error_in_a_fresh_process_is_one_line(store_url: str) -> None:
    """In a new process Alembic's import-time logging would reach stderr too; it must not."""
    result = subprocess.run([sys.executable, "-m", "apim_analytics.cli", "store", "migrate", "--store", store_url,
                             "--revision", "nope"], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("apim-analytics: no schema revision 'nope'"), \
        result.stderr
