"""usage_app_day: the daily usage rollup without resource and method

Revision ID: 0007_usage_app_day
Revises: 0006_api_tcp_clusters
Create Date: 2026-12-04 03:10:00.000000

Analysts mostly ask for one API by application (or tier) and day. usage_day
answers with a row per resource and method too, about six times the rows: a
month of the busiest API read 27,120 rows and took p99 609 ms on PostgreSQL
(bench/query_latency.py). This table holds the same sums keyed without
resource_template and method; the pipeline writes it in the same transaction
as usage_day, and query.usage reads it whenever the question allows.

The upgrade fills it from the store's usage_day rows, so a store upgraded with
data answers the same from either table. On PostgreSQL that is one INSERT ...
SELECT ... GROUP BY inside the migration's transaction; writers of usage_day
wait for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_usage_app_day"
down_revision: str | Sequence[str] | None = "0006_api_tcp_clusters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HISTOGRAM_BUCKETS = 57
KEY = ("bucket_start", "api_name", "api_version", "api_context", "application_id", "tier", "key_type")
SUMS = ("requests", "count_2xx", "count_3xx", "count_4xx", "count_5xx", "faults", "throttled_out", "request_bytes",
        "response_bytes", "latency_sum_us", "backend_latency_sum_us",
        *(f"lat_b{i:02d}" for i in range(HISTOGRAM_BUCKETS)))


def upgrade() -> None:
    op.create_table(
        "usage_app_day",
        sa.Column("bucket_start", sa.DateTime(), nullable=False,
                  comment="bucket start, UTC, event time (naive timestamp)"),
        sa.Column("api_name", sa.String(length=255), nullable=False, comment="API name (WSO2 apiName; Mixer api.service)"),
        sa.Column("api_version", sa.String(length=64), nullable=False, comment="API version"),
        sa.Column("api_context", sa.String(length=255), nullable=False, comment="API context, e.g. /pizzashack/1.0.0"),
        sa.Column("application_id", sa.String(length=255), nullable=False,
                  comment="application id; 'anonymous' for unauthenticated calls"),
        sa.Column("tier", sa.String(length=64), nullable=False,
                  comment="subscription tier (Gold, Silver, Bronze, Unauthenticated, Unlimited, ...)"),
        sa.Column("key_type", sa.String(length=16), nullable=False, comment="PRODUCTION, SANDBOX or UNKNOWN"),
        sa.Column("requests", sa.BigInteger(), nullable=False, comment="requests, including throttled-out and faulted ones"),
        sa.Column("count_2xx", sa.BigInteger(), nullable=False, comment="responses 200-299"),
        sa.Column("count_3xx", sa.BigInteger(), nullable=False, comment="responses 300-399"),
        sa.Column("count_4xx", sa.BigInteger(), nullable=False,
                  comment="responses 400-499 (kept: WSO2's Mixer adapter dropped them)"),
        sa.Column("count_5xx", sa.BigInteger(), nullable=False, comment="responses 500-599"),
        sa.Column("faults", sa.BigInteger(), nullable=False,
                  comment="requests the gateway reported as faults (backend unreachable, timeouts, ...)"),
        sa.Column("throttled_out", sa.BigInteger(), nullable=False,
                  comment="requests rejected by throttling (WSO2 throttledOut)"),
        sa.Column("request_bytes", sa.BigInteger(), nullable=False, comment="request body bytes"),
        sa.Column("response_bytes", sa.BigInteger(), nullable=False, comment="response body bytes"),
        sa.Column("latency_sum_us", sa.BigInteger(), nullable=False,
                  comment="sum of response latencies, microseconds (mean = latency_sum_us / requests)"),
        sa.Column("latency_min_us", sa.BigInteger(), nullable=False, comment="smallest response latency, us"),
        sa.Column("latency_max_us", sa.BigInteger(), nullable=False, comment="largest response latency, us"),
        sa.Column("backend_latency_sum_us", sa.BigInteger(), nullable=False,
                  comment="sum of backend latencies, microseconds"),
        *(sa.Column(f"lat_b{i:02d}", sa.BigInteger(), nullable=False,
                    comment=f"requests in latency bucket {i} (bounds: table latency_buckets)")
          for i in range(HISTOGRAM_BUCKETS)),
        sa.PrimaryKeyConstraint(*KEY),
        comment="API usage per day by API, version, context, application, subscription tier and key type: usage_day "
                "without resource and method, for questions that do not ask for them",
    )
    op.create_index("ix_usage_app_day_api_bucket", "usage_app_day", ["api_name", "bucket_start"])
    columns = ", ".join((*KEY, *SUMS, "latency_min_us", "latency_max_us"))
    sums = ", ".join(f"SUM({c})" for c in SUMS)
    keys = ", ".join(KEY)
    op.execute(f"INSERT INTO usage_app_day ({columns}) SELECT {keys}, {sums}, MIN(latency_min_us), "
               f"MAX(latency_max_us) FROM usage_day GROUP BY {keys}")


def downgrade() -> None:
    op.drop_index("ix_usage_app_day_api_bucket", table_name="usage_app_day")
    op.drop_table("usage_app_day")
