"""The Flink session cluster manifests in deploy/kubernetes/flink agree with each other, with the
local cluster (deploy/local/flink-cluster.sh), with the project's other manifests and with the
streaming pipeline's own settings.

Static checks only: every YAML document is parsed, Flink's config.yaml is read from its ConfigMap,
the driver's argv goes through the CLI's parser and its config through the project's settings
loader. No cluster and no kubectl needed.
"""

from __future__ import annotations

import functools
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import apache_beam
import pytest
import yaml

from apim_analytics.cli import build_parser
from core.settings import resolve
from pipeline.settings import PipelineSettings
from tests.support.manifests import Doc, load_docs

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "kubernetes"
FLINK_DIR = K8S_DIR / "flink"
LOCAL_SCRIPT = ROOT / "deploy" / "local" / "flink-cluster.sh"
JOBSERVER_POM = ROOT / "deploy" / "local" / "flink-jobserver" / "pom.xml"

NAMESPACE = "apim-analytics"
LABELS = {"app.kubernetes.io/name": "istio-apim-analytics", "app.kubernetes.io/part-of": "istio-apim-analytics"}
SLOTS = 2
JM_PORTS = {"rpc": 6123, "blob": 6124, "rest": 8081}
TM_PORTS = {"rpc": 6122, "data": 6121}
JOBSERVER_PORTS = {"job": 8099, "artifact": 8098, "expansion": 8097}
WORKER_POOL_PORT = 50000
METRICS_PORT = 9103
STORE_SECRET = "apim-analytics-pipeline-store"

# Every key either config.yaml sets, each found in Flink 1.19.3's option classes (flink-dist's
# org.apache.flink.configuration.*Options and streaming's ExecutionCheckpointingOptions) by hand.
# A key outside this set is a typo until checked the same way (Flink ignores unknown keys).
FLINK_119_KEYS = {
    "jobmanager.rpc.address", "jobmanager.rpc.port", "jobmanager.bind-host", "jobmanager.memory.process.size",
    "jobmanager.execution.failover-strategy", "blob.server.port", "rest.address", "rest.bind-address",
    "rest.port", "taskmanager.host", "taskmanager.bind-host", "taskmanager.rpc.port", "taskmanager.data.port",
    "taskmanager.numberOfTaskSlots", "taskmanager.memory.process.size", "taskmanager.memory.managed.fraction",
    "parallelism.default", "state.backend.type", "state.checkpoints.dir", "state.savepoints.dir",
    "state.checkpoints.num-retained", "execution.checkpointing.externalized-checkpoint-retention",
    "execution.checkpointing.timeout", "execution.checkpointing.min-pause", "restart-strategy.type",
    "classloader.check-leaked-classloader", "io.tmp.dirs", "web.tmpdir", "blob.storage.directory",
}
# Keys whose values differ between the laptop and Kubernetes by design (addresses, paths).
PER_SITE_KEYS = {
    "jobmanager.rpc.address", "jobmanager.bind-host", "rest.address", "rest.bind-address", "taskmanager.host",
    "taskmanager.bind-host", "state.checkpoints.dir", "state.savepoints.dir", "io.tmp.dirs", "web.tmpdir",
    "blob.storage.directory",
}


# ---------------------------------------------------------------- loading


@functools.cache
def docs() -> tuple[Doc, ...]:
    return load_docs(sorted(FLINK_DIR.glob("*.y*ml")))


def resources() -> list[Doc]:
    return [d for d in docs() if d.kind != "Kustomization"]


def one(kind: str, name: str) -> Doc:
    found = [d for d in resources() if d.kind == kind and d.name == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {[(d.path.name, d.name) for d in found]}"
    return found[0]


def deployments() -> list[Doc]:
    return [d for d in resources() if d.kind == "Deployment"]


def pod_spec(workload: Doc) -> dict[str, Any]:
    return workload.spec["template"]["spec"]


def pod_labels(workload: Doc) -> dict[str, str]:
    return workload.spec["template"]["metadata"]["labels"]


def container(workload: Doc, name: str | None = None) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    if name is None:
        [c] = containers
        return c
    [c] = [c for c in containers if c["name"] == name]
    return c


def named_ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c.get("ports", [])}


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def volumes(workload: Doc) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(workload).get("volumes", [])}


def env(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def argv(c: dict[str, Any]) -> list[str]:
    return [*c.get("command", []), *c.get("args", [])]


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} in {shlex.join(args)}"
    return values[0]


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def mebibytes(quantity: str) -> float:
    for suffix, factor in {"Mi": 1, "Gi": 1024, "m": 1, "g": 1024}.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    raise AssertionError(f"unexpected quantity {quantity!r}")


def flink_conf() -> dict[str, Any]:
    return yaml.safe_load(one("ConfigMap", "flink-config").body["data"]["config.yaml"])


def local_conf() -> dict[str, str]:
    """The config.yaml flink-cluster.sh renders, with the script's defaults substituted."""
    script = LOCAL_SCRIPT.read_text()
    defaults = dict(re.findall(r'^(\w+)="\$\{\1:-([^}]*)\}"', script, re.M))
    body = re.search(r'cat >"\$CONF/config.yaml" <<EOF\n(.*?)\nEOF\n', script, re.S)
    assert body, "flink-cluster.sh no longer renders config.yaml from a heredoc"
    text = re.sub(r"\$(\w+)", lambda m: defaults.get(m.group(1), m.group(0)), body.group(1))
    return yaml.safe_load(text)


def local_default(name: str) -> str:
    match = re.search(rf'^{name}="\$\{{{name}:-([^}}]*)\}}"', LOCAL_SCRIPT.read_text(), re.M)
    assert match, name
    return match.group(1)


def jobmanager() -> Doc:
    return one("Deployment", "flink-jobmanager")


def taskmanager() -> Doc:
    return one("Deployment", "flink-taskmanager")


def jobserver() -> Doc:
    return one("Deployment", "flink-jobserver")


def driver() -> Doc:
    return one("Deployment", "apim-analytics-pipeline-streaming")


def service_for(workload: Doc) -> Doc:
    [svc] = [d for d in resources() if d.kind == "Service" and selects(d.spec["selector"], pod_labels(workload))]
    return svc


def driver_config_text() -> str:
    c = container(driver())
    args = argv(c)
    path = Path(args[args.index("--config") + 1])
    mount = mounts(c)[str(path.parent)]
    cm_name = volumes(driver())[mount["name"]]["configMap"]["name"]
    return one("ConfigMap", cm_name).body["data"][path.name]


@pytest.fixture
def settings(tmp_path: Path) -> PipelineSettings:
    """What the driver resolves in its pod: its argv through the CLI's parser, its env, the file."""
    path = tmp_path / "config.yaml"
    path.write_text(driver_config_text())
    args, beam_args = build_parser().parse_known_args(argv(container(driver()))[1:])
    assert beam_args == []
    plain = {k: e["value"] for k, e in env(container(driver())).items() if "value" in e}
    resolved = resolve(PipelineSettings, args=args, section="pipeline", config_file=path,
                       environ={**plain, "APIM_STORE_URL": "postgresql+psycopg://u:p@db:5432/apim"})
    resolved.validate()
    return resolved


# ---------------------------------------------------------------- every file


def test_every_document_is_named_labelled_and_in_the_namespace() -> None:
    assert len(resources()) >= 10
    for doc in docs():
        assert doc.body.get("apiVersion") and doc.body.get("metadata", {}).get("name"), doc.path
        if doc.kind != "Kustomization":
            assert doc.body["metadata"].get("namespace") == NAMESPACE, f"{doc.path}: {doc.kind} {doc.name}"
            assert selects(LABELS, doc.body["metadata"].get("labels", {})), f"{doc.path}: {doc.name} labels"
    # Like ../pipeline: no Namespace (delete -k must not take the collector) and no Secret in git.
    assert not [d for d in resources() if d.kind in ("Namespace", "Secret")]


def test_kustomization_lists_every_file_beside_it_and_the_top_level_one_does_not() -> None:
    k = yaml.safe_load((FLINK_DIR / "kustomization.yaml").read_text())
    listed = set(k["resources"])
    beside = {p.name for p in FLINK_DIR.iterdir() if p.suffix in (".yaml", ".yml")} - {"kustomization.yaml"}
    assert listed == beside
    top = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert top["resources"] == ["base"]


def test_selectors_match_pod_labels_and_components_are_distinct() -> None:
    components = set()
    for w in deployments():
        assert selects(w.spec["selector"]["matchLabels"], pod_labels(w)), w.name
        components.add(pod_labels(w)["app.kubernetes.io/component"])
    assert len(components) == len(deployments())
    # No other workload here is selected by another's selector.
    for w in deployments():
        for other in deployments():
            if other is not w:
                assert not selects(w.spec["selector"]["matchLabels"], pod_labels(other)), (w.name, other.name)


def test_the_pipelines_network_policy_does_not_select_the_streaming_driver() -> None:
    """../pipeline's policy allows only Kafka and PostgreSQL; the driver must also reach Flink."""
    netpol = yaml.safe_load((K8S_DIR / "pipeline" / "networkpolicy.yaml").read_text())
    for w in deployments():
        assert not selects(netpol["spec"]["podSelector"]["matchLabels"], pod_labels(w)), w.name


def test_service_account_exists_and_mounts_no_token() -> None:
    sa = one("ServiceAccount", "apim-analytics-flink")
    assert sa.body["automountServiceAccountToken"] is False
    for w in deployments():
        assert pod_spec(w)["serviceAccountName"] == sa.name
        assert pod_spec(w)["automountServiceAccountToken"] is False


# ---------------------------------------------------------------- ports


def test_services_expose_exactly_the_container_ports() -> None:
    expected = {"flink-jobmanager": JM_PORTS, "flink-jobserver": JOBSERVER_PORTS}
    for w in (jobmanager(), jobserver()):
        svc = service_for(w)
        assert svc.name == w.name
        assert svc.spec["type"] == "ClusterIP"
        ports = named_ports(container(w))
        assert ports == expected[svc.name]
        assert {p["name"]: p["port"] for p in svc.spec["ports"]} == ports
        for p in svc.spec["ports"]:
            assert p["targetPort"] in (p["name"], ports[p["name"]])
    # Nothing calls the TaskManagers or the driver through a Service.
    for w in (taskmanager(), driver()):
        assert not [d for d in resources() if d.kind == "Service" and selects(d.spec["selector"], pod_labels(w))]


def test_flink_config_ports_and_addresses_match_the_manifests() -> None:
    conf = flink_conf()
    jm_ports = named_ports(container(jobmanager()))
    assert conf["jobmanager.rpc.port"] == jm_ports["rpc"]
    assert conf["blob.server.port"] == jm_ports["blob"]
    assert conf["rest.port"] == jm_ports["rest"]
    tm_ports = named_ports(container(taskmanager(), "taskmanager"))
    assert tm_ports == TM_PORTS
    assert conf["taskmanager.rpc.port"] == tm_ports["rpc"]
    assert conf["taskmanager.data.port"] == tm_ports["data"]
    svc = service_for(jobmanager())
    assert conf["jobmanager.rpc.address"] == svc.name
    assert conf["rest.address"] == svc.name
    for key in ("jobmanager.bind-host", "rest.bind-address", "taskmanager.bind-host"):
        assert conf[key] == "0.0.0.0", key


def test_probes_use_the_containers_own_ports() -> None:
    for w in deployments():
        for c in pod_spec(w)["containers"]:
            ports = named_ports(c)
            assert "livenessProbe" in c and "startupProbe" in c, (w.name, c["name"])
            for name in ("startupProbe", "readinessProbe", "livenessProbe"):
                if name not in c:
                    continue
                probe = c[name]
                action = probe.get("httpGet") or probe.get("tcpSocket")
                assert action, (w.name, c["name"], name)
                port = action["port"]
                assert port in ports or port in ports.values(), (w.name, c["name"], name, port)
    assert container(jobmanager())["readinessProbe"]["httpGet"] == {"path": "/overview", "port": "rest"}


# ---------------------------------------------------------------- Flink config


def test_flink_config_keys_are_known_flink_1_19_options() -> None:
    conf = flink_conf()
    assert set(conf) <= FLINK_119_KEYS, sorted(set(conf) - FLINK_119_KEYS)
    assert set(local_conf()) <= FLINK_119_KEYS, sorted(set(local_conf()) - FLINK_119_KEYS)


def test_flink_config_matches_the_local_cluster_but_for_addresses_and_paths() -> None:
    kube, local = flink_conf(), local_conf()
    assert set(kube) - {"taskmanager.host"} == set(local) - {"taskmanager.host"}
    for key in set(kube) & set(local) - PER_SITE_KEYS:
        assert str(kube[key]) == str(local[key]), (key, kube[key], local[key])


def test_two_slots_and_the_default_parallelism_fits_the_cluster() -> None:
    conf = flink_conf()
    assert conf["taskmanager.numberOfTaskSlots"] == SLOTS
    assert local_default("FLINK_SLOTS") == str(SLOTS)
    assert 1 <= conf["parallelism.default"] <= SLOTS * taskmanager().spec["replicas"]


def test_checkpoints_savepoints_and_beam_artifacts_are_on_the_shared_volume() -> None:
    claim = one("PersistentVolumeClaim", "flink-shared")
    assert claim.spec["accessModes"] == ["ReadWriteMany"]
    conf = flink_conf()
    assert conf["state.backend.type"] == "hashmap"
    assert conf["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    paths = [conf["state.checkpoints.dir"].removeprefix("file://"), conf["state.savepoints.dir"].removeprefix("file://"),
             flag(argv(container(jobserver())), "--artifacts-dir")]
    for w, name in ((jobmanager(), None), (taskmanager(), "taskmanager"), (jobserver(), None)):
        [(mount_path, mount)] = [(p, m) for p, m in mounts(container(w, name)).items()
                                 if volumes(w)[m["name"]].get("persistentVolumeClaim")]
        assert volumes(w)[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim.name
        assert not mount.get("readOnly")
        for path in paths:
            assert Path(path).is_relative_to(mount_path), (w.name, path)


def test_flink_processes_read_the_configmap_through_flink_conf_dir() -> None:
    for w, name in ((jobmanager(), None), (taskmanager(), "taskmanager")):
        c = container(w, name)
        conf_dir = env(c)["FLINK_CONF_DIR"]["value"]
        mount = mounts(c)[conf_dir]
        assert mount["readOnly"] is True
        assert volumes(w)[mount["name"]]["configMap"]["name"] == "flink-config"
        script = "jobmanager.sh" if w is jobmanager() else "taskmanager.sh"
        assert argv(c) == [f"/opt/flink/bin/{script}", "start-foreground"]
        # Flink's pid and log files go to a writable folder.
        for var in ("FLINK_LOG_DIR", "FLINK_PID_DIR"):
            assert env(c)[var]["value"] in mounts(c), var
    cm = one("ConfigMap", "flink-config")
    assert set(cm.body["data"]) == {"config.yaml", "log4j-console.properties"}


def test_memory_limits_are_the_flink_process_sizes() -> None:
    conf = flink_conf()
    for w, name, key in ((jobmanager(), None, "jobmanager.memory.process.size"),
                         (taskmanager(), "taskmanager", "taskmanager.memory.process.size")):
        res = container(w, name)["resources"]
        assert res["requests"]["memory"] == res["limits"]["memory"], w.name
        assert mebibytes(res["limits"]["memory"]) == mebibytes(conf[key]), w.name
    assert local_default("FLINK_JM_MEMORY") == conf["jobmanager.memory.process.size"]
    assert local_default("FLINK_TM_MEMORY") == conf["taskmanager.memory.process.size"]


# ---------------------------------------------------------------- images and versions


def test_flink_images_are_one_1_19_release_the_local_cluster_runs_too() -> None:
    images = {container(jobmanager())["image"], container(taskmanager(), "taskmanager")["image"]}
    [image] = images
    match = re.fullmatch(r"flink:(1\.19\.\d+)-scala_2\.12-java17", image)
    assert match, image
    assert match.group(1) == local_default("FLINK_VERSION")


def test_job_server_image_matches_the_python_sdk_and_the_local_job_server() -> None:
    image = container(jobserver())["image"]
    name, _, tag = image.rpartition(":")
    assert name == "apache/beam_flink1.19_job_server"
    assert tag == apache_beam.__version__
    pom = ET.parse(JOBSERVER_POM).getroot()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    assert pom.findtext("m:properties/m:beam.version", namespaces=ns) == tag


def test_worker_pool_and_driver_use_the_pipelines_image() -> None:
    pipeline = yaml.safe_load((K8S_DIR / "pipeline" / "deployment.yaml").read_text())
    [pipeline_container] = pipeline["spec"]["template"]["spec"]["containers"]
    image = pipeline_container["image"]
    assert container(taskmanager(), "beam-worker-pool")["image"] == image
    assert container(driver())["image"] == image


# ---------------------------------------------------------------- job server and worker pool


def test_job_server_points_at_the_jobmanager_rest_port_and_announces_its_pod_ip() -> None:
    c = container(jobserver())
    args = argv(c)
    jm = service_for(jobmanager())
    rest = {p["name"]: p["port"] for p in jm.spec["ports"]}["rest"]
    assert flag(args, "--flink-master") == f"{jm.name}:{rest}"
    ports = named_ports(c)
    for name in JOBSERVER_PORTS:
        assert int(flag(args, f"--{name}-port")) == ports[name], name
    assert flag(args, "--job-host") == "$(POD_IP)"
    assert env(c)["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    conf_dir = flag(args, "--flink-conf-dir")
    assert volumes(jobserver())[mounts(c)[conf_dir]["name"]]["configMap"]["name"] == "flink-config"


def test_each_taskmanager_pod_runs_a_beam_worker_pool_sidecar() -> None:
    assert [c["name"] for c in pod_spec(taskmanager())["containers"]] == ["taskmanager", "beam-worker-pool"]
    c = container(taskmanager(), "beam-worker-pool")
    assert argv(c) == ["python", "-m", "apache_beam.runners.worker.worker_pool_main",
                       f"--service_port={WORKER_POOL_PORT}"]
    assert named_ports(c) == {"worker-pool": WORKER_POOL_PORT}
    assert local_default("WORKER_POOL_PORT") == str(WORKER_POOL_PORT)


# ---------------------------------------------------------------- the streaming driver


def test_driver_runs_streaming_with_the_mounted_config(settings: PipelineSettings) -> None:
    args = argv(container(driver()))
    assert args[:4] == ["apim-analytics", "pipeline", "run", "--streaming"], shlex.join(args)
    assert settings.streaming is True and settings.follow is False
    assert mounts(container(driver()))["/etc/apim"]["readOnly"] is True


def test_driver_reaches_the_job_server_the_jobmanager_and_the_worker_pool(settings: PipelineSettings) -> None:
    js = service_for(jobserver())
    assert host_port(settings.job_endpoint) == (js.name, {p["name"]: p["port"] for p in js.spec["ports"]}["job"])
    jm = service_for(jobmanager())
    assert host_port(settings.flink_rest) == (jm.name, {p["name"]: p["port"] for p in jm.spec["ports"]}["rest"])
    assert settings.environment_type == "EXTERNAL"
    # Dialled by the TaskManager, so localhost is the TaskManager's pod and its sidecar.
    pool_port = named_ports(container(taskmanager(), "beam-worker-pool"))["worker-pool"]
    assert host_port(settings.environment_config) == ("localhost", pool_port)
    assert 1 <= settings.parallelism <= SLOTS * taskmanager().spec["replicas"]
    assert settings.checkpoint_interval_ms == 5000


def test_driver_serves_metrics_and_health_where_the_probes_look(settings: PipelineSettings) -> None:
    c = container(driver())
    assert host_port(settings.metrics_listen) == ("0.0.0.0", METRICS_PORT)
    assert named_ports(c) == {"metrics": METRICS_PORT}
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[name]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
    annotations = driver().spec["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == METRICS_PORT


def test_driver_is_one_recreated_replica_with_the_store_from_the_secret() -> None:
    assert driver().spec["replicas"] == 1
    assert driver().spec["strategy"] == {"type": "Recreate"}
    ref = env(container(driver()))["APIM_STORE_URL"]["valueFrom"]["secretKeyRef"]
    example = yaml.safe_load((K8S_DIR / "pipeline" / "secret.example.yaml").read_text())
    assert ref["name"] == example["metadata"]["name"] == STORE_SECRET
    assert ref["key"] in example["stringData"]
    assert "store" not in yaml.safe_load(driver_config_text())["pipeline"]


# ---------------------------------------------------------------- every pod


def test_pods_stay_out_of_the_mesh_and_run_locked_down() -> None:
    for w in deployments():
        assert w.spec["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false", w.name
        assert pod_spec(w)["securityContext"]["runAsNonRoot"] is True, w.name
        assert pod_spec(w)["enableServiceLinks"] is False, w.name
        for c in pod_spec(w)["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (w.name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (w.name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (w.name, c["name"])
            res = c["resources"]
            assert res["requests"]["cpu"] and res["requests"]["memory"], (w.name, c["name"])
            assert res["limits"]["cpu"] and res["limits"]["memory"], (w.name, c["name"])
            assert mebibytes(res["requests"]["memory"]) <= mebibytes(res["limits"]["memory"])


def test_everything_writable_is_a_sized_empty_dir_or_the_shared_claim() -> None:
    for w in deployments():
        for c in pod_spec(w)["containers"]:
            assert "/tmp" in mounts(c), (w.name, c["name"])
            for path, mount in mounts(c).items():
                volume = volumes(w)[mount["name"]]
                if mount.get("readOnly"):
                    continue
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] == "flink-shared"
                    continue
                assert "emptyDir" in volume, (w.name, path)
                assert volume["emptyDir"].get("sizeLimit"), (w.name, path)
                assert volume["emptyDir"].get("medium") != "Memory", (w.name, path)
