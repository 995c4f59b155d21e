"""docs/store.md is generated from store/tables.py and must not drift from it."""

from __future__ import annotations

from store import docs
from store.tables import metadata


def test_committed_docs_match_the_generator() -> None:
    committed = docs.DOC_PATH.read_text(encoding="utf-8")
    assert committed == docs.render(), "docs/store.md is out of date: run `python -m store.docs` and commit it"


def test_every_column_has_a_meaning() -> None:
    missing = [f"{t.name}.{c.name}" for t in metadata.tables.values() for c in t.columns
               if docs.column_meaning(t, c) is None]
    assert not missing, ("columns with neither a comment in store/tables.py nor an entry in "
                         f"store.docs.UNCOMMENTED: {', '.join(missing)}")


def test_no_stale_supplementary_meanings() -> None:
    """An UNCOMMENTED entry must name an existing column that still has no comment of its own."""
    stale = []
    for key in docs.UNCOMMENTED:
        table_name, _, column_name = key.partition(".")
        table = metadata.tables.get(table_name)
        column = table.columns.get(column_name) if table is not None else None
        if column is None or column.comment:
            stale.append(key)
    assert not stale, f"store.docs.UNCOMMENTED entries for missing or now-commented columns: {', '.join(stale)}"


def test_every_table_and_column_is_in_the_docs() -> None:
    text = docs.DOC_PATH.read_text(encoding="utf-8")
    for table in metadata.tables.values():
        assert f"### `{table.name}`" in text, f"table {table.name} missing from docs/store.md"
        section = text.split(f"### `{table.name}`", 1)[1].split("\n### ", 1)[0]
        for column in table.columns:
            assert f"| `{column.name}` |" in section, f"column {table.name}.{column.name} missing from docs/store.md"
    assert "**undocumented**" not in text
