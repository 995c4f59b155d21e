"""``apim-analytics apis load|list`` against the real stores: whole loads, replacement, and refusals
that leave the catalog as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from apim_analytics.cli import main
from core.api_catalog import ApiCatalog
from store import api_catalog
from store.engine import make_engine

pytestmark = pytest.mark.integration


def write(tmp_path: Path, name: str, title: str, version: str, paths: dict, **extra) -> Path:
    doc = {"openapi": "3.0.3", "info": {"title": title, "version": version},
           "servers": [{"url": f"https://gw.example.com/{title.lower()}"}], "paths": paths, **extra}
    path = tmp_path / name
    path.write_text(json.dumps(doc) if name.endswith(".json") else yaml.safe_dump(doc))
    return path


def catalog_of(store_url: str) -> list[tuple[str, str, str, int]]:
    engine = make_engine(store_url, readonly=True)
    try:
        return [(a.name, a.version, a.context, len(a.resources)) for a in api_catalog.load(engine)]
    finally:
        engine.dispose()


def test_load_list_and_replace(store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cart = write(tmp_path, "cart.yaml", "Cart", "2.0.0",
                 {"/items": {"get": {}, "post": {}}, "/items/{id}": {"get": {}}})
    pay = write(tmp_path, "pay.json", "Pay", "v3", {"/charges": {"post": {}}},
                **{"x-apim-context": "/pay/{version}", "x-apim-hostnames": ["pay.example.com"],
                   "x-apim-tcp-clusters": ["outbound|443||psp.example.com"]})
    assert main(["apis", "load", str(cart), str(pay), "--store", store_url]) == 0
    assert capsys.readouterr().out.strip() == "apis: 2 API version(s), 4 resource(s) loaded"
    assert catalog_of(store_url) == [("Cart", "2.0.0", "/cart", 3), ("Pay", "v3", "/pay/{version}", 1)]

    engine = make_engine(store_url, readonly=True)
    try:
        found = ApiCatalog(api_catalog.load(engine)).match("pay.example.com", "/pay/v3/charges", "POST")
    finally:
        engine.dispose()
    assert found is not None and (found.api.name, found.resource_template) == ("Pay", "/charges")
    assert found.api.tcp_clusters == ("outbound|443||psp.example.com",)

    cart3 = write(tmp_path, "cart3.yaml", "Cart", "2.0.0", {"/items": {"get": {}}})  # the same version again
    assert main(["apis", "load", str(cart3), "--store", store_url]) == 0
    assert catalog_of(store_url) == [("Cart", "2.0.0", "/cart", 1), ("Pay", "v3", "/pay/{version}", 1)]
    capsys.readouterr()
    assert main(["apis", "list", "--store", store_url, "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(a["name"], a["hostnames"], a["tcp_clusters"], a["resources"]) for a in listed] == [
        ("Cart", [], [], [{"method": "GET", "template": "/items"}]),
        ("Pay", ["pay.example.com"], ["outbound|443||psp.example.com"], [{"method": "POST", "template": "/charges"}])]

    assert main(["apis", "load", str(cart3), "--replace", "--store", store_url]) == 0
    assert catalog_of(store_url) == [("Cart", "2.0.0", "/cart", 1)]


def test_a_bad_file_is_refused_in_one_line_and_nothing_is_loaded(store_url: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yaml", "Cart", "2.0.0", {"/items": {"get": {}}})
    assert main(["apis", "load", str(good), "--store", store_url]) == 0
    bad = write(tmp_path, "bad.yaml", "Orders", "1.0.0", {"/orders/{id}": {"get": "not an operation"}})
    other = write(tmp_path, "other.yaml", "Stock", "1.0.0", {"/stock": {"get": {}}})
    capsys.readouterr()
    assert main(["apis", "load", str(other), str(bad), "--replace", "--store", store_url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}#/paths/~1orders~1{{id}}/get: an operation must be a mapping" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("openapi: [unclosed\n")
    assert main(["apis", "load", str(broken), "--store", store_url]) == 2
    assert f"{broken}: not valid YAML" in capsys.readouterr().err
    twice = write(tmp_path, "twice.yaml", "Cart", "2.0.0", {"/x": {"get": {}}})
    assert main(["apis", "load", str(good), str(twice), "--store", store_url]) == 2
    assert "is also defined in" in capsys.readouterr().err
    assert main(["apis", "load", str(tmp_path / "missing.yaml"), "--store", store_url]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert catalog_of(store_url) == [("Cart", "2.0.0", "/cart", 1)]  # every refused load left it as it was
