"""api catalog: the APIs loaded from OpenAPI documents, and their resources

Revision ID: 0005_api_catalog
Revises: 0004_usage_api_index
Create Date: 2026-12-03 22:00:00.000000

Tables api_definitions and api_definition_resources of store/tables.py, written
out here so the revision keeps creating the schema it was written for. Istio
1.8+ access logs carry an authority and a path, not the API's name: these
tables are what the collector and the pipeline match them against.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_api_catalog"
down_revision: str | Sequence[str] | None = "0004_usage_api_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_definitions",
        sa.Column("api_name", sa.String(length=255), nullable=False,
                  comment="API name (WSO2 apiName; Mixer api.service)"),
        sa.Column("api_version", sa.String(length=64), nullable=False, comment="API version"),
        sa.Column("api_context", sa.String(length=255), nullable=False,
                  comment="context path (/cart), or with {version} inside it (/cart/{version})"),
        sa.Column("hostnames", sa.Text(), nullable=False,
                  comment="comma-separated authorities the API is served on; '' for any"),
        sa.Column("source", sa.Text(), nullable=False, comment="the OpenAPI document it was loaded from"),
        sa.Column("loaded_at", sa.DateTime(), nullable=False, comment="UTC"),
        sa.PrimaryKeyConstraint("api_name", "api_version"),
        comment="the API catalog (apim-analytics apis load): what Envoy access logs are matched to",
    )
    op.create_table(
        "api_definition_resources",
        sa.Column("api_name", sa.String(length=255), nullable=False,
                  comment="API name (WSO2 apiName; Mixer api.service)"),
        sa.Column("api_version", sa.String(length=64), nullable=False, comment="API version"),
        sa.Column("method", sa.String(length=16), nullable=False, comment="HTTP method"),
        sa.Column("resource_template", sa.String(length=255), nullable=False,
                  comment="resource template (/menu/{id}); raw paths normalised; "
                          "'other' when the API's resource cap was reached"),
        sa.PrimaryKeyConstraint("api_name", "api_version", "method", "resource_template"),
        comment="each catalog API version's resource templates and methods, from its OpenAPI paths",
    )


def downgrade() -> None:
    op.drop_table("api_definition_resources")
    op.drop_table("api_definitions")
