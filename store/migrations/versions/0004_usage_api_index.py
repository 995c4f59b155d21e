"""usage API index: (api_name, bucket_start) on the four usage tables

Revision ID: 0004_usage_api_index
Revises: 0003_billing
Create Date: 2026-11-26 12:30:00.000000

The indexes of store/tables.py USAGE_API_INDEXES, written out here so the
revision keeps creating the schema it was written for.

Why: the usage tables' primary key leads with bucket_start, so a query for one
API over a range ("a month of one API by application and day", "one API's hours
of a day") walked every API's rows in the range and filtered; on a store
holding 30 days of 20 APIs the month query for the busiest API read the whole
of usage_day (bench/query_latency.py, bench/results/query_latency.json).

On PostgreSQL the upgrade builds each index with a plain CREATE INDEX inside the
migration's transaction (CONCURRENTLY cannot run in one), so writes to a usage
table wait while its index builds: the four took 45 s on the benchmark's store
(13.6 million usage_minute rows, 12 GB; 2 cores at load 3). Readers are not
blocked.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_usage_api_index"
down_revision: str | Sequence[str] | None = "0003_billing"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GRANULARITIES = ("minute", "hour", "day", "month")


def upgrade() -> None:
    for granularity in GRANULARITIES:
        op.create_index(f"ix_usage_{granularity}_api_bucket", f"usage_{granularity}", ["api_name", "bucket_start"])


def downgrade() -> None:
    for granularity in reversed(GRANULARITIES):
        op.drop_index(f"ix_usage_{granularity}_api_bucket", table_name=f"usage_{granularity}")
