"""Generate docs/store.md, the column-by-column reference of the analytics store.

Why generated: the comments in store/tables.py are what PostgreSQL shows in
``\\d+`` and what the migrations create, so they are the one place meanings are
maintained. tests/unit/test_store_docs.py fails when the committed
docs/store.md differs from :func:`render`, so the reference cannot drift.

Columns whose meaning is obvious enough in tables.py to carry no comment get
one here, in :data:`UNCOMMENTED`; the test also fails when a column has
neither (naming it), or when an entry here goes stale.

    python -m store.docs           rewrite docs/store.md
    python -m store.docs --check   exit 1 if docs/store.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sqlalchemy import Column, Table
from sqlalchemy.sql.schema import ColumnDefault

import store.latency
from store.latency import bucket_rows
from store.tables import metadata

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "store.md"

_TOPIC = "Kafka topic"
_PARTITION = "Kafka partition"
_CONTEXT = "API context, e.g. /pizzashack/1.0.0"

# Meanings for columns that have no comment in store/tables.py, keyed "table.column".
UNCOMMENTED: dict[str, str] = {
    "api_last_access.api_context": _CONTEXT,
    "api_catalog.api_context": _CONTEXT,
    "api_catalog.api_creator": "user who created the API in the API manager; '' when unknown",
    "api_catalog.api_creator_tenant_domain": "tenant domain of the API's creator; '' when unknown",
    "application_catalog.application_id": "application id, as in the usage tables",
    "application_catalog.application_name": "application name; '' when unknown",
    "application_catalog.application_owner": "user who owns the application; '' when unknown",
    "api_resources.first_seen": "event time the resource template was admitted",
    "throttle_policies.stop_on_quota_reach": "true: requests over quota are rejected; false: only counted",
    "throttle_policies.description": "free text from the policy definition",
    "throttle_assignments.policy": "policy name (throttle_policies.name at this level)",
    "throttle_decisions.level": "subscription, application or api",
    "throttle_decisions.throttle_key": "the counter key, as in throttle_counters.throttle_key",
    "throttle_decisions.policy": "the policy the decision was made under",
    "throttle_decisions.window_start": "start of the window the decision covers, UTC, event time",
    "throttle_decisions.updated_at": "when the pipeline wrote this decision, UTC, wall clock",
    "subscription_catalog.api_name": "API name, as in the usage tables",
    "subscription_catalog.api_version": "API version",
    "subscription_catalog.application_id": "application the credential belongs to",
    "subscription_catalog.application_name": "application name; '' when unknown",
    "subscription_catalog.application_owner": "user who owns the application; '' when unknown",
    "subscription_catalog.application_tier": "application throttling policy; '' when unknown",
    "subscription_catalog.consumer_key": "OAuth consumer key of the application; '' when unknown",
    "subscription_catalog.key_type": "PRODUCTION or SANDBOX",
    "subscription_catalog.user_name": "end user the credential was issued to; '' when unknown",
    "seen_batches.topic": _TOPIC,
    "seen_batches.partition": _PARTITION,
    "seen_batches.record_offset": "offset of the record that carried the call",
    "seen_batches.committed_at": "when the run that counted it committed, UTC, wall clock (rows are pruned by age)",
    "source_offsets.topic": _TOPIC,
    "source_offsets.partition": _PARTITION,
    "source_offsets.updated_at": "when the offset was last advanced, UTC, wall clock",
    "pipeline_runs.topic": _TOPIC,
    "pipeline_runs.committed_at": "when the run committed, UTC, wall clock",
}


def column_meaning(table: Table, column: Column) -> str | None:
    """The column's comment, else its entry in :data:`UNCOMMENTED`, else None."""
    return column.comment or UNCOMMENTED.get(f"{table.name}.{column.name}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(column: Column) -> str:
    default = column.default
    if isinstance(default, ColumnDefault) and default.is_scalar:
        return f" (default when omitted: `{default.arg!r}`)"
    return ""


def _table_section(table: Table) -> list[str]:
    lines = [f"### `{table.name}`", "", _cell(table.comment or ""), ""]
    lines.append("Primary key: " + ", ".join(f"`{c.name}`" for c in table.primary_key.columns) + ".")
    for index in sorted(table.indexes, key=lambda i: i.name or ""):
        cols = ", ".join(f"`{c.name}`" for c in index.columns)
        lines.append(f"Index `{index.name}` on {cols}{' (unique)' if index.unique else ''}.")
    lines += ["", "| column | type | nullable | meaning |", "|---|---|---|---|"]
    for column in table.columns:
        meaning = column_meaning(table, column) or "**undocumented**"
        lines.append(f"| `{column.name}` | {column.type} | {'yes' if column.nullable else 'no'} "
                     f"| {_cell(meaning)}{_default(column)} |")
    return [*lines, ""]


def _latency_section() -> list[str]:
    doc = (store.latency.__doc__ or "").strip()
    # A fenced block: the docstring is plain text, and its GAMMA**k would turn into bold in Markdown.
    lines = ["## Latency histogram buckets", "", "From `store/latency.py`:", "", "```text", doc, "```", "",
             "The `latency_buckets` table holds these rows (filled by the first migration):", "",
             "| bucket | lower_ms | upper_ms | estimate_ms |", "|---|---|---|---|"]
    for row in bucket_rows():
        upper = "" if row["upper_ms"] is None else f"{row['upper_ms']:.6g}"
        lines.append(f"| {row['bucket']} | {row['lower_ms']:.6g} | {upper} | {row['estimate_ms']:.6g} |")
    return [*lines, ""]


def _views_section() -> list[str]:
    """The "Views" section, from store/views.py (the views' one definition)."""
    from store.views import VIEWS

    lines = ["## Views", "",
             ("Stable SQL views for analysts, defined in `store/views.py` and created by revision "
              "`0002_analyst_views`; they return the same rows and values on SQLite and PostgreSQL. "
              "Sums are BIGINT, millisecond values double precision."), ""]
    lines += [f"- [`{v.name}`](#{v.name}): {_cell(v.purpose)}" for v in VIEWS]
    lines.append("")
    for view in VIEWS:
        lines += [f"### `{view.name}`", "", _cell(view.purpose), "", "| column | meaning |", "|---|---|"]
        lines += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in view.columns.items()]
        lines.append("")
    return lines


def render() -> str:
    """The whole of docs/store.md."""
    from store.migrate import VERSION_TABLE, head_revision

    tables = list(metadata.tables.values())
    lines = [
        "# The analytics store, table by table",
        "",
        "<!-- Generated by `python -m store.docs` from store/tables.py; do not edit by hand. -->",
        "",
        ("`store/tables.py` is the single source of truth for the schema. Stores are created and upgraded "
         "by Alembic migrations (`store/migrations`), run by every process that opens the store and by "
         "`apim-analytics store migrate --store URL`; the applied revision is kept in the "
         f"`{VERSION_TABLE}` table (`apim-analytics store revision --store URL`). "
         f"Head revision: `{head_revision()}`."),
        "",
        ("Types are SQLAlchemy's generic names: on PostgreSQL, DATETIME is `timestamp without time zone` "
         "(all times are UTC), FLOAT is `double precision`. Defaults are applied by the writers "
         "(SQLAlchemy), not by the database."),
        "",
        "## Tables",
        "",
        *(f"- [`{t.name}`](#{t.name}): {_cell(t.comment or '')}" for t in tables),
        "",
    ]
    for table in tables:
        lines += _table_section(table)
    lines += _latency_section()
    lines += _views_section()
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/store.md (or, with --check, report whether it is current)."""
    parser = argparse.ArgumentParser(prog="python -m store.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date; write nothing")
    parser.add_argument("--output", type=Path, default=DOC_PATH, help=f"default: {DOC_PATH}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run: python -m store.docs", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
