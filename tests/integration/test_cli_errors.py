"""Every store-facing subcommand, given a broken store or bad input: one exact line on stderr and the
exit status (2: the caller's input is wrong; 1: a runtime failure), no traceback, and a read-only
command leaves no file or table behind.

Runs the real CLI entry point in process against the real PostgreSQL (wrong password, a port where
nothing listens, a schema with no tables) and SQLite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from apim_analytics.cli import main
from store.engine import make_engine
from tests.conftest import PG_URL, fresh_store

pytestmark = pytest.mark.integration

DOWN = "postgresql+psycopg://apim:apim@127.0.0.1:1/apim"
WRONG_PASSWORD = PG_URL.replace("apim:apim@", "apim:wrong@")
MALFORMED = "sqlite//no-slashes.db"

# Each store-facing subcommand, as arguments before --store; READERS must never create anything.
READERS = {
    "usage": ["usage", "--group-by", "api"],
    "billing export": ["billing", "export", "--period", "2026-11"],
    "billing reconcile": ["billing", "reconcile", "--period", "2026-11"],
    "throttle status": ["throttle", "status", "--level", "api", "/pizzashack:1.0.0"],
    "throttle throttled": ["throttle", "throttled"],
    "throttle policies list": ["throttle", "policies", "list"],
    "dashboard build": ["dashboard", "build", "--out", "{tmp}/dashboard.html"],
    "store revision": ["store", "revision"],
}
WRITERS = {
    "store migrate": ["store", "migrate"],
    "pipeline purge": ["pipeline", "purge"],
    "billing publish": ["billing", "publish", "--sink", "file", "--path", "{tmp}/published.jsonl"],
    "subscriptions load": ["subscriptions", "load", "{tmp}/catalog.yaml"],
    "throttle policies load": ["throttle", "policies", "load", "{tmp}/policies.yaml"],
}
EVERY = READERS | WRITERS


def _run(argv: list[str], tmp: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    (tmp / "catalog.yaml").write_text("subscriptions: []\n")
    (tmp / "policies.yaml").write_text("policies: []\n")
    code = main([a.replace("{tmp}", str(tmp)) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("{")]  # JSON log lines are logs
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return code, lines[0]


def _host(url: str) -> str:
    return make_engine(url).url.render_as_string(hide_password=True)


@pytest.mark.postgres
@pytest.mark.parametrize("command", sorted(EVERY))
def test_unreachable_store(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = _run([*EVERY[command], "--store", DOWN], tmp_path, capsys)
    assert (code, line) == (1, f"apim-analytics: cannot connect to store '{_host(DOWN)}': connection to server "
                               'at "127.0.0.1", port 1 failed: Connection refused; check that the database runs '
                               "and the URL's host, port, user and password")


@pytest.mark.postgres
@pytest.mark.parametrize("command", sorted(EVERY))
def test_wrong_password(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = _run([*EVERY[command], "--store", WRONG_PASSWORD], tmp_path, capsys)
    url = make_engine(WRONG_PASSWORD).url
    assert (code, line) == (1, f"apim-analytics: cannot connect to store '{_host(WRONG_PASSWORD)}': connection to "
                               f'server at "{url.host}", port {url.port} failed: FATAL: password authentication '
                               f'failed for user "{url.username}"; check that the database runs and the URL\'s '
                               "host, port, user and password")
    assert "wrong" not in line


@pytest.mark.parametrize("command", sorted(EVERY))
def test_malformed_url(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line = _run([*EVERY[command], "--store", MALFORMED], tmp_path, capsys)
    assert (code, line) == (2, f"apim-analytics: store URL '{MALFORMED}' is not a SQLAlchemy URL; expected "
                               "sqlite:///FILE or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE")


@pytest.mark.parametrize("command", sorted(set(READERS) - {"store revision"}))
def test_reader_on_a_missing_sqlite_file_creates_nothing(command: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "absent.db"
    code, line = _run([*READERS[command], "--store", f"sqlite:///{db}"], tmp_path, capsys)
    assert (code, line) == (1, f"apim-analytics: store 'sqlite:///{db}' does not exist; check --store / "
                               "APIM_STORE_URL, or fill it with 'apim-analytics pipeline run'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.yaml", "policies.yaml"]


def test_store_revision_of_a_missing_sqlite_file_creates_nothing(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "absent.db"
    code, line = _run(["store", "revision", "--store", f"sqlite:///{db}"], tmp_path, capsys)
    assert code == 1
    assert line.startswith(f"apim-analytics: store 'sqlite:///{db}' does not exist")
    assert not db.exists()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("command", sorted(set(READERS) - {"store revision"}))
def test_reader_on_a_store_with_no_tables_changes_nothing(kind: str, command: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with fresh_store(kind, tmp_path) as url:
        if kind == "sqlite":
            make_engine(url).connect().close()  # an empty SQLite file
        code, line = _run([*READERS[command], "--store", url], tmp_path, capsys)
        assert (code, line) == (1, f"apim-analytics: store '{_host(url)}' has no analytics tables; create them "
                                   "with 'apim-analytics store migrate --store URL'")
        engine = make_engine(url)
        assert inspect(engine).get_table_names() == []
        engine.dispose()
    assert not (tmp_path / "dashboard.html").exists()


@pytest.mark.parametrize(("argv", "expected"), [
    (["usage", "--group-by", "api", "--from", "yesterday"],
     "--from 'yesterday' is not an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z)"),
    (["usage", "--group-by", "api", "--to", "2026-02-30"],
     "--to '2026-02-30' is not an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z)"),
    (["usage", "--group-by", "colour"],
     "unknown group-by name(s) 'colour'; choose from api, version, application, tier, resource, method, "
     "context, key_type, status_class, bucket, user, destination"),
    (["billing", "export", "--period", "2026-13"], "period '2026-13' is not a calendar month YYYY-MM"),
    (["billing", "reconcile", "--period", "November"], "period 'November' is not a calendar month YYYY-MM"),
    (["billing", "export", "--period", "2026-11", "--billable", "6xx"],
     "--billable: unknown billable class '6xx'; choose from 2xx, 3xx, 4xx, 5xx, all"),
    (["throttle", "status", "--level", "api", "/x:1", "--now", "noon"],
     "--now 'noon' is not an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z)"),
    (["throttle", "status", "--level", "galaxy", "/x:1"],
     "--level: expected subscription, application or api, got 'galaxy'"),
    (["dashboard", "build", "--out", "{tmp}/d.html", "--from", "soon"],
     "--from 'soon' is not an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z)"),
    (["billing", "publish", "--sink", "file", "--path", "{tmp}/p.jsonl", "--until", "later"],
     "--until 'later' is not an ISO 8601 timestamp (e.g. 2026-11-01T00:00:00Z)"),
])
def test_bad_period_or_date(argv: list[str], expected: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "store.db"
    assert main(["store", "migrate", "--store", f"sqlite:///{db}"]) == 0
    capsys.readouterr()
    code, line = _run([*argv, "--store", f"sqlite:///{db}"], tmp_path, capsys)
    assert (code, line) == (2, f"apim-analytics: {expected}")


@pytest.mark.parametrize(("argv", "expected"), [
    (["subscriptions", "load", "{tmp}/absent.yaml"], "subscription catalog {tmp}/absent.yaml does not exist"),
    (["subscriptions", "load", "{tmp}/bad.yaml"],
     "subscription catalog {tmp}/bad.yaml is not valid YAML at line 2, column 1: expected the node content, but "
     "found '<stream end>'"),
    (["subscriptions", "load", "{tmp}/entries.jsonl"], "{tmp}/entries.jsonl: entry 0 has no credential_sha256"),
    (["throttle", "policies", "load", "{tmp}/absent.yaml"], "policies file {tmp}/absent.yaml does not exist"),
    (["throttle", "policies", "load", "{tmp}/bad.yaml"],
     "{tmp}/bad.yaml: not valid YAML at line 2, column 1: expected the node content, but found '<stream end>'"),
    (["usage", "--group-by", "api", "--config", "{tmp}/absent.yaml"], "config file {tmp}/absent.yaml does not exist"),
    (["usage", "--group-by", "api", "--config", "{tmp}/bad.yaml"],
     "config file {tmp}/bad.yaml is not valid YAML at line 2, column 1: expected the node content, but found "
     "'<stream end>'"),
])
def test_missing_or_malformed_input_file(argv: list[str], expected: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("x: [\n")
    (tmp_path / "entries.jsonl").write_text('{"application_id": "app-1"}\n')
    code, line = _run([*argv, "--store", f"sqlite:///{tmp_path / 'store.db'}"], tmp_path, capsys)
    assert (code, line) == (2, "apim-analytics: " + expected.replace("{tmp}", str(tmp_path)))
    assert not (tmp_path / "store.db").exists()  # the file is read before the store is opened


def test_debug_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "usage", "--group-by", "api", "--store", MALFORMED]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1].startswith("apim-analytics: store URL 'sqlite//no-slashes.db'")


def test_debug_is_accepted_after_the_subcommand_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "--group-by", "api", "--store", MALFORMED, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1].startswith("apim-analytics: store URL 'sqlite//no-slashes.db'")


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_reader_on_a_store_newer_than_this_version(kind: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy import text

    with fresh_store(kind, tmp_path) as url:
        assert main(["store", "migrate", "--store", url]) == 0
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
        engine.dispose()
        capsys.readouterr()
        code, line = _run(["usage", "--group-by", "api", "--store", url], tmp_path, capsys)
        assert (code, line) == (1, f"apim-analytics: store '{_host(url)}' is at schema revision '0099_future', newer "
                                   "than this version's '0007_usage_app_day'; upgrade istio-apim-analytics to "
                                   "read it")
