"""api catalog: the Envoy clusters whose TCP connections count as calls of an API

Revision ID: 0006_api_tcp_clusters
Revises: 0005_api_catalog
Create Date: 2026-12-04 00:00:00.000000

A TCP access-log entry has no host, path or method, only the upstream cluster.
The OpenAPI extension x-apim-tcp-clusters names the clusters of an API; this
column keeps them, so the collector can count TCP connections for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_api_tcp_clusters"
down_revision: str | Sequence[str] | None = "0005_api_catalog"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_definitions") as batch:
        batch.add_column(sa.Column("tcp_clusters", sa.Text(), nullable=False, server_default="",
                                   comment="comma-separated Envoy clusters whose TCP connections count as calls "
                                           "of this API; '' for none"))
    with op.batch_alter_table("api_definitions") as batch:  # the default only filled the existing rows
        batch.alter_column("tcp_clusters", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("api_definitions") as batch:
        batch.drop_column("tcp_clusters")
