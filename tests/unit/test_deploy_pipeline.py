"""The pipeline's Kubernetes manifests (deploy/kubernetes/pipeline) agree with
each other, with the collector's conventions and with the pipeline itself.

Static checks only: every YAML document is parsed, and the embedded config is
resolved with the project's own settings loader, the container's argv with
the CLI's own parser. No cluster and no kubectl needed.
"""

from __future__ import annotations

import functools
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from apim_analytics.cli import build_parser
from core.settings import resolve
from pipeline.settings import PipelineSettings
from store.retention import RetentionSettings
from tests.support.manifests import Doc, load_docs

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
PIPELINE_DIR = K8S_DIR / "pipeline"
EXAMPLE_SECRET = "secret.example.yaml"

NAMESPACE = "apim-analytics"
METRICS_PORT = 9103
HEALTH_PATH = "/healthz"
STORE_ENV = "APIM_STORE_URL"
SELECTOR = {"app.kubernetes.io/name": "istio-apim-analytics", "app.kubernetes.io/component": "pipeline"}


# ---------------------------------------------------------------- loading


@functools.cache
def docs() -> tuple[Doc, ...]:
    return load_docs(sorted(PIPELINE_DIR.glob("*.y*ml")))


def resources() -> list[Doc]:
    """What `kubectl apply -k deploy/kubernetes/pipeline` creates (not the example Secret)."""
    return [d for d in docs() if d.kind != "Kustomization" and d.path.name != EXAMPLE_SECRET]


def one(kind: str, *, among: list[Doc] | None = None) -> Doc:
    found = [d for d in (resources() if among is None else among) if d.kind == kind]
    assert len(found) == 1, f"expected one {kind}, found {[(d.path.name, d.name) for d in found]}"
    return found[0]


def deployment() -> Doc:
    return one("Deployment")


def pod_spec() -> dict[str, Any]:
    return deployment().spec["template"]["spec"]


def container() -> dict[str, Any]:
    [c] = pod_spec()["containers"]
    return c


def argv() -> list[str]:
    c = container()
    return [*c["command"], *c.get("args", [])]


def volumes() -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec().get("volumes", [])}


def mounts() -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in container().get("volumeMounts", [])}


def config_path() -> Path:
    args = argv()
    return Path(args[args.index("--config") + 1])


def config_text() -> str:
    """The file the pod reads with --config: the ConfigMap key at the mounted path."""
    path = config_path()
    mount = mounts()[str(path.parent)]
    cm_name = volumes()[mount["name"]]["configMap"]["name"]
    cm = one("ConfigMap")
    assert cm.name == cm_name
    return cm.body["data"][path.name]


def example_secret() -> Doc:
    return one("Secret", among=[d for d in docs() if d.path.name == EXAMPLE_SECRET])


def plain_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in container().get("env", []) if "value" in e}


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def probe_port(probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return {p["name"]: p["containerPort"] for p in container()["ports"]}[port]


def collector_deployment() -> dict[str, Any]:
    [body] = [b for b in yaml.safe_load_all((K8S_DIR / "base" / "deployment.yaml").read_text())
              if b and b.get("kind") == "Deployment"]
    return body


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(config_text())
    return path


# ---------------------------------------------------------------- every file


def test_every_document_has_api_version_kind_and_name_in_the_namespace() -> None:
    assert len(docs()) >= 6
    for doc in docs():
        assert doc.body.get("apiVersion"), doc.path
        assert doc.body.get("kind"), doc.path
        assert doc.body.get("metadata", {}).get("name"), doc.path
        if doc.kind != "Kustomization":
            assert doc.body["metadata"].get("namespace") == NAMESPACE, f"{doc.path}: {doc.kind} {doc.name}"
            assert selects(SELECTOR, doc.body["metadata"].get("labels", {})), f"{doc.path}: labels"


def test_kustomization_lists_every_resource_file_beside_it_but_the_example_secret() -> None:
    k = yaml.safe_load((PIPELINE_DIR / "kustomization.yaml").read_text())
    listed = set(k["resources"])
    for entry in listed:
        assert (PIPELINE_DIR / entry).is_file(), f"{entry} does not exist"
    beside = {p.name for p in PIPELINE_DIR.iterdir() if p.suffix in (".yaml", ".yml")} - {"kustomization.yaml"}
    assert listed == beside - {EXAMPLE_SECRET}
    assert EXAMPLE_SECRET in beside
    # No Namespace: `kubectl delete -k` on the pipeline must not take the collector's namespace with it.
    assert not [d for d in resources() if d.kind in ("Namespace", "Secret")]
    # One replica, no autoscaler, no disruption budget (see kustomization.yaml).
    assert not [d for d in resources() if d.kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget")]


def test_top_level_kustomization_is_still_the_collector_alone() -> None:
    top = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert top["resources"] == ["base"]


# ---------------------------------------------------------------- command and config


def test_command_follows_with_the_mounted_config_file() -> None:
    args = argv()
    assert args[:3] == ["apim-analytics", "pipeline", "run"], shlex.join(args)
    assert "--follow" in args and "--once" not in args
    path = config_path()
    assert path.is_absolute()
    mount = mounts()[str(path.parent)]
    assert mount.get("readOnly") is True
    assert "configMap" in volumes()[mount["name"]]
    assert config_text()


def test_configmap_config_yields_valid_pipeline_and_retention_settings(config_file: Path) -> None:
    raw = yaml.safe_load(config_file.read_text())
    assert set(raw) <= {"pipeline", "retention"}
    pipeline = resolve(PipelineSettings, section="pipeline", config_file=config_file, environ={})
    pipeline.validate()
    retention = resolve(RetentionSettings, section="retention", config_file=config_file, environ={})
    retention.validate()
    assert pipeline.metrics_listen == f"0.0.0.0:{METRICS_PORT}"
    # The password never goes in the ConfigMap.
    assert "store" not in raw["pipeline"]
    assert pipeline.store == PipelineSettings.store
    for section in raw.values():
        for name, value in section.items():
            assert not (isinstance(value, str) and "://" in value and "@" in value), f"credentials in {name}"


def test_the_pod_resolves_follow_mode_the_store_from_the_secret_and_the_file(config_file: Path) -> None:
    """What `pipeline run` resolves in the pod: its argv through the CLI's parser, its environment, the file."""
    args, beam_args = build_parser().parse_known_args(argv()[1:])
    assert beam_args == []
    url = example_secret().body["stringData"]["url"]
    environ = {**plain_env(), STORE_ENV: url}
    pipeline = resolve(PipelineSettings, args=args, section="pipeline", config_file=config_file, environ=environ)
    retention = resolve(RetentionSettings, args=args, section="retention", config_file=config_file, environ=environ)
    assert pipeline.follow is True
    assert pipeline.store == url
    assert make_url(pipeline.store).get_backend_name() == "postgresql"
    file_settings = yaml.safe_load(config_file.read_text())
    # No flag or plain variable overrides what the ConfigMap sets.
    for name, value in file_settings["pipeline"].items():
        assert getattr(pipeline, name) == value, name
    for name, value in file_settings["retention"].items():
        assert getattr(retention, name) == value, name


def test_store_url_comes_from_the_example_secrets_key() -> None:
    [env] = [e for e in container()["env"] if e["name"] == STORE_ENV]
    assert "value" not in env
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref.get("optional", False) is False
    secret = example_secret()
    assert ref["name"] == secret.name
    assert ref["key"] in secret.body["stringData"]
    # A template: a placeholder, not a password.
    assert make_url(secret.body["stringData"][ref["key"]]).password == "CHANGE-ME"
    for doc in resources():
        assert "secret" not in doc.body.get("data", {}) and doc.kind != "Secret"


# ---------------------------------------------------------------- the workload


def test_one_replica_recreated_never_rolled() -> None:
    spec = deployment().spec
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"] == SELECTOR
    assert selects(SELECTOR, spec["template"]["metadata"]["labels"])


def test_metrics_port_matches_the_config_the_probes_and_the_annotations(config_file: Path) -> None:
    pipeline = resolve(PipelineSettings, section="pipeline", config_file=config_file, environ={})
    host, port = host_port(pipeline.metrics_listen)
    assert host == "0.0.0.0"
    assert [(p["name"], p["containerPort"]) for p in container()["ports"]] == [("metrics", port)]
    assert port == METRICS_PORT
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container()[name]
        assert probe["httpGet"]["path"] == HEALTH_PATH, name
        assert probe_port(probe) == port, name
    annotations = deployment().spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["sidecar.istio.io/inject"] == "false"


def test_liveness_restarts_only_after_healthz_has_failed_for_a_while(config_file: Path) -> None:
    """/healthz is already 503 only after unhealthy_after_s; liveness then waits a little longer."""
    pipeline = resolve(PipelineSettings, section="pipeline", config_file=config_file, environ={})
    assert pipeline.unhealthy_after_s >= 120
    live = container()["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    start = container()["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= 30


def test_security_context_matches_the_collectors() -> None:
    collector_pod = collector_deployment()["spec"]["template"]["spec"]
    [collector_container] = collector_pod["containers"]
    assert pod_spec()["securityContext"] == collector_pod["securityContext"]
    assert container()["securityContext"] == collector_container["securityContext"]
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    sc = container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]


def test_service_account_is_the_pipelines_and_mounts_no_token() -> None:
    sa = one("ServiceAccount")
    assert sa.body["automountServiceAccountToken"] is False
    assert pod_spec()["serviceAccountName"] == sa.name
    assert pod_spec()["automountServiceAccountToken"] is False


def test_everything_writable_is_an_empty_dir() -> None:
    """The root filesystem is read-only: /tmp (Beam, tempfile) and any writable mount must be emptyDirs."""
    assert "/tmp" in mounts()
    tmpdir = plain_env().get("TMPDIR", "/tmp")
    assert tmpdir in mounts(), "TMPDIR must be a mounted volume"
    for path, mount in mounts().items():
        volume = volumes()[mount["name"]]
        if not mount.get("readOnly"):
            assert "emptyDir" in volume, f"{path} is writable but not an emptyDir"
            assert volume["emptyDir"].get("sizeLimit"), f"{path}: an emptyDir without sizeLimit"
    assert plain_env().get("PYTHONDONTWRITEBYTECODE") == "1"


def test_resources_fit_the_memory_bound() -> None:
    res = container()["resources"]
    assert res["requests"]["cpu"] in ("1", 1, "1000m")
    assert res["requests"]["memory"] == "1Gi"
    assert res["limits"]["memory"] == "2Gi"
    tmp = volumes()[mounts()["/tmp"]["name"]]["emptyDir"]
    assert tmp.get("medium") != "Memory", "a tmpfs counts against the memory limit"


def test_termination_grace_lets_the_run_in_progress_finish() -> None:
    assert pod_spec()["terminationGracePeriodSeconds"] >= 60
    assert "lifecycle" not in container(), "SIGTERM itself finishes the run; a preStop only delays it"


# ---------------------------------------------------------------- network policy


def test_network_policy_selects_the_pipeline_and_admits_only_prometheus_on_metrics() -> None:
    netpol = one("NetworkPolicy")
    assert netpol.body["apiVersion"] == "networking.k8s.io/v1"
    assert selects(netpol.spec["podSelector"]["matchLabels"], deployment().spec["template"]["metadata"]["labels"])
    assert set(netpol.spec["policyTypes"]) == {"Ingress", "Egress"}
    [rule] = netpol.spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": METRICS_PORT}]
    assert rule["from"], "an ingress rule without `from` admits everyone"
    for peer in rule["from"]:
        assert "prometheus" in peer["podSelector"]["matchLabels"].values()
    # Not the collector's policy: it selects the collector pods only.
    collector_netpol = yaml.safe_load((K8S_DIR / "base" / "networkpolicy.yaml").read_text())
    assert not selects(collector_netpol["spec"]["podSelector"]["matchLabels"],
                       deployment().spec["template"]["metadata"]["labels"])


def test_network_policy_egress_is_dns_kafka_and_postgresql_only(config_file: Path) -> None:
    netpol = one("NetworkPolicy")
    allowed = set()
    for rule in netpol.spec["egress"]:
        assert rule.get("ports"), "an egress rule without ports admits every port"
        allowed |= {(p["protocol"], p["port"]) for p in rule["ports"]}
    assert allowed == {("UDP", 53), ("TCP", 53), ("TCP", 9092), ("TCP", 5432)}
    pipeline = resolve(PipelineSettings, section="pipeline", config_file=config_file, environ={})
    for server in pipeline.kafka.split(","):
        assert ("TCP", host_port(server)[1]) in allowed, server
    store_port = make_url(example_secret().body["stringData"]["url"]).port
    assert ("TCP", store_port) in allowed
