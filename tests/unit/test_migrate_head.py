"""The store's head revision as the start-up fast path reads it equals Alembic's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from store import migrate


def test_the_scripts_read_without_alembic_name_alembics_head() -> None:
    migrate.shipped_head.cache_clear()
    assert migrate.shipped_head() == migrate.head_revision() == "0007_usage_app_day"


def test_a_branch_or_an_unreadable_script_is_left_to_alembic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "a.py").write_text('revision = "a"\ndown_revision = None\n')
    (versions / "b.py").write_text("revision: str = 'b'\ndown_revision: str | None = 'a'\n")
    (versions / "c.py").write_text('revision = "c"\ndown_revision = "a"\n')  # a branch: two heads
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", tmp_path)
    monkeypatch.setattr(migrate, "head_revision", lambda: "alembic says")
    migrate.shipped_head.cache_clear()
    try:
        assert migrate.shipped_head() == "alembic says"
        (versions / "c.py").write_text("nothing to read here\n")
        migrate.shipped_head.cache_clear()
        assert migrate.shipped_head() == "alembic says"
        (versions / "c.py").unlink()
        migrate.shipped_head.cache_clear()
        assert migrate.shipped_head() == "b"
    finally:
        migrate.shipped_head.cache_clear()
