"""``apim-analytics apis ...``: the API catalog that Envoy access logs are matched against.

    apim-analytics apis load FILE... --store URL [--replace]   OpenAPI 3.0/3.1 documents (YAML or JSON)
    apim-analytics apis list --store URL [--format table|json]

A load parses and checks every file first and writes them in one transaction:
a malformed document is refused with its file name and the JSON pointer of the
problem, and nothing of that load is stored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from apim_analytics.common import add_store_flags, store_url

if TYPE_CHECKING:
    from core.api_catalog import ApiDefinition


def read_documents(paths: list[Path]) -> list[ApiDefinition]:
    """Parse every file into an ApiDefinition; CatalogError names the file (and pointer) on any problem."""
    import yaml

    from core.api_catalog import CatalogError, check_loadable, parse_openapi

    apis: list[ApiDefinition] = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{path}: cannot be read ({exc})", hint="give the path of an OpenAPI document") from exc
        try:
            doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            first = " ".join(str(exc).split())[:200]
            raise CatalogError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {first}",
                               hint="fix the document and load it again") from exc
        apis.append(parse_openapi(doc, str(path)))
    check_loadable(apis)
    return apis


def _load(args: argparse.Namespace) -> int:
    from store import api_catalog
    from store.engine import make_engine

    apis = read_documents(args.files)
    engine = make_engine(store_url(args))
    try:
        written = api_catalog.save(engine, apis, replace_all=args.replace)
    finally:
        engine.dispose()
    resources = sum(len(a.resources) for a in apis)
    print(f"apis: {written} API version(s), {resources} resource(s) loaded"
          f"{' (the catalog replaced)' if args.replace else ''}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from store import api_catalog
    from store.engine import make_engine

    engine = make_engine(store_url(args), readonly=True)
    try:
        apis = api_catalog.load(engine)
    finally:
        engine.dispose()
    if args.format == "json":
        print(json.dumps([{"name": a.name, "version": a.version, "context": a.context,
                           "hostnames": list(a.hostnames), "tcp_clusters": list(a.tcp_clusters), "source": a.source,
                           "resources": [{"method": r.method, "template": r.template} for r in a.resources]}
                          for a in apis], indent=2))
        return 0
    print(f"{'API':<24} {'VERSION':<10} {'CONTEXT':<24} {'RESOURCES':>9}  HOSTNAMES")
    for a in apis:
        print(f"{a.name:<24} {a.version:<10} {a.context:<24} {len(a.resources):>9}  {','.join(a.hostnames) or '*'}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``apis`` command and its actions to the top-level subparsers."""
    apis = sub.add_parser("apis", help="the API catalog from OpenAPI documents (Istio 1.8+ access logs)"
                          ).add_subparsers(dest="action", required=True, metavar="ACTION")
    load = apis.add_parser("load", help="load OpenAPI 3.0/3.1 documents (YAML or JSON) into the store")
    load.add_argument("files", nargs="+", type=Path, metavar="FILE")
    load.add_argument("--replace", action="store_true", help="drop every API not in these files")
    add_store_flags(load)
    load.set_defaults(func=_load)
    listing = apis.add_parser("list", help="list the catalog's APIs")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    add_store_flags(listing)
    listing.set_defaults(func=_list)
