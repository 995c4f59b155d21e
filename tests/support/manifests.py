"""Kubernetes and Istio manifests as parsed documents, for the deploy/ consistency tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class Doc:
    """One YAML document of a manifest file."""

    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def namespace(self) -> str | None:
        return self.body["metadata"].get("namespace")

    @property
    def spec(self) -> dict[str, Any]:
        return self.body.get("spec") or {}


def load_docs(paths: Iterable[Path]) -> tuple[Doc, ...]:
    """Every non-empty document of ``paths``, in order."""
    return tuple(Doc(path, body) for path in paths for body in yaml.safe_load_all(path.read_text())
                 if body is not None)
