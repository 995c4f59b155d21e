"""The Kubernetes and Mixer manifests in deploy/kubernetes and deploy/istio agree
with each other and with the collector.

Static checks only: every YAML document is parsed, and names, labels,
selectors, ports, the embedded collector config, the handler address and the
rule references are cross-checked. No cluster and no kubectl needed.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import shlex
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor_pb2

from collector import mapping
from collector.settings import CollectorSettings
from core.settings import resolve
from schemas.mixer.template.metric import template_handler_service_pb2 as metric_pb2
from tests.support.manifests import Doc, load_docs

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
ISTIO_DIR = ROOT / "deploy" / "istio"
# The pipeline's and the Flink cluster's manifests have their own kustomizations and tests
# (test_deploy_pipeline.py, test_deploy_flink.py).
PIPELINE_DIR = K8S_DIR / "pipeline"
FLINK_DIR = K8S_DIR / "flink"
# deploy/istio/telemetry (Istio 1.20+: IstioOperator, Helm values, Telemetry, OpenAPI) is checked by
# test_deploy_istio_telemetry.py.
TELEMETRY_DIR = ISTIO_DIR / "telemetry"
SEPARATE_DIRS = (PIPELINE_DIR, FLINK_DIR, TELEMETRY_DIR)

NAMESPACE = "apim-analytics"
MIXER_NAMESPACE = "istio-system"
GRPC_PORT = 9091
METRICS_PORT = 9102
SPOOL_MOUNT = "/var/spool/apim-collector"

# docs/wso2-analytics.md section 1.2: the WSO2 adapter's wso2-metrics instance.
WSO2_DIMENSIONS = {
    "auth_header_value", "api_context", "api_name", "api_version", "resource_path", "resource_path_template",
    "request_method", "user_ip", "user_agent", "request_timestamp", "response_timestamp", "response_size",
    "api_protocol", "response_code", "destination", "request_host",
}

# docs/mixer-wire.md section 4: Istio 1.4's default metric instances.
ISTIO_VALUES = {
    "requestcount": "1",
    "requestduration": 'response.duration | "0ms"',
    "requestsize": "request.size | 0",
    "responsesize": "response.size | 0",
}
ISTIO_DIMENSIONS = {
    "reporter": 'conditional((context.reporter.kind | "inbound") == "outbound", "source", "destination")',
    "source_workload": 'source.workload.name | "unknown"',
    "source_workload_namespace": 'source.workload.namespace | "unknown"',
    "source_principal": 'source.principal | "unknown"',
    "source_app": 'source.labels["app"] | "unknown"',
    "source_version": 'source.labels["version"] | "unknown"',
    "destination_workload": 'destination.workload.name | "unknown"',
    "destination_workload_namespace": 'destination.workload.namespace | "unknown"',
    "destination_principal": 'destination.principal | "unknown"',
    "destination_app": 'destination.labels["app"] | "unknown"',
    "destination_version": 'destination.labels["version"] | "unknown"',
    "destination_service": 'destination.service.host | conditional((destination.service.name | "unknown") == '
                           '"unknown", "unknown", request.host)',
    "destination_service_name": 'destination.service.name | "unknown"',
    "destination_service_namespace": 'destination.service.namespace | "unknown"',
    "request_protocol": 'api.protocol | context.protocol | "unknown"',
    "response_code": "response.code | 200",
    "response_flags": 'context.proxy_error_code | "-"',
    "permissive_response_code": 'rbac.permissive.response_code | "none"',
    "permissive_response_policyid": 'rbac.permissive.effective_policy_id | "none"',
    "connection_security_policy": 'conditional((context.reporter.kind | "inbound") == "outbound", "unknown", '
                                  'conditional(connection.mtls | false, "mutual_tls", "none"))',
}


# ---------------------------------------------------------------- loading


def _yaml_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()
                  and not any(d in p.parents for d in SEPARATE_DIRS))


@functools.cache
def _docs(root: Path) -> tuple[Doc, ...]:
    return load_docs(_yaml_files(root))


def k8s_docs() -> tuple[Doc, ...]:
    return _docs(K8S_DIR)


def istio_docs() -> tuple[Doc, ...]:
    return _docs(ISTIO_DIR)


def resources(docs: tuple[Doc, ...]) -> list[Doc]:
    """Everything but kustomize's own files and `$patch: delete` patches."""
    return [d for d in docs if d.kind != "Kustomization" and "$patch" not in d.body]


def one(docs: tuple[Doc, ...] | list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in docs if d.kind == kind and (name is None or d.name == name)
             and "$patch" not in d.body]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[(str(d.path), d.name) for d in found]}"
    return found[0]


def workloads() -> list[Doc]:
    """The Deployment and its StatefulSet alternative: the same pod, checked the same way."""
    found = [d for d in resources(k8s_docs()) if d.kind in ("Deployment", "StatefulSet")]
    assert {d.kind for d in found} == {"Deployment", "StatefulSet"}
    return found


def pod_spec(workload: Doc) -> dict[str, Any]:
    return workload.spec["template"]["spec"]


def pod_labels(workload: Doc) -> dict[str, str]:
    return workload.spec["template"]["metadata"]["labels"]


def container(workload: Doc) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def named_ports(workload: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(workload)["ports"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def service() -> Doc:
    return one(resources(k8s_docs()), "Service", "apim-analytics-collector")


def service_port(name: str) -> dict[str, Any]:
    ports = [p for p in service().spec["ports"] if p["name"] == name]
    assert len(ports) == 1
    return ports[0]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def collector_config() -> dict[str, Any]:
    cm = one(resources(k8s_docs()), "ConfigMap", "apim-analytics-collector-config")
    return yaml.safe_load(cm.body["data"]["config.yaml"])["collector"]


def fqn(ref: str, kind: str, namespace: str) -> str:
    """A Mixer reference as Mixer resolves it: name, name.namespace or name.kind.namespace."""
    parts = ref.split(".")
    if len(parts) == 1:
        return f"{ref}.{kind}.{namespace}"
    if len(parts) == 2:
        return f"{parts[0]}.{kind}.{parts[1]}"
    assert len(parts) == 3 and parts[1] == kind, f"bad {kind} reference {ref!r}"
    return ref


def mixer_objects(kind: str) -> dict[str, Doc]:
    return {f"{d.name}.{kind}.{d.namespace}": d for d in istio_docs() if d.kind == kind}


def recognised_short_names() -> set[str]:
    """Instance kinds the deployed collector maps: the ConfigMap names no mapping file, so the pods
    load the shipped default (collector/mappings/default.yaml), through the collector's own loader."""
    assert not collector_config().get("mapping"), "the ConfigMap names its own mapping file: check that one"
    return set(mapping.load_mappings())


# ---------------------------------------------------------------- every file


def test_every_document_has_api_version_kind_and_name() -> None:
    docs = k8s_docs() + istio_docs()
    assert len(docs) >= 20
    for doc in docs:
        assert doc.body.get("apiVersion"), doc.path
        assert doc.body.get("kind"), doc.path
        assert doc.body.get("metadata", {}).get("name"), doc.path


def test_every_kubernetes_resource_is_in_the_collector_namespace() -> None:
    one(k8s_docs(), "Namespace", NAMESPACE)
    for doc in resources(k8s_docs()):
        if doc.kind != "Namespace":
            assert doc.namespace == NAMESPACE, f"{doc.path}: {doc.kind} {doc.name}"


def test_mixer_config_uses_v1alpha2_in_istio_system() -> None:
    for doc in istio_docs():
        assert doc.body["apiVersion"] == "config.istio.io/v1alpha2", doc.path
        if doc.kind in ("adapter", "template", "handler", "rule", "attributemanifest"):
            # Rules outside Mixer's default config namespace apply only to their own namespace.
            assert doc.namespace == MIXER_NAMESPACE, f"{doc.path}: {doc.kind} {doc.name}"


# ---------------------------------------------------------------- kustomize


def test_each_kustomization_lists_every_resource_file_beside_it() -> None:
    kustomizations = sorted(k for k in K8S_DIR.rglob("kustomization.yaml")
                            if not any(d in k.parents for d in SEPARATE_DIRS))
    assert kustomizations
    for kpath in kustomizations:
        k = yaml.safe_load(kpath.read_text())
        listed = set(k.get("resources", [])) | {p["path"] for p in k.get("patches", []) if "path" in p}
        for entry in listed:
            assert (kpath.parent / entry).exists(), f"{kpath}: {entry} does not exist"
        beside = {p.name for p in kpath.parent.iterdir() if p.suffix in (".yaml", ".yml")} - {kpath.name}
        assert beside <= listed, f"{kpath} does not list {sorted(beside - listed)}"
        for sub in kpath.parent.iterdir():
            if sub.is_dir() and sub.name in listed:
                assert (sub / "kustomization.yaml").exists(), sub


def test_top_kustomization_is_the_deployment_and_the_overlay_swaps_in_the_statefulset() -> None:
    top = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert top["resources"] == ["base"]
    base = yaml.safe_load((K8S_DIR / "base" / "kustomization.yaml").read_text())
    assert "deployment.yaml" in base["resources"]
    overlay = yaml.safe_load((K8S_DIR / "statefulset" / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../base", "statefulset.yaml"]
    delete = yaml.safe_load((K8S_DIR / "statefulset" / "delete-deployment.yaml").read_text())
    deployment = one(k8s_docs(), "Deployment")
    assert delete["$patch"] == "delete"
    assert (delete["kind"], delete["metadata"]["name"]) == ("Deployment", deployment.name)
    hpa_patch = next(p for p in overlay["patches"] if p.get("target", {}).get("kind") == "HorizontalPodAutoscaler")
    assert yaml.safe_load(hpa_patch["patch"]) == [
        {"op": "replace", "path": "/spec/scaleTargetRef/kind", "value": "StatefulSet"}]


# ---------------------------------------------------------------- names, labels, selectors


def test_workload_selectors_match_their_pod_labels() -> None:
    for w in workloads():
        assert w.name == "apim-analytics-collector"
        assert selects(w.spec["selector"]["matchLabels"], pod_labels(w)), w.path


def test_service_selects_the_collector_pods() -> None:
    for w in workloads():
        assert selects(service().spec["selector"], pod_labels(w))
    assert service().spec["type"] == "ClusterIP"
    sts = one(k8s_docs(), "StatefulSet")
    headless = one(k8s_docs(), "Service", sts.spec["serviceName"])
    assert headless.spec["clusterIP"] == "None"
    assert headless.spec["selector"] == service().spec["selector"]


def test_hpa_scales_the_deployment_within_bounds() -> None:
    hpa = one(k8s_docs(), "HorizontalPodAutoscaler")
    assert hpa.body["apiVersion"] == "autoscaling/v2"
    deployment = one(k8s_docs(), "Deployment")
    ref = hpa.spec["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment.name)
    assert (hpa.spec["minReplicas"], hpa.spec["maxReplicas"]) == (3, 20)
    assert deployment.spec["replicas"] == hpa.spec["minReplicas"]
    [metric] = hpa.spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert hpa.spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_pdb_and_network_policy_select_the_collector_pods() -> None:
    pdb = one(k8s_docs(), "PodDisruptionBudget")
    assert pdb.body["apiVersion"] == "policy/v1"
    assert pdb.spec.get("maxUnavailable") == 1 or pdb.spec.get("minAvailable") == 2
    netpol = one(k8s_docs(), "NetworkPolicy")
    for w in workloads():
        assert selects(pdb.spec["selector"]["matchLabels"], pod_labels(w))
        assert selects(netpol.spec["podSelector"]["matchLabels"], pod_labels(w))


def test_network_policy_admits_mixer_on_grpc_and_prometheus_on_metrics() -> None:
    netpol = one(k8s_docs(), "NetworkPolicy")
    rules = {tuple(p["port"] for p in r["ports"]): r["from"] for r in netpol.spec["ingress"]}
    assert set(rules) == {(GRPC_PORT,), (METRICS_PORT,)}
    [mixer, sidecars] = rules[(GRPC_PORT,)]
    assert mixer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": MIXER_NAMESPACE}
    assert mixer["podSelector"]["matchLabels"]["istio-mixer-type"] == "telemetry"
    # Istio 1.8+: the sidecars of every namespace send access logs (ALS, OTLP) to the same port
    assert sidecars == {"namespaceSelector": {}, "podSelector": {"matchLabels": {"security.istio.io/tlsMode": "istio"}}}
    assert any("prometheus" in peer["podSelector"]["matchLabels"].values() for peer in rules[(METRICS_PORT,)])


def test_service_account_is_used_and_mounts_no_token() -> None:
    sa = one(k8s_docs(), "ServiceAccount")
    assert sa.body["automountServiceAccountToken"] is False
    for w in workloads():
        assert pod_spec(w)["serviceAccountName"] == sa.name


# ---------------------------------------------------------------- ports and probes


def test_container_ports_match_the_service_and_the_probes() -> None:
    assert service_port("grpc")["port"] == GRPC_PORT
    assert service_port("metrics")["port"] == METRICS_PORT
    for w in workloads():
        ports = named_ports(w)
        assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
        for name in ("grpc", "metrics"):
            target = service_port(name)["targetPort"]
            assert target == name or target == ports[name]
        c = container(w)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == ports["grpc"], f"{w.kind} {probe}"
        annotations = w.spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == ports["metrics"]
        assert annotations["prometheus.io/path"] == "/metrics"


def test_pods_stay_out_of_the_mesh_and_run_locked_down() -> None:
    for w in workloads():
        assert w.spec["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        assert pod_spec(w)["securityContext"]["runAsNonRoot"] is True
        sc = container(w)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        res = container(w)["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"]
        assert res["limits"]["cpu"] and res["limits"]["memory"]
    assert one(k8s_docs(), "Deployment").spec["replicas"] == 3


# ---------------------------------------------------------------- collector config


def test_configmap_keys_are_collector_settings() -> None:
    known = {f.name for f in dataclasses.fields(CollectorSettings)}
    config = collector_config()
    assert set(config) <= known, f"unknown collector settings {sorted(set(config) - known)}"


def test_configmap_config_loads_as_the_collector_loads_it(tmp_path: Path) -> None:
    """The same loader, types and validation as `collector serve --config` at start-up."""
    fields = {f.name for f in dataclasses.fields(CollectorSettings)}
    config = {k: v for k, v in collector_config().items() if k in fields}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"collector": config}))
    settings = resolve(CollectorSettings, section="collector", config_file=path, environ={})
    assert settings.listen == config["listen"]


def spool_limit_mb(workload: Doc) -> float:
    """spool_max_mb as the pod sees it: its env var, else the ConfigMap, else the default."""
    env = {e["name"]: e.get("value") for e in container(workload).get("env", [])}
    field = {f.name: f for f in dataclasses.fields(CollectorSettings)}["spool_max_mb"]
    if field.metadata["env"] in env:
        return float(env[field.metadata["env"]])
    return float(collector_config().get("spool_max_mb", field.default))


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    raise AssertionError(f"unexpected quantity {quantity!r}")


def test_spool_limit_fits_the_spool_volume() -> None:
    for w in workloads():
        mount = next(m for m in container(w)["volumeMounts"] if m["mountPath"] == SPOOL_MOUNT)
        if w.kind == "Deployment":
            volume = next(v for v in pod_spec(w)["volumes"] if v["name"] == mount["name"])
            size = volume["emptyDir"]["sizeLimit"]  # exceeding it evicts the pod
        else:
            claim = next(t for t in w.spec["volumeClaimTemplates"] if t["metadata"]["name"] == mount["name"])
            size = claim["spec"]["resources"]["requests"]["storage"]
        assert spool_limit_mb(w) <= 0.8 * mebibytes(size), (w.kind, size)


def test_configmap_listens_on_the_container_ports() -> None:
    config = collector_config()
    host, port = host_port(config["listen"])
    assert host == "0.0.0.0"
    m_host, m_port = host_port(config["metrics_listen"])
    assert m_host == "0.0.0.0"
    for w in workloads():
        assert port == named_ports(w)["grpc"]
        assert m_port == named_ports(w)["metrics"]


def test_command_reads_the_mounted_config_and_the_spool_is_a_volume() -> None:
    config = collector_config()
    assert config["spool_dir"] == SPOOL_MOUNT
    for w in workloads():
        c = container(w)
        argv = c["command"] + c["args"]
        assert argv[:3] == ["apim-analytics", "collector", "serve"], shlex.join(argv)
        config_path = Path(argv[argv.index("--config") + 1])
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        config_volume = mounts[str(config_path.parent)]
        volumes = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
        cm = one(k8s_docs(), "ConfigMap")
        assert volumes[config_volume]["configMap"]["name"] == cm.name
        assert config_path.name in cm.body["data"]
        spool = mounts[SPOOL_MOUNT]
        if w.kind == "Deployment":
            assert "emptyDir" in volumes[spool]
        else:
            assert spool in {t["metadata"]["name"] for t in w.spec["volumeClaimTemplates"]}
            assert spool not in volumes


def test_termination_grace_covers_pre_stop_and_shutdown_grace() -> None:
    grace = collector_config().get("shutdown_grace_s", CollectorSettings.shutdown_grace_s)
    for w in workloads():
        command = container(w)["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop = float(command[1])
        assert pod_spec(w)["terminationGracePeriodSeconds"] > pre_stop + float(grace)


# ---------------------------------------------------------------- Mixer config


def test_handler_points_at_the_service_dns_name_and_grpc_port() -> None:
    handler = one(istio_docs(), "handler", "apim-analytics-handler")
    host, port = host_port(handler.spec["connection"]["address"])
    assert host == f"{service().name}.{service().namespace}.svc.cluster.local"
    assert port == service_port("grpc")["port"]
    assert "params" not in handler.spec


def test_adapter_is_a_metric_adapter_without_params() -> None:
    adapter = one(istio_docs(), "adapter", "apim-analytics")
    assert adapter.spec["templates"] == ["metric"]
    assert adapter.spec["session_based"] is False
    assert adapter.spec["description"]
    assert adapter.spec["config"] == ""
    handler = one(istio_docs(), "handler")
    assert fqn(handler.spec["adapter"], "adapter", handler.namespace) in mixer_objects("adapter")


def test_rules_reference_existing_handlers_and_dynamic_instances() -> None:
    handlers, instances, templates = mixer_objects("handler"), mixer_objects("instance"), mixer_objects("template")
    adapters = mixer_objects("adapter")
    rules = [d for d in istio_docs() if d.kind == "rule"]
    assert {r.name for r in rules} == {"apim-analytics-rule", "apim-analytics-istio-defaults-rule"}
    for rule in rules:
        assert 'context.protocol == "http"' in rule.spec["match"]
        assert 'context.protocol == "grpc"' in rule.spec["match"]
        assert '(context.reporter.kind | "inbound") == "inbound"' in rule.spec["match"]
        for action in rule.spec["actions"]:
            handler = handlers[fqn(action["handler"], "handler", rule.namespace)]
            adapter = adapters[fqn(handler.spec["adapter"], "adapter", handler.namespace)]
            supported = {fqn(t, "template", adapter.namespace) for t in adapter.spec["templates"]}
            for ref in action["instances"]:
                instance = instances[fqn(ref, "instance", rule.namespace)]
                # An out-of-process handler takes only instances of a template CR.
                assert "compiledTemplate" not in instance.spec, instance.name
                template = fqn(instance.spec["template"], "template", instance.namespace)
                assert template in templates and template in supported, (instance.name, template)


def test_only_one_rule_is_applied_by_default() -> None:
    """`kubectl apply -f deploy/istio/` (not recursive) must not route both instance families."""
    top_level = [d for d in istio_docs() if d.path.parent == ISTIO_DIR]
    [rule] = [d for d in top_level if d.kind == "rule"]
    assert [a["instances"] for a in rule.spec["actions"]] == [["wso2-metrics"]]
    assert not [d for d in top_level if d.kind == "instance" and d.name in ISTIO_VALUES]


def test_wso2_metrics_instance_has_exactly_the_16_dimensions() -> None:
    instance = one(istio_docs(), "instance", "wso2-metrics")
    params = instance.spec["params"]
    assert set(params["dimensions"]) == WSO2_DIMENSIONS
    assert len(params["dimensions"]) == 16
    assert params["value"] == "request.size | 0"
    assert params["dimensions"]["user_ip"] == 'source.ip | ip("0.0.0.0")'
    assert params["dimensions"]["resource_path_template"] == 'api.operation | ""'


def test_istio_default_instances_mirror_istio_1_4() -> None:
    for name, value in ISTIO_VALUES.items():
        params = one(istio_docs(), "instance", name).spec["params"]
        assert str(params["value"]) == value, name
        assert params["dimensions"] == ISTIO_DIMENSIONS, name
        assert len(params["dimensions"]) == 20
        assert params["monitored_resource_type"] == '"UNSPECIFIED"'


def test_instance_short_names_are_recognised_by_the_collector() -> None:
    instances = [d for d in istio_docs() if d.kind == "instance"]
    assert {d.name for d in instances} == {"wso2-metrics", *ISTIO_VALUES}
    for instance in instances:
        wire_name = f"{instance.name}.instance.{instance.namespace}"  # what Mixer sends
        assert mapping.short_name(wire_name) == instance.name
    recognised = recognised_short_names()
    assert "wso2-metrics" in recognised
    assert set(ISTIO_VALUES) <= recognised


def test_metric_template_describes_the_collectors_metric_messages() -> None:
    template = one(istio_docs(), "template", "metric")
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(base64.b64decode(template.spec["descriptor"], validate=True))
    with_variety = [f for f in fds.file if f.options.ListFields()
                    and any(fd.name == "template_variety" for fd, _ in f.options.ListFields())]
    assert len(with_variety) == 1
    tmpl_file = with_variety[0]
    assert tmpl_file.package == "metric"
    options = {fd.name: v for fd, v in tmpl_file.options.ListFields()}
    assert options["template_name"] == "metric"
    assert options["template_variety"] == 1  # TEMPLATE_VARIETY_REPORT
    messages = {m.name: m for m in tmpl_file.message_type}
    expected = metric_pb2.DESCRIPTOR.message_types_by_name
    for name in ("InstanceMsg", "HandleMetricRequest"):
        got = {(f.name, f.number, f.type, f.type_name.lstrip(".")) for f in messages[name].field}
        want = {(f.name, f.number, f.type, f.message_type.full_name if f.message_type else "")
                for f in expected[name].fields}
        assert got == want, name
    [svc] = tmpl_file.service
    assert (svc.name, svc.method[0].name) == ("HandleMetricService", "HandleMetric")


def test_attribute_manifest_adds_the_custom_attributes() -> None:
    manifest = one(istio_docs(), "attributemanifest")
    # Istio's own manifests are `istioproxy` and `kubernetes`; reusing a name would replace them.
    assert manifest.name not in ("istioproxy", "istio-proxy", "kubernetes")
    attributes = manifest.spec["attributes"]
    assert {k: v["valueType"] for k, v in attributes.items()} == {"api.context": "STRING", "resource.scope": "STRING"}


def test_api_spec_example_sets_the_api_attributes() -> None:
    spec = one(istio_docs(), "HTTPAPISpec")
    attributes = {k: v["stringValue"] for k, v in spec.spec["attributes"]["attributes"].items()}
    assert attributes == {"api.service": "PizzaShackAPI", "api.version": "1.0.0", "api.context": "/pizzashack/1.0.0"}
    patterns = spec.spec["patterns"]
    assert len(patterns) == 2
    for p in patterns:
        assert p["httpMethod"] and p["uriTemplate"]
        assert p["attributes"]["attributes"]["api.operation"]["stringValue"] == p["uriTemplate"]
    binding = one(istio_docs(), "HTTPAPISpecBinding")
    assert binding.spec["apiSpecs"] == [{"name": spec.name, "namespace": spec.namespace}]
    assert binding.spec["services"][0]["namespace"] == spec.namespace
    wso2 = one(istio_docs(), "instance", "wso2-metrics").spec["params"]["dimensions"]
    for attribute in attributes:
        assert any(expr.startswith(attribute) for expr in wso2.values()), attribute
