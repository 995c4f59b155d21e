"""The analytics store: SQL tables (SQLAlchemy Core), the dialect-aware additive
upsert, and engine set-up. SQLite is the embedded default; PostgreSQL is the
production store. The table definitions in :mod:`store.tables` are the single
source of truth for the schema.
"""
