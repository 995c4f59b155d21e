"""The simulated catalog's APIs as the OpenAPI 3 documents an API manager publishes them with.

``apim-analytics apis load DIR/*.yaml`` turns them into the API catalog the
collector matches Istio 1.8+ access logs against, so ALS and OTLP traffic is
attributed to the same API, version and resource as the Mixer traffic is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from core.api_catalog import ApiDefinition, check_loadable, parse_openapi
from simulator.catalog import Api


def openapi_document(api: Api) -> dict[str, Any]:
    """One API version: title, version, context (``x-apim-context``), host name and resources."""
    paths: dict[str, dict[str, Any]] = {}
    for method, template in api.resources:
        operation = {"operationId": f"{method.lower()}{template.replace('/', '_').replace('{', '').replace('}', '')}",
                     "responses": {"200": {"description": "OK"}}}
        paths.setdefault(template, {})[method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": api.name, "version": api.version},
        "servers": [{"url": f"{api.protocol}://{api.hostname}{api.context}"}],
        "x-apim-context": api.context,
        "x-apim-hostnames": [api.hostname],
        "paths": paths,
    }


def write_openapi(folder: str | Path, apis: Iterable[Api]) -> list[Path]:
    """Write one ``<context as name>.yaml`` per API version into ``folder``; returns the files."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for api in apis:
        path = out / (api.context.strip("/").replace("/", "_") + ".yaml")
        path.write_text(yaml.safe_dump(openapi_document(api), sort_keys=False))
        written.append(path)
    return written


def load_catalog(store_url: str, apis: Iterable[Api], folder: str | Path | None = None) -> list[ApiDefinition]:
    """Make ``apis`` the store's whole API catalog, as `apim-analytics apis load --replace` would from their
    OpenAPI documents (written into ``folder`` first when given, and read back from there)."""
    from store import api_catalog
    from store.engine import make_engine

    apis = list(apis)
    if folder is not None:
        definitions = [parse_openapi(yaml.safe_load(p.read_text()), str(p)) for p in write_openapi(folder, apis)]
    else:
        definitions = [parse_openapi(openapi_document(a), f"{a.name}.yaml") for a in apis]
    check_loadable(definitions)
    engine = make_engine(store_url)
    try:
        api_catalog.save(engine, definitions, replace_all=True)
    finally:
        engine.dispose()
    return definitions
