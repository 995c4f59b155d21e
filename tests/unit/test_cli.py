"""The command line: bad arguments get a message naming the problem and exit status 2."""

from __future__ import annotations

import pytest

from apim_analytics.cli import main


def test_unknown_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_bad_setting_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["collector", "serve", "--listen", "no-port-here"]) == 2
    assert "--listen: expected HOST:PORT, got 'no-port-here'" in capsys.readouterr().err


def test_bad_env_value_is_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("APIM_PIPELINE_MAX_RECORDS_PER_RUN", "lots")
    assert main(["pipeline", "run", "--once"]) == 2
    assert "APIM_PIPELINE_MAX_RECORDS_PER_RUN" in capsys.readouterr().err


def test_missing_config_file_is_named(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert main(["pipeline", "run", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err


def test_config_show_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    for needle in ("collector.listen", "APIM_COLLECTOR_LISTEN", "pipeline.store", "APIM_STORE_URL",
                   "pipeline.max_records_per_run"):
        assert needle in out
