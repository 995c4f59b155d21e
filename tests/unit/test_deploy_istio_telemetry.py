"""The Istio 1.20+ configuration in deploy/istio/telemetry agrees with the collector's Service,
with the access-log contract (docs/access-log-attributes.md) and with the collector's mapping.

Static checks only, as in test_deploy_manifests.py: every YAML document is parsed; the providers'
service and port are checked against deploy/kubernetes, the OTLP labels against the table of the
attribute document (the single source of the Envoy command operators) and against the attributes the
`envoy-access-log` mapping reads, and the worked-example OpenAPI document against the catalog parser.
No cluster, no istioctl, no helm.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml

from apim_analytics.apis_cli import read_documents
from collector import mapping
from core.api_catalog import ApiCatalog, Resource, parse_openapi
from tests.support.manifests import Doc, load_docs

ROOT = Path(__file__).resolve().parents[2]
TELEMETRY_DIR = ROOT / "deploy" / "istio" / "telemetry"
K8S_BASE = ROOT / "deploy" / "kubernetes" / "base"
ATTRIBUTES_DOC = ROOT / "docs" / "access-log-attributes.md"
ISTIO_README = ROOT / "deploy" / "istio" / "README.md"

ISTIO_OPERATOR = TELEMETRY_DIR / "mesh-config.yaml"
HELM_VALUES = TELEMETRY_DIR / "mesh-config-helm-values.yaml"
TELEMETRY_FILES = {"apim-analytics-als": TELEMETRY_DIR / "telemetry-als.yaml",
                   "apim-analytics-otel": TELEMETRY_DIR / "telemetry-otel.yaml"}
OPENAPI_EXAMPLE = TELEMETRY_DIR / "pizzashack-openapi.yaml"
ALS_PROVIDER, OTEL_PROVIDER = TELEMETRY_FILES
LOG_NAME = "apim-analytics"
ROOT_NAMESPACE = "istio-system"  # Istio's root namespace: a Telemetry there without a selector is mesh-wide

# Attributes the collector derives itself rather than reading them from a log entry or record:
# api.* from the API catalog; response.time = request.time + response.duration; source.namespace from
# the SPIFFE source.principal; reporter from upstream.cluster; request.time is the OTLP record's
# time_unix_nano; request.jwt_claims come from the ALS entry's jwt_authn metadata. None of them is an
# OTLP label (docs/access-log-attributes.md).
DERIVED_PREFIXES = ("api.",)
DERIVED = {"response.time", "source.namespace", "reporter", "request.time", "request.jwt_claims"}
# Read for the catalog match (with request.host and request.method) but mapped to no event field.
CATALOG_ONLY = {"request.path"}
MAPPING = "envoy-access-log"

OPERATOR = re.compile(r"`(%[^`]+%)`")  # an Envoy command operator in a table cell: `%REQ(:METHOD)%`
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


# ---------------------------------------------------------------- loading


def is_derived(attribute: str) -> bool:
    return attribute in DERIVED or attribute.startswith(DERIVED_PREFIXES)


@functools.cache
def attribute_table() -> dict[str, list[str]]:
    """docs/access-log-attributes.md's table: attribute -> its cells (ALS, OTLP, UsageEvent field)."""
    lines = ATTRIBUTES_DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| attribute |"))
    header = [c.strip() for c in UNESCAPED_PIPE.split(lines[start])[1:-1]]
    assert header[0] == "attribute" and header[2].startswith("OTLP"), header
    assert set(lines[start + 1]) <= set("|-: "), "the header is followed by the table's separator row"
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|") for c in UNESCAPED_PIPE.split(line)[1:-1]]
        assert len(cells) == len(header), line
        name = cells[0].strip("`")
        assert name not in rows, f"{name} twice in the table"
        rows[name] = cells[1:]
    return rows


@functools.cache
def doc_operators() -> dict[str, str]:
    """Attribute -> the Envoy command operator the doc's OTLP column gives (attributes without one left out)."""
    out: dict[str, str] = {}
    for name, cells in attribute_table().items():
        operators = OPERATOR.findall(cells[1])
        assert len(operators) <= 1, f"{name}: more than one operator in {cells[1]!r}"
        if operators:
            out[name] = operators[0]
    return out


def mapped_attributes() -> set[str]:
    """Every attribute the collector's envoy-access-log mapping reads: dimensions, properties, credential."""
    m = mapping.load_mappings()[MAPPING]
    names = {dim for dim, _ in m.dimensions} | {attr for attr, _ in m.properties}
    if m.credential:
        names.add(m.credential)
    return names


@functools.cache
def telemetry_docs() -> tuple[Doc, ...]:
    """The Kubernetes resources of the folder (the Helm values and the OpenAPI document are not)."""
    return load_docs([ISTIO_OPERATOR, *TELEMETRY_FILES.values()])


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def operator_mesh_config() -> dict[str, Any]:
    [iop] = [d for d in telemetry_docs() if d.path == ISTIO_OPERATOR]
    return iop.spec["meshConfig"]


def helm_mesh_config() -> dict[str, Any]:
    return yaml_file(HELM_VALUES)["meshConfig"]


def providers() -> dict[str, dict[str, Any]]:
    listed = operator_mesh_config()["extensionProviders"]
    by_name = {p["name"]: p for p in listed}
    assert len(by_name) == len(listed), "provider names must be unique"
    return by_name


def otel_labels() -> dict[str, str]:
    return providers()[OTEL_PROVIDER]["envoyOtelAls"]["logFormat"]["labels"]


@functools.cache
def collector_service() -> Doc:
    """The collector's Service in deploy/kubernetes/base: the one Service with a `grpc` port."""
    k8s = load_docs(sorted(K8S_BASE.glob("*.yaml")))
    services = [d for d in k8s if d.kind == "Service" and any(p["name"] == "grpc" for p in d.spec["ports"])]
    assert len(services) == 1, [d.name for d in services]
    return services[0]


def collector_address() -> tuple[str, int]:
    svc = collector_service()
    [grpc] = [p for p in svc.spec["ports"] if p["name"] == "grpc"]
    return f"{svc.name}.{svc.namespace}.svc.cluster.local", grpc["port"]


# ---------------------------------------------------------------- files


def test_every_file_parses_and_is_what_its_name_says() -> None:
    files = sorted(p.name for p in TELEMETRY_DIR.iterdir() if p.suffix in (".yaml", ".yml"))
    assert files == sorted([ISTIO_OPERATOR.name, HELM_VALUES.name, OPENAPI_EXAMPLE.name,
                            *(p.name for p in TELEMETRY_FILES.values())])
    for path in TELEMETRY_DIR.glob("*.yaml"):
        assert len([d for d in yaml.safe_load_all(path.read_text()) if d is not None]) == 1, path
    kinds = {(d.path.name, d.body["apiVersion"], d.kind) for d in telemetry_docs()}
    assert kinds == {("mesh-config.yaml", "install.istio.io/v1alpha1", "IstioOperator"),
                     ("telemetry-als.yaml", "telemetry.istio.io/v1alpha1", "Telemetry"),
                     ("telemetry-otel.yaml", "telemetry.istio.io/v1alpha1", "Telemetry")}
    assert set(yaml_file(HELM_VALUES)) == {"meshConfig"}
    assert set(operator_mesh_config()) == {"extensionProviders"}
    assert yaml_file(OPENAPI_EXAMPLE)["openapi"].startswith("3.0.")


def test_the_doc_table_is_parsed_and_only_derived_attributes_lack_an_operator() -> None:
    table = attribute_table()
    assert len(table) >= 20
    assert {"request.host", "request.path", "request.method", "request.auth_header"} <= set(table)
    assert table["request.method"][1] == "`%REQ(:METHOD)%`"
    assert doc_operators()["response.duration"] == "%DURATION%"  # "`%DURATION%` (ms)"
    assert "inbound|" in table["reporter"][0]  # the escaped pipe stays inside its cell
    without_operator = set(table) - set(doc_operators())
    assert without_operator == {a for a in table if is_derived(a)}, (
        "an attribute the collector reads from OTLP records needs an operator in the table, and a derived one "
        "none; if the collector now derives another attribute, add it to DERIVED")


def test_the_mesh_config_defines_exactly_the_two_providers() -> None:
    assert set(providers()) == {ALS_PROVIDER, OTEL_PROVIDER}
    assert set(providers()[ALS_PROVIDER]) == {"name", "envoyHttpAls"}
    assert set(providers()[OTEL_PROVIDER]) == {"name", "envoyOtelAls"}


def test_helm_values_and_the_istio_operator_overlay_carry_the_same_mesh_config() -> None:
    assert helm_mesh_config() == operator_mesh_config()


# ---------------------------------------------------------------- the collector's Service


def test_both_providers_point_at_the_collector_service_grpc_port() -> None:
    host, port = collector_address()
    assert (host, port) == ("apim-analytics-collector.apim-analytics.svc.cluster.local", 9091)
    for name, kind in ((ALS_PROVIDER, "envoyHttpAls"), (OTEL_PROVIDER, "envoyOtelAls")):
        config = providers()[name][kind]
        assert config["service"] == host, name
        assert config["port"] == port, name
        assert config["logName"] == LOG_NAME, name


def test_the_collector_service_speaks_grpc_on_that_port() -> None:
    [grpc] = [p for p in collector_service().spec["ports"] if p["name"] == "grpc"]
    assert grpc["appProtocol"] == "grpc"  # Istio builds an HTTP/2 cluster for the provider's service
    assert grpc["protocol"] == "TCP"


# ---------------------------------------------------------------- ALS


def test_als_provider_logs_the_authorization_header_and_nothing_it_does_not_know() -> None:
    als = providers()[ALS_PROVIDER]["envoyHttpAls"]
    assert [h.lower() for h in als["additionalRequestHeadersToLog"]] == ["authorization"]
    # EnvoyHttpGrpcV3LogProvider's fields (istio/api mesh/v1alpha1/config.proto), in JSON names.
    known = {"service", "port", "logName", "filterStateObjectsToLog", "additionalRequestHeadersToLog",
             "additionalResponseHeadersToLog", "additionalResponseTrailersToLog"}
    assert set(als) <= known


# ---------------------------------------------------------------- OTLP


def test_otel_provider_has_only_known_fields_and_a_short_text() -> None:
    otel = providers()[OTEL_PROVIDER]["envoyOtelAls"]
    # EnvoyOpenTelemetryLogProvider and its LogFormat (istio/api mesh/v1alpha1/config.proto).
    assert set(otel) == {"service", "port", "logName", "logFormat"}
    assert set(otel["logFormat"]) == {"text", "labels"}
    text = otel["logFormat"]["text"]
    assert isinstance(text, str) and 0 < len(text) <= 120
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in otel_labels().items())


def test_otel_labels_are_the_mapped_attributes_the_collector_does_not_derive() -> None:
    mapped = mapped_attributes()
    read_from_records = {a for a in mapped if not is_derived(a)} | CATALOG_ONLY
    labels = set(otel_labels())
    assert labels == read_from_records, (
        f"labels the mapping does not read: {sorted(labels - read_from_records)}; "
        f"attributes the mapping reads that no label sets: {sorted(read_from_records - labels)}")
    assert CATALOG_ONLY.isdisjoint(mapped)


def test_otel_label_values_are_the_operators_of_the_doc() -> None:
    assert otel_labels() == doc_operators()


def test_the_credential_attribute_is_a_label_and_the_als_header() -> None:
    credential = mapping.load_mappings()[MAPPING].credential
    assert credential == "request.auth_header"
    assert otel_labels()[credential] == "%REQ(AUTHORIZATION)%"
    assert "authorization" in attribute_table()[credential][0]


# ---------------------------------------------------------------- Telemetry resources


def test_telemetry_resources_enable_one_existing_provider_mesh_wide_in_server_mode() -> None:
    names = set()
    for provider, path in TELEMETRY_FILES.items():
        [doc] = [d for d in telemetry_docs() if d.path == path]
        assert doc.namespace == ROOT_NAMESPACE, path
        assert "selector" not in doc.spec and "targetRefs" not in doc.spec, "mesh-wide: no selector"
        assert set(doc.spec) == {"accessLogging"}, path
        [logging] = doc.spec["accessLogging"]
        assert logging["match"] == {"mode": "SERVER"}, path
        assert [p["name"] for p in logging["providers"]] == [provider]
        assert provider in providers()
        assert not logging.get("disabled"), path
        names.add(doc.name)
    # One name: applying one file replaces the other, so both are never active together.
    assert names == {"apim-analytics"}


# ---------------------------------------------------------------- the worked example


EXPECTED_RESOURCES = (Resource("GET", "/menu"), Resource("POST", "/order"), Resource("GET", "/order/{orderId}"))
EXPECTED_HOSTNAMES = ("pizzashack", "pizzashack.default", "pizzashack.default.svc.cluster.local",
                      "pizzashack.example.com")


def test_the_openapi_example_parses_to_the_pizzashack_api() -> None:
    api = parse_openapi(yaml_file(OPENAPI_EXAMPLE), str(OPENAPI_EXAMPLE))
    assert (api.name, api.version, api.context) == ("PizzaShackAPI", "1.0.0", "/pizzashack/1.0.0")
    assert api.resources == EXPECTED_RESOURCES
    assert api.hostnames == EXPECTED_HOSTNAMES
    assert api.tcp_clusters == ()


def test_apis_load_accepts_the_openapi_example_and_matches_its_requests() -> None:
    [api] = read_documents([OPENAPI_EXAMPLE])  # what `apim-analytics apis load` parses and checks
    catalog = ApiCatalog([api])
    match = catalog.match("pizzashack.example.com", "/pizzashack/1.0.0/order/42?x=1", "GET")
    assert match is not None
    assert (match.api.name, match.resource_template, match.resource_path) == ("PizzaShackAPI", "/order/{orderId}",
                                                                              "/order/42")
    menu = catalog.match("pizzashack.default.svc.cluster.local:8080", "/pizzashack/1.0.0/menu", "GET")
    assert menu is not None and menu.resource_template == "/menu"
    assert catalog.match("other.example.com", "/pizzashack/1.0.0/menu", "GET") is None  # not its hostname


def test_the_example_matches_the_mixer_era_api_spec() -> None:
    """Same API, version and context as deploy/istio/examples/pizzashack-apispec.yaml."""
    spec = next(d for d in load_docs([ROOT / "deploy" / "istio" / "examples" / "pizzashack-apispec.yaml"])
                if d.kind == "HTTPAPISpec")
    attributes = {k: v["stringValue"] for k, v in spec.spec["attributes"]["attributes"].items()}
    api = parse_openapi(yaml_file(OPENAPI_EXAMPLE), str(OPENAPI_EXAMPLE))
    assert attributes == {"api.service": api.name, "api.version": api.version, "api.context": api.context}
    mixer = {(p["httpMethod"], p["uriTemplate"]) for p in spec.spec["patterns"]}
    assert mixer <= {(r.method, r.template) for r in api.resources}


# ---------------------------------------------------------------- READMEs


def test_the_readme_covers_every_file_and_the_istio_readme_points_here() -> None:
    readme = (TELEMETRY_DIR / "README.md").read_text()
    for path in TELEMETRY_DIR.glob("*.yaml"):
        assert f"`{path.name}`" in readme, path.name
    for provider in TELEMETRY_FILES:
        assert provider in readme
    assert "Authorization" in readme
    assert "NO_API" in readme
    assert "deploy/istio/telemetry" in ISTIO_README.read_text()
