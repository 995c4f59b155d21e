"""Every top-level package ships: tests run from the repository root, so a package missing from
pyproject.toml would pass them and still be absent from an installed CLI."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_SHIPPED = {"tests", "bench"}


def test_every_top_level_package_is_included() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file() and d.name not in NOT_SHIPPED)
    missing = [p for p in packages if not any(fnmatch.fnmatch(p, pat) for pat in patterns)]
    assert missing == []
    assert {"apim_analytics", "collector", "pipeline", "query", "schemas", "simulator", "store"} <= set(packages)


def test_every_shipped_package_is_marked_typed() -> None:
    """PEP 561: each shipped top-level package carries an empty py.typed, and package data ships it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["*"]
    packages = sorted(d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file() and d.name not in NOT_SHIPPED)
    assert {"core", "apim_analytics", "schemas", "collector", "pipeline", "simulator", "store", "query", "billing",
            "dashboards"} <= set(packages)
    assert [p for p in packages if not (ROOT / p / "py.typed").is_file()] == []
