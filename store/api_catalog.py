"""The API catalog in the store: saved whole by ``apis load``, read by the collector and the pipeline.

A load is one transaction: every document is parsed before anything is written,
so a malformed file leaves the store as it was (nothing half-loaded).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import Engine, delete, select, tuple_

from core.api_catalog import ApiDefinition, Resource
from store.engine import create_schema
from store.tables import api_definition_resources, api_definitions


def save(engine: Engine, apis: Iterable[ApiDefinition], *, replace_all: bool = False) -> int:
    """Store ``apis``: each replaces its own earlier definition (same name and version) with its resources;
    ``replace_all`` drops every API not among them. Returns how many APIs were written."""
    apis = list(apis)
    create_schema(engine)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    keys = [(a.name, a.version) for a in apis]
    with engine.begin() as conn:
        if replace_all:
            conn.execute(delete(api_definition_resources))
            conn.execute(delete(api_definitions))
        elif keys:
            for table in (api_definition_resources, api_definitions):
                conn.execute(delete(table).where(tuple_(table.c.api_name, table.c.api_version).in_(keys)))
        if apis:
            conn.execute(api_definitions.insert(), [
                {"api_name": a.name, "api_version": a.version, "api_context": a.context,
                 "hostnames": ",".join(a.hostnames), "source": a.source, "loaded_at": now,
                 "tcp_clusters": ",".join(a.tcp_clusters)} for a in apis])
        resources = [{"api_name": a.name, "api_version": a.version, "method": r.method,
                      "resource_template": r.template} for a in apis for r in sorted(set(a.resources),
                                                                                 key=lambda r: (r.template, r.method))]
        if resources:
            conn.execute(api_definition_resources.insert(), resources)
    return len(apis)


def load(engine: Engine) -> list[ApiDefinition]:
    """Every API of the catalog, with its resources, ordered by name and version."""
    create_schema(engine)
    with engine.connect() as conn:
        defs = conn.execute(select(api_definitions).order_by(api_definitions.c.api_name,
                                                              api_definitions.c.api_version)).all()
        rows = conn.execute(select(api_definition_resources)).all()
    resources: dict[tuple[str, str], list[Resource]] = {}
    for r in rows:
        resources.setdefault((r.api_name, r.api_version), []).append(Resource(r.method, r.resource_template))
    return [ApiDefinition(d.api_name, d.api_version, d.api_context,
                          tuple(h for h in d.hostnames.split(",") if h),
                          tuple(sorted(resources.get((d.api_name, d.api_version), []),
                                       key=lambda r: (r.template, r.method))), d.source,
                          tuple(c for c in d.tcp_clusters.split(",") if c)) for d in defs]
