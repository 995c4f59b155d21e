"""Table definitions: the single source of truth for the store's schema.

Invariants every writer relies on:
- Aggregate tables hold only additive measures, keyed by bucket start (UTC,
  event time) plus dimensions, so every write is ``insert ... on conflict ...
  add`` and a late event simply adds to its own bucket.
- ``source_offsets`` records, per topic partition, the next Kafka offset to
  read. It is written in the same transaction as the aggregates, which is what
  makes a replayed run unable to count anything twice.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Integer, MetaData, String, Table

metadata = MetaData()

# Dimension widths follow WSO2's stats tables (varchar 100-254), widened where
# mesh names are longer.
NAME = 255

usage_minute = Table(
    "usage_minute",
    metadata,
    Column("bucket_start", DateTime(timezone=False), primary_key=True, comment="bucket start, UTC, event time"),
    Column("api_name", String(NAME), primary_key=True),
    Column("api_version", String(64), primary_key=True),
    Column("application_id", String(NAME), primary_key=True, comment="'anonymous' for unauthenticated calls"),
    Column("tier", String(64), primary_key=True, comment="subscription tier (Gold, Silver, ..., Unauthenticated)"),
    Column("requests", BigInteger, nullable=False, default=0),
    Column("count_2xx", BigInteger, nullable=False, default=0),
    Column("count_3xx", BigInteger, nullable=False, default=0),
    Column("count_4xx", BigInteger, nullable=False, default=0),
    Column("count_5xx", BigInteger, nullable=False, default=0),
    Column("request_bytes", BigInteger, nullable=False, default=0),
    Column("response_bytes", BigInteger, nullable=False, default=0),
    comment="API usage per minute by API, version, application and subscription tier",
)

USAGE_KEY_COLUMNS = ("bucket_start", "api_name", "api_version", "application_id", "tier")
USAGE_MEASURE_COLUMNS = (
    "requests", "count_2xx", "count_3xx", "count_4xx", "count_5xx", "request_bytes", "response_bytes",
)

subscription_catalog = Table(
    "subscription_catalog",
    metadata,
    Column("credential_sha256", String(64), primary_key=True,
           comment="SHA-256 hex (first 32 chars) of the opaque token or API key; never the credential itself"),
    Column("api_name", String(NAME), primary_key=True),
    Column("api_version", String(64), primary_key=True),
    Column("tier", String(64), nullable=False, comment="subscription tier of this application for this API"),
    Column("application_id", String(NAME), nullable=False),
    Column("application_name", String(NAME), nullable=False, default=""),
    Column("application_owner", String(NAME), nullable=False, default=""),
    Column("application_tier", String(64), nullable=False, default=""),
    Column("consumer_key", String(NAME), nullable=False, default=""),
    Column("key_type", String(16), nullable=False, default="PRODUCTION"),
    Column("user_name", String(NAME), nullable=False, default=""),
    Column("credential_kind", String(16), nullable=False, default="OPAQUE_TOKEN",
           comment="OPAQUE_TOKEN or API_KEY"),
    comment="opaque tokens and API keys -> application and subscriptions, for the collector",
)

seen_batches = Table(
    "seen_batches",
    metadata,
    Column("topic", String(NAME), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("call_id", String(64), primary_key=True, comment="record key: the producer call's digest"),
    Column("record_offset", BigInteger, nullable=False),
    Column("committed_at", DateTime(timezone=False), nullable=False),
    comment="recently counted producer calls per partition, so a call delivered twice "
            "(a timed-out send plus its spooled copy) is counted once even across runs",
)

source_offsets = Table(
    "source_offsets",
    metadata,
    Column("topic", String(NAME), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False, comment="the first offset not yet aggregated"),
    Column("updated_at", DateTime(timezone=False), nullable=False),
    comment="Kafka offsets consumed, committed atomically with the aggregates",
)
