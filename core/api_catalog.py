"""The API catalog: which managed API, version, resource template and method a request is.

Why: Envoy's access logs (Istio 1.8+) carry only the authority and the path of a
request, where Mixer's instances carried the API's name and version as attributes.
The APIs are already described in the OpenAPI documents they were published with,
so those are the source: ``info.title`` names the API, ``info.version`` its
version, ``x-apim-context`` (else the path of the first server URL) its context,
``paths`` its resource templates and methods, and ``x-apim-hostnames`` (optional)
the authorities it is served on.

A request is matched the way an API gateway routes it: the longest context that is
a path-segment prefix of the path (among the APIs served on its authority), then the
version segment after the context (or ``{version}`` inside the context), then the
most specific template of that version for the method (literal segments before
``{parameters}``). Both the collector and the pipeline use this module, so it has
no I/O: parsing a document and matching are pure functions of their inputs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from core.errors import InputError

#: The HTTP methods an OpenAPI path item may hold (OpenAPI 3.0 and 3.1).
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_VERSION_TOKEN = "{version}"
_PARAM = re.compile(r"^\{[^/{}]+\}$")


class CatalogError(InputError):
    """An API description cannot be used; names the file and the JSON pointer of the problem."""


@dataclass(frozen=True)
class Resource:
    method: str  # upper case, as logged: GET, POST...
    template: str  # "/items/{itemId}", relative to the API's context and version


@dataclass(frozen=True)
class ApiDefinition:
    name: str
    version: str
    context: str  # "/cart", or "/cart/{version}" when the version sits inside it
    hostnames: tuple[str, ...] = ()
    resources: tuple[Resource, ...] = ()
    source: str = ""  # the file it was loaded from, for messages and `apis list`
    tcp_clusters: tuple[str, ...] = ()  # Envoy clusters whose TCP connections count as calls of this API


@dataclass(frozen=True)
class ApiMatch:
    api: ApiDefinition
    resource_template: str  # "" when no template of the API matches the path and method
    resource_path: str = ""  # the path below the context and version, without the query: "/items/42"


def parse_openapi(doc: Any, source: str) -> ApiDefinition:
    """The API an OpenAPI 3.0 or 3.1 document describes; CatalogError (file and JSON pointer) if unusable."""
    if not isinstance(doc, Mapping):
        raise _error(source, "", "is not an OpenAPI document (expected a mapping at the top)")
    openapi = doc.get("openapi")
    if not isinstance(openapi, str) or not re.match(r"^3\.[01]\.\d+", openapi):
        raise _error(source, "/openapi", f"must be an OpenAPI 3.0 or 3.1 version, got {openapi!r}",
                     hint="Swagger 2.0 documents must be converted to OpenAPI 3 first")
    info = _mapping(doc, "info", source, "/info")
    name = _text(info, "title", source, "/info/title")
    version = _text(info, "version", source, "/info/version")
    context = _context(doc, source)
    hostnames = _hostnames(doc, source)
    paths = _mapping(doc, "paths", source, "/paths")
    resources: list[Resource] = []
    for template, item in paths.items():
        pointer = "/paths/" + _escape(str(template))
        if not isinstance(template, str) or not template.startswith("/"):
            raise _error(source, pointer, "a path must start with '/'")
        if not isinstance(item, Mapping):
            raise _error(source, pointer, "a path item must be a mapping")
        methods = [m for m in METHODS if m in item]
        for method in methods:
            if not isinstance(item[method], Mapping):
                raise _error(source, f"{pointer}/{method}", "an operation must be a mapping")
            resources.append(Resource(method.upper(), _normalise(template)))
    return ApiDefinition(name, version, context, hostnames, tuple(resources), source,
                         _names(doc, "x-apim-tcp-clusters", source))


def _context(doc: Mapping, source: str) -> str:
    if "x-apim-context" in doc:
        raw = doc["x-apim-context"]
        pointer = "/x-apim-context"
    else:
        servers = doc.get("servers")
        if not isinstance(servers, list) or not servers or not isinstance(servers[0], Mapping) \
                or not isinstance(servers[0].get("url"), str):
            raise _error(source, "/servers/0/url", "no context: give x-apim-context or a first server URL")
        raw = urlsplit(servers[0]["url"]).path
        pointer = "/servers/0/url"
    if not isinstance(raw, str) or not raw.startswith("/") or raw.rstrip("/") == "":
        raise _error(source, pointer, f"the context must be a path such as /cart, got {raw!r}")
    return _normalise(raw)


def _hostnames(doc: Mapping, source: str) -> tuple[str, ...]:
    return tuple(sorted({h.lower() for h in _names(doc, "x-apim-hostnames", source)}))


def _names(doc: Mapping, key: str, source: str) -> tuple[str, ...]:
    """A list-of-names extension (host names, Envoy clusters), sorted and without repeats."""
    raw = doc.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(h, str) and h for h in raw):
        raise _error(source, "/" + key, "must be a list of non-empty names")
    return tuple(sorted(set(raw)))


def _mapping(doc: Mapping, key: str, source: str, pointer: str) -> Mapping:
    value = doc.get(key)
    if not isinstance(value, Mapping):
        raise _error(source, pointer, "is missing or not a mapping")
    return value


def _text(doc: Mapping, key: str, source: str, pointer: str) -> str:
    value = doc.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # YAML reads `version: 2.0` as a number
    if not isinstance(value, str) or not value.strip():
        raise _error(source, pointer, "is missing or empty")
    return value.strip()


def _escape(token: str) -> str:
    """JSON pointer escaping (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def _error(source: str, pointer: str, problem: str, hint: str = "") -> CatalogError:
    return CatalogError(f"{source}#{pointer}: {problem}", hint=hint or "fix the document and load it again")


def _normalise(path: str) -> str:
    """Leading slash, no trailing slash, no empty segments: "/cart/", "cart" and "/cart//" are "/cart"."""
    return "/" + "/".join(s for s in path.split("/") if s)


def _host(authority: str) -> str:
    """The host of an authority, lower case, without its port ("[::1]:8080" -> "[::1]")."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def _version_in_context(api: ApiDefinition) -> bool:
    """The context carries the version ("/cart/{version}", or written out: "/pizzashack/1.0.0")."""
    return _VERSION_TOKEN in api.context or api.version in _segments(api.context)


class ApiCatalog:
    """The loaded APIs, indexed for matching requests."""

    def __init__(self, apis: Iterable[ApiDefinition]) -> None:
        self.apis = tuple(apis)
        self._by_context: dict[str, list[ApiDefinition]] = {}
        self._templates: dict[tuple[str, str, str], list[tuple[tuple[str, ...], str]]] = {}
        self._by_cluster = {cluster: api for api in self.apis for cluster in api.tcp_clusters}
        for api in self.apis:
            key = _normalise(api.context.replace(_VERSION_TOKEN, api.version))
            self._by_context.setdefault(key, []).append(api)
            for r in api.resources:
                patterns = self._templates.setdefault((api.name, api.version, r.method), [])
                patterns.append((tuple(_segments(r.template)), r.template))
        for patterns in self._templates.values():
            # most specific first: more literal segments, then longer
            patterns.sort(key=lambda p: (-sum(not _PARAM.match(s) for s in p[0]), -len(p[0]), p[1]))

    def match(self, authority: str, path: str, method: str) -> ApiMatch | None:
        """The API, version and template of a request, or None when no API's context matches."""
        segments = _segments(path.split("?", 1)[0].split("#", 1)[0])
        host = _host(authority)
        for length in range(len(segments), 0, -1):  # longest context first
            candidates = self._by_context.get("/" + "/".join(segments[:length]))
            if not candidates:
                continue
            served = [a for a in candidates if not a.hostnames or host in a.hostnames]
            if not served:
                continue
            rest = segments[length:]
            # The version is part of the context: "/cart/{version}", or written out ("/pizzashack/1.0.0").
            inside = [a for a in served if _version_in_context(a)]
            if inside:  # the version was part of the context
                return self._with_template(inside[0], rest, method)
            if rest:
                versioned = [a for a in served if a.version == rest[0]]
                if versioned:
                    return self._with_template(versioned[0], rest[1:], method)
        return None

    def match_cluster(self, cluster: str) -> ApiDefinition | None:
        """The API whose TCP connections go through Envoy cluster ``cluster`` (``x-apim-tcp-clusters``)."""
        return self._by_cluster.get(cluster)

    def _with_template(self, api: ApiDefinition, rest: list[str], method: str) -> ApiMatch:
        path = "/" + "/".join(rest)
        for pattern, template in self._templates.get((api.name, api.version, method.upper()), ()):
            if len(pattern) == len(rest) and all(p == s or _PARAM.match(p) for p, s in zip(pattern, rest)):
                return ApiMatch(api, template, path)
        return ApiMatch(api, "", path)


def check_loadable(apis: Iterable[ApiDefinition]) -> None:
    """Refuse a set of APIs a gateway could not route unambiguously: one name and version twice, or two
    APIs on the same context and version served on overlapping authorities."""
    by_key: dict[tuple[str, str], ApiDefinition] = {}
    by_route: dict[str, list[ApiDefinition]] = {}
    by_cluster: dict[str, ApiDefinition] = {}
    for api in apis:
        earlier = by_key.setdefault((api.name, api.version), api)
        if earlier is not api:
            raise CatalogError(f"{api.source}: API {api.name} {api.version} is also defined in {earlier.source}",
                               hint="load one document per API version")
        route = _normalise(api.context.replace(_VERSION_TOKEN, api.version)) + \
            ("" if _version_in_context(api) else "/" + api.version)
        for other in by_route.setdefault(route, []):
            if not api.hostnames or not other.hostnames or set(api.hostnames) & set(other.hostnames):
                raise CatalogError(f"{api.source}: API {api.name} {api.version} and {other.name} {other.version} "
                                   f"({other.source}) are both routed at {route}",
                                   hint="give them different contexts or x-apim-hostnames")
        by_route[route].append(api)
        for cluster in api.tcp_clusters:
            owner = by_cluster.setdefault(cluster, api)
            if owner is not api:
                raise CatalogError(f"{api.source}: TCP cluster {cluster} is claimed by API {api.name} {api.version} "
                                   f"and by {owner.name} {owner.version} ({owner.source})",
                                   hint="a cluster's connections can count for one API only")
