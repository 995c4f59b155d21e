"""The subscription catalog in the store: what the collector resolves opaque
tokens and API keys with. Rows are keyed by the credential's hash, never the
credential itself."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, select

from store.engine import create_schema
from store.tables import subscription_catalog
from store.upsert import replace_upsert


def save(engine: Engine, rows: list[dict[str, Any]], *, replace_all: bool = False) -> int:
    """Upsert catalog rows (one per credential and subscription); ``replace_all`` drops the others."""
    create_schema(engine)
    with engine.begin() as conn:
        if replace_all:
            conn.execute(delete(subscription_catalog))
        return replace_upsert(conn, subscription_catalog, rows,
                              key=("credential_sha256", "api_name", "api_version"))


def load(engine: Engine) -> list[dict[str, Any]]:
    """Every catalog row as a dict."""
    create_schema(engine)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(subscription_catalog))]
