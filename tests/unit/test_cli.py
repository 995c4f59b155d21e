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


def test_missing_config_file_is_named(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "run", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err


def test_config_show_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    for needle in ("collector.listen", "APIM_COLLECTOR_LISTEN", "store.url", "APIM_STORE_URL",
                   "pipeline.max_records_per_run"):
        assert needle in out


def test_subscriptions_load_stores_hashes_and_the_collector_resolves_them(tmp_path) -> None:
    from collector.credentials import credential_hash
    from collector.server import build_resolver
    from collector.settings import CollectorSettings

    token = "9b2c4d6e-0000-4000-8000-abcdefabcdef"
    catalog = tmp_path / "subs.yaml"
    catalog.write_text(
        "subscriptions:\n"
        f"  - credential_sha256: {credential_hash(token)}\n"
        "    application_id: app-7\n    application_name: Seven\n    key_type: SANDBOX\n"
        "    credential_kind: API_KEY\n"
        "    subscriptions:\n      - {api_name: PizzaAPI, api_version: 1.0.0, tier: Gold}\n"
        "      - {api_name: NewsAPI, api_version: v2, tier: Bronze}\n")
    store = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["subscriptions", "load", str(catalog), "--store", store]) == 0
    assert token not in (tmp_path / "store.db").read_bytes().decode("latin-1")
    resolver = build_resolver(CollectorSettings(subscriptions_store=store))
    caller = resolver.resolve(token, "NewsAPI", "v2")
    assert (caller.application_id, caller.subscription_tier, caller.key_type, caller.credential_kind) == (
        "app-7", "Bronze", "SANDBOX", "API_KEY")


def test_subscriptions_load_names_a_bad_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "subs.csv"
    bad.write_text("application_id\napp-1\n")
    assert main(["subscriptions", "load", str(bad), "--store", f"sqlite:///{tmp_path / 's.db'}"]) == 2
    assert "subs.csv" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "flag"), [
    (["collector", "serve", "--listen"], "--listen"),
    (["collector", "serve", "--metrics-listen"], "--metrics-listen"),
    (["pipeline", "run", "--once", "--metrics-listen"], "--metrics-listen"),
    (["dashboard", "serve", "--listen"], "--listen"),
])
@pytest.mark.parametrize(("value", "reason"), [
    ("no-port-here", "expected HOST:PORT, got 'no-port-here'"),
    ("127.0.0.1:70000", "expected HOST:PORT, got '127.0.0.1:70000'"),
    ("bad host:80", "'bad host' in 'bad host:80' is neither an IP address nor a host name"),
    ("[not-v6]:80", "'not-v6' in '[not-v6]:80' is neither an IP address nor a host name"),
])
def test_every_listen_address_is_validated(argv: list[str], flag: str, value: str, reason: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, value]) == 2
    assert capsys.readouterr().err == f"apim-analytics: {flag}: {reason}\n"
