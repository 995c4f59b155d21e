"""Settings precedence (flag > env > file > default) and clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from collector.settings import CollectorSettings
from core.settings import SettingsError, add_flags, resolve


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_flags(parser, CollectorSettings)
    return parser.parse_args(argv)


def test_defaults_apply_when_nothing_is_set() -> None:
    s = resolve(CollectorSettings, args=_parse([]), section="collector", environ={})
    assert s.listen == "127.0.0.1:9091"
    assert s.topic == "apim.usage.v1"
    assert s.topic_partitions == 6


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("collector:\n  topic: from-file\n  topic_partitions: 12\n  listen: 0.0.0.0:1\n")
    env = {"APIM_TOPIC": "from-env", "APIM_TOPIC_PARTITIONS": "9"}
    s = resolve(CollectorSettings, args=_parse(["--config", str(cfg), "--topic", "from-flag"]),
                section="collector", environ=env)
    assert (s.topic, s.topic_partitions, s.listen) == ("from-flag", 9, "0.0.0.0:1")


def test_unknown_file_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("collector:\n  topik: x\n")
    with pytest.raises(SettingsError, match="unknown keys \\['topik'\\]"):
        resolve(CollectorSettings, args=_parse(["--config", str(cfg)]), section="collector", environ={})


def test_bad_int_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="APIM_TOPIC_PARTITIONS"):
        resolve(CollectorSettings, args=_parse([]), section="collector", environ={"APIM_TOPIC_PARTITIONS": "six"})


def test_bad_listen_address_is_rejected() -> None:
    with pytest.raises(SettingsError, match="--listen: expected HOST:PORT"):
        resolve(CollectorSettings, args=_parse(["--listen", "nowhere"]), section="collector", environ={})


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        resolve(CollectorSettings, args=_parse(["--config", str(tmp_path / "nope.yaml")]),
                section="collector", environ={})


def test_the_store_url_is_one_key_for_every_component(tmp_path: Path) -> None:
    from dashboards.settings import DashboardSettings
    from pipeline.settings import PipelineSettings
    from store.settings import StoreSettings

    config = tmp_path / "c.yaml"
    config.write_text("store:\n  url: postgresql+psycopg://u:p@db:5432/apim\n")
    for cls, section in ((StoreSettings, "store"), (PipelineSettings, "pipeline"), (DashboardSettings, "dashboard")):
        assert resolve(cls, section=section, config_file=config, environ={}).store == \
            "postgresql+psycopg://u:p@db:5432/apim"
    assert resolve(PipelineSettings, section="pipeline", config_file=config,
                   environ={"APIM_STORE_URL": "sqlite:///env.db"}).store == "sqlite:///env.db"
    config.write_text("pipeline:\n  store: sqlite:///old.db\n")
    with pytest.raises(SettingsError, match=r"config section 'pipeline': unknown keys \['store'\]"):
        resolve(PipelineSettings, section="pipeline", config_file=config, environ={})
