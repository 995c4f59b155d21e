"""billing: the monetization publisher's watermarks and publications ledger

Revision ID: 0003_billing
Revises: 0002_analyst_views
Create Date: 2026-11-26 09:45:00.000000

Tables billing_watermarks and billing_publications of store/tables.py (the
billing block at its end), written out here so the revision keeps creating the
schema it was written for.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_billing"
down_revision: str | Sequence[str] | None = "0002_analyst_views"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "billing_watermarks",
        sa.Column("sink", sa.String(length=64), nullable=False, comment="publisher sink name (e.g. webhook, file)"),
        sa.Column("published_until", sa.DateTime(), nullable=False,
                  comment="UTC hour boundary: every window before it is fully delivered to the sink"),
        sa.Column("updated_at", sa.DateTime(), nullable=False, comment="when the watermark last moved, UTC"),
        sa.PrimaryKeyConstraint("sink"),
        comment="per sink, how far usage has been published (WSO2 AM_MONETIZATION_USAGE last publish time)",
    )
    op.create_table(
        "billing_publications",
        sa.Column("idempotency_key", sa.String(length=64), nullable=False,
                  comment="sha256 hex of sink|application|api|version|tier|window_start; sent to the receiver"),
        sa.Column("sink", sa.String(length=64), nullable=False, comment="publisher sink name"),
        sa.Column("application_id", sa.String(length=255), nullable=False, comment="subscribing application id"),
        sa.Column("api_name", sa.String(length=255), nullable=False, comment="API name"),
        sa.Column("api_version", sa.String(length=64), nullable=False, comment="API version"),
        sa.Column("tier", sa.String(length=64), nullable=False, comment="subscription tier"),
        sa.Column("window_start", sa.DateTime(), nullable=False, comment="usage window start, UTC (an hour)"),
        sa.Column("window_end", sa.DateTime(), nullable=False, comment="usage window end, UTC (exclusive)"),
        sa.Column("quantity", sa.BigInteger(), nullable=False, comment="billable requests in the window, as sent"),
        sa.Column("status", sa.String(length=16), nullable=False,
                  comment="pending (recorded, not confirmed) or delivered"),
        sa.Column("attempts", sa.Integer(), nullable=False, comment="delivery attempts so far, all runs"),
        sa.Column("last_error", sa.Text(), nullable=False, comment="last delivery error; '' when none"),
        sa.Column("created_at", sa.DateTime(), nullable=False, comment="when the row was recorded, UTC"),
        sa.Column("published_at", sa.DateTime(), nullable=True,
                  comment="when the sink confirmed delivery, UTC; NULL while pending"),
        sa.PrimaryKeyConstraint("idempotency_key"),
        comment="ledger of usage records published per sink, subscription and window; a pending row is re-sent "
                "with the same key, a delivered one never",
    )
    op.create_index("ix_billing_publications_sink_window", "billing_publications", ["sink", "window_start"])


def downgrade() -> None:
    op.drop_index("ix_billing_publications_sink_window", table_name="billing_publications")
    op.drop_table("billing_publications")
    op.drop_table("billing_watermarks")
