"""analyst views: the SQL views of store/views.py (v_usage_by_api_tier_day and friends)

Revision ID: 0002_analyst_views
Revises: 0001_initial
Create Date: 2026-11-27 09:00:00.000000

Written by hand (autogenerate does not see views). Each view of
``store.views.VIEWS`` is created with ``CREATE VIEW name AS <select compiled
for this database>``; downgrade drops them in reverse order. Views are not
tables: Alembic's compare_metadata (tests/integration/test_migrations.py)
reflects only tables, so it still compares the store with store/tables.py alone.

Unlike 0001, the definitions are read from store/views.py rather than frozen
here: they are the one source of truth for the views. A later change to a
view must add a revision that drops and recreates it (drop_view_sql /
create_view_sql), and may only use columns that exist at this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from store.views import VIEWS, create_view_sql, drop_view_sql

revision: str = "0002_analyst_views"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dialect = op.get_context().dialect  # also set in offline (--sql) mode, unlike op.get_bind()
    for view in VIEWS:
        op.execute(create_view_sql(view, dialect))


def downgrade() -> None:
    for view in reversed(VIEWS):
        op.execute(drop_view_sql(view))
