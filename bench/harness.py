"""The whole system, running together, for fault scenarios and freshness measurements.

``System`` starts the collector and the pipeline (follow mode) as their own OS processes against
the real local Kafka broker and store, drives them with the simulator's real gRPC sender, and can
break any part: SIGKILL or SIGSTOP the broker, SIGKILL the collector or the pipeline, restart
PostgreSQL. Everything is compared with the simulator's ground truth at the end.

Why separate processes: a fault is only real when the process that suffers it is a real process
(a SIGKILL leaves no ``finally`` to run) and when the parts do not share an interpreter's memory.

The broker and PostgreSQL are the ones ``deploy/local`` started, possibly from another checkout:
``LocalServices`` finds their processes (and so the state folder that owns them) in /proc, so a
restart brings back the same broker with the same topics.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from apim_analytics.demo import _free_port, start_collector, stop_collector
from simulator.catalog import build_catalog
from simulator.check import stored_cells, truth_cells
from simulator.cli import SimulationConfig, simulate
from simulator.ground_truth import GroundTruth
from simulator.sender import SendReport
from simulator.tokens import subscription_catalog_rows
from store.engine import create_schema, make_engine
from store.tables import usage_month

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "local"


# --- the services deploy/local started ------------------------------------------------------------


def _processes(pattern: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line matches ``pattern``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(pattern, cmdline):
            found.append((int(entry.name), cmdline))
    return found


@dataclass
class LocalServices:
    """The running broker and PostgreSQL, and the ``.local`` folders whose scripts own them."""

    kafka_pid: int
    kafka_env: dict[str, str]  # what kafka.sh needs to start this same broker again
    pg_dir: Path | None  # the cluster root holding data/ (postgres.sh's APIM_PG_DIR)
    pg_port: int = 55432
    kafka: str = "127.0.0.1:9092"

    @classmethod
    def find(cls, kafka: str = "127.0.0.1:9092", pg_port: int = 55432) -> LocalServices:
        """The broker listening on ``kafka``'s port and the PostgreSQL on ``pg_port``.

        Tests may run brokers of their own on other ports: the port decides which one is meant.
        """
        want = kafka.rpartition(":")[2]
        kafka_pid, kafka_env = None, {}
        for pid, cmd in _processes(r"kafka\.Kafka "):
            props = re.search(r"kafka\.Kafka (\S+)", cmd)
            try:
                text = Path(props.group(1)).read_text() if props else ""
            except OSError:
                continue
            listeners = re.search(r"^listeners=PLAINTEXT://([^:,]+):(\d+),CONTROLLER://[^:,]+:(\d+)", text, re.M)
            if listeners and listeners.group(2) == want:
                libs = re.search(r"-cp (\S+)/\*", cmd)
                kafka_pid = pid
                kafka_env = {"APIM_LOCAL_DIR": str(Path(props.group(1)).resolve().parent.parent),
                             "KAFKA_HOST": listeners.group(1), "KAFKA_PORT": listeners.group(2),
                             "KAFKA_CONTROLLER_PORT": listeners.group(3)}
                if libs:
                    kafka_env["KAFKA_LIBS"] = libs.group(1)
                break
        if kafka_pid is None:
            raise RuntimeError(f"no local Kafka broker listens on {kafka}; start it with `make services`")
        pg_local = None
        for _, pcmd in _processes(r"postgres.* -D "):
            data = re.search(r" -D (\S+)", pcmd)
            if not data:
                continue
            try:
                lines = (Path(data.group(1)) / "postmaster.pid").read_text().splitlines()
            except OSError:
                continue
            if len(lines) > 3 and lines[3].strip() == str(pg_port):
                pg_local = Path(data.group(1)).resolve().parent  # the cluster root (APIM_PG_DIR)
                break
        return cls(kafka_pid, kafka_env, pg_local, pg_port, kafka)

    def _script(self, name: str, action: str, env_vars: dict[str, str]) -> None:
        env = os.environ | env_vars | {"APIM_PYTHON": sys.executable}
        subprocess.run([str(DEPLOY / name), action], env=env, check=True, capture_output=True, timeout=180)

    def kill_kafka(self) -> None:
        """SIGKILL the broker: no clean shutdown, as when its node dies."""
        _kill(self.kafka_pid)

    def start_kafka(self) -> None:
        """Start the same broker again (same state folder, same topics) and wait until it answers."""
        self._script("kafka.sh", "start", self.kafka_env)
        self.kafka_pid = LocalServices.find(self.kafka, self.pg_port).kafka_pid

    def pause_kafka(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing is answered (a hung node)."""
        os.kill(self.kafka_pid, signal.SIGSTOP)

    def resume_kafka(self) -> None:
        os.kill(self.kafka_pid, signal.SIGCONT)

    def kill_jobserver(self, cluster: bool = False) -> None:
        """SIGKILL a Beam Flink job server: the embedded one (its Flink mini-cluster and the job die with it)
        or the standalone cluster's (the job runs on; a new driver submission replaces it)."""
        _kill_from(local_dir() / ("flink-cluster/jobserver" if cluster else "flink-jobserver") / "jobserver.pid")

    def start_jobserver(self, cluster: bool = False) -> None:
        self._script("flink-cluster.sh" if cluster else "flink-jobserver.sh", "start", {})

    def kill_taskmanager(self) -> None:
        """SIGKILL the standalone cluster's TaskManager: the job fails over to its last checkpoint once
        `start_taskmanager` brings the slots back."""
        _kill_from(local_dir() / "flink-cluster" / "taskmanager.pid")

    def start_taskmanager(self) -> None:
        self._script("flink-cluster.sh", "start", {})

    def restart_postgres(self) -> None:
        """pg_ctl restart -m fast: open transactions are rolled back, connections dropped."""
        if self.pg_dir is None:
            raise RuntimeError("no local PostgreSQL is running; start it with `make services`")
        self._script("postgres.sh", "restart", {"APIM_PG_DIR": str(self.pg_dir), "APIM_PG_PORT": str(self.pg_port)})


def local_dir() -> Path:
    """The services' state root, as deploy/local's scripts resolve it."""
    return Path(os.environ.get("APIM_LOCAL_DIR", DEPLOY.parent.parent / ".local"))


def _kill_from(pidfile: Path) -> None:
    _kill(int(pidfile.read_text().split()[0]))


def _kill(pid: int) -> None:
    """SIGKILL ``pid`` and wait (up to 30 s) until it is gone."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


#: The standalone cluster's REST API (deploy/local/flink-cluster.sh).
CLUSTER_FLINK_REST = "127.0.0.1:8081"
#: `pipeline run --streaming` flags for the standalone cluster of deploy/local/flink-cluster.sh.
STANDALONE_CLUSTER = ["--job-endpoint", "127.0.0.1:8199", "--flink-rest", CLUSTER_FLINK_REST,
                      "--environment-type", "EXTERNAL", "--environment-config", "127.0.0.1:50000",
                      "--parallelism", "2", "--commit-groups", "2"]


def cancel_cluster_jobs() -> int:
    """Cancel every job still on the standalone cluster (left by a failed scenario or test): one holds both
    slots, and the next job would wait for them forever. Returns how many there were."""
    from pipeline import flink_rest
    from pipeline.settings import flink_rest_ports

    left = flink_rest.running_jobs(*flink_rest_ports(CLUSTER_FLINK_REST), "")
    for job in left:
        flink_rest.cancel(job)
    return len(left)


# --- traffic ----------------------------------------------------------------------------------------


class Traffic:
    """The simulator sending in a thread, paced in real time, with a live count of what was acknowledged."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.delivered = 0
        self.timeline: list[tuple[float, int]] = []  # (monotonic time, events acknowledged so far)
        self._lock = threading.Lock()
        self.report: SendReport | None = None
        self.truth: GroundTruth | None = None
        self.unconfirmed = GroundTruth()  # requests whose delivery was never confirmed (a broken ALS stream)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _on_delivered(self, n: int) -> None:
        with self._lock:
            self.delivered += n
            self.timeline.append((time.monotonic(), self.delivered))

    def _run(self) -> None:
        try:
            self.report, self.truth = simulate(self.config, on_delivered=self._on_delivered,
                                               unconfirmed=self.unconfirmed)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def start(self) -> Traffic:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Still sending."""
        return self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> tuple[SendReport, GroundTruth]:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError("the simulator is still sending")
        if self.error is not None:
            raise self.error
        assert self.report is not None and self.truth is not None
        return self.report, self.truth


# --- the system ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Store versus ground truth, cell by cell (minute, API, version, application, tier).

    ``sent`` counts confirmed requests; ``unconfirmed`` those whose delivery was never confirmed
    (the messages of an ALS stream a collector SIGKILL broke), of which ``unconfirmed_stored`` made it.
    Lost: confirmed but not stored; doubled: stored beyond confirmed plus unconfirmed."""

    sent: int
    stored: int
    lost: int
    doubled: int
    unconfirmed: int = 0

    @property
    def unconfirmed_stored(self) -> int:
        return self.stored - self.sent if self.lost == 0 else 0

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and self.sent <= self.stored <= self.sent + self.unconfirmed


@dataclass
class System:
    """Collector + pipeline processes on a fresh topic, writing to ``store_url``."""

    workdir: Path
    store_url: str
    kafka: str = "127.0.0.1:9092"
    seed: int = 7
    collector_args: list[str] = field(default_factory=list)
    pipeline_args: list[str] = field(default_factory=list)
    #: "follow" (bounded runs in a loop), "streaming" (one job on the embedded Flink of `make services`'
    #: job server) or "streaming-cluster" (on the standalone cluster of deploy/local/flink-cluster.sh)
    pipeline_mode: str = "follow"
    #: What the simulated mesh sends: "mixer", "als" or "otel" (Istio 1.8+: the API catalog is loaded first)
    protocol: str = "mixer"
    topic: str = field(default_factory=lambda: f"apim.usage.v1.sys-{uuid.uuid4().hex[:10]}")
    details: dict[str, object] = field(default_factory=dict)  # what a scenario observed along the way

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.subscriptions = self.workdir / "subscriptions.jsonl"
        self.subscriptions.write_text("".join(json.dumps(r) + "\n" for r in
                                              subscription_catalog_rows(build_catalog(seed=self.seed))))
        self.target = f"127.0.0.1:{_free_port()}"
        self.collector_metrics = f"127.0.0.1:{_free_port()}"
        self.pipeline_metrics = f"127.0.0.1:{_free_port()}"
        self.collector: subprocess.Popen | None = None
        self.pipeline: subprocess.Popen | None = None
        if self.store_url.startswith("sqlite"):  # a read-only engine refuses a SQLite file that is not there yet
            writer = make_engine(self.store_url)
            create_schema(writer)
            writer.dispose()
        self._engine = make_engine(self.store_url, readonly=True)

    def services(self) -> LocalServices:
        """The broker this system publishes to and the PostgreSQL its store is on (if any)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.store_url)
        pg_port = (url.port or 5432) if url.get_backend_name() == "postgresql" else 55432
        return LocalServices.find(self.kafka, pg_port=pg_port)

    # processes
    def start_collector(self) -> None:
        self.collector = start_collector(self.target, self.kafka, self.topic, self.subscriptions,
                                         self.workdir / "collector.log", metrics_listen=self.collector_metrics,
                                         extra_args=self.collector_args)

    def kill_collector(self) -> None:
        assert self.collector is not None
        self.collector.kill()
        self.collector.wait()

    def start_pipeline(self) -> None:
        mode = {"follow": ["--follow", "--interval", "0.2"],
                "streaming": ["--streaming", "--commit-interval", "1", "--partition-discovery-s", "2"],
                "streaming-cluster": ["--streaming", "--commit-interval", "1", "--partition-discovery-s", "2",
                                      *STANDALONE_CLUSTER]}[self.pipeline_mode]
        cmd = [sys.executable, "-m", "apim_analytics.cli", "pipeline", "run", *mode,
               "--kafka", self.kafka, "--topic", self.topic, "--store", self.store_url,
               "--metrics-listen", self.pipeline_metrics, *self.pipeline_args]
        log = open(self.workdir / "pipeline.log", "ab")  # noqa: SIM115 - handed to the child process
        self.pipeline = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def wait_pipeline_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds until the pipeline has finished its first run (empty or not): imports done, store
        migrated, Beam warmed up, so what follows measures steady state, not a cold start."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if self.pipeline is not None and self.pipeline.poll() is not None:
                raise RuntimeError(f"the pipeline exited ({self.pipeline.returncode}); see {self.workdir}/pipeline.log")
            try:
                text = self.metrics("pipeline")
                if self.pipeline_mode.startswith("streaming"):
                    if "\napim_pipeline_streaming_job_running 1.0" in text:
                        return time.monotonic() - began
                    time.sleep(0.1)
                    continue
                runs = [line for line in text.splitlines() if line.startswith("apim_pipeline_runs_total{")]
                if sum(float(line.rpartition(" ")[2]) for line in runs) >= 1:
                    return time.monotonic() - began
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the pipeline did not finish a first run within {timeout_s}s")

    def pipeline_log(self) -> str:
        """What the pipeline process has logged so far."""
        path = self.workdir / "pipeline.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_pipeline(self) -> None:
        assert self.pipeline is not None
        self.pipeline.kill()
        self.pipeline.wait()

    def start(self) -> System:
        """Both processes up and ready (collector SERVING, pipeline answering /healthz)."""
        if self.protocol != "mixer":
            self.load_api_catalog()
            self.collector_args = [*self.collector_args, "--apis-store", self.store_url]
        self.start_pipeline()
        self.start_collector()
        self.wait_pipeline_ready()
        return self

    def stop(self) -> None:
        if self.collector is not None and self.collector.poll() is None:
            stop_collector(self.collector)
        if self.pipeline is not None and self.pipeline.poll() is None:
            self.pipeline.send_signal(signal.SIGTERM)
            try:
                self.pipeline.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.pipeline.kill()
                self.pipeline.wait()
        self._engine.dispose()

    def __enter__(self) -> System:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def load_api_catalog(self) -> None:
        """The simulated catalog's APIs into the store's API catalog, as `apim-analytics apis load` does."""
        from simulator.openapi import load_catalog

        load_catalog(self.store_url, build_catalog(seed=self.seed).apis)

    # traffic and observation
    def traffic(self, *, rate: float, duration_s: float, seed: int | None = None, max_attempts: int = 10_000,
                concurrency: int = 8) -> Traffic:
        """Real-time paced simulated traffic that retries like Mixer until each call is accepted (ALS: each
        sidecar reconnects after a broken stream, and a stream confirms its messages every 5 of them)."""
        start_ms = int(time.time() * 1000)
        config = SimulationConfig(target=self.target, rate=rate, duration=duration_s,
                                  seed=self.seed if seed is None else seed, start=start_ms, realtime=True,
                                  max_attempts=max_attempts, initial_backoff=0.05, max_backoff=1.0,
                                  timeout=10.0, concurrency=concurrency, ground_truth="", protocol=self.protocol,
                                  stream_messages=5)
        return Traffic(config).start()

    def stored_total(self) -> int:
        """Requests the store holds (usage_month: the smallest table holding every request)."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.sum(usage_month.c.requests), 0))).scalar())

    def wait_stored(self, events: int, timeout_s: float = 180.0, poll_s: float = 0.1) -> float:
        """Seconds until the store holds at least ``events`` requests."""
        began = time.monotonic()
        while True:
            try:
                if self.stored_total() >= events:
                    return time.monotonic() - began
            except Exception:  # noqa: BLE001 - the store may be restarting; keep polling
                pass
            if time.monotonic() - began > timeout_s:
                raise TimeoutError(f"the store holds fewer than {events} requests after {timeout_s}s; "
                                   f"see {self.workdir}/pipeline.log")
            time.sleep(poll_s)

    def outcome(self, truth: GroundTruth, unconfirmed: GroundTruth | None = None) -> Outcome:
        """Requests per cell and status class (2xx..5xx); bytes must agree too (else counted as lost), unless
        unconfirmed requests fall in the cell (then only the bounds are checked)."""
        stored, expected = stored_cells(self.store_url), truth_cells(truth)
        maybe = truth_cells(unconfirmed) if unconfirmed is not None else {}
        lost = doubled = 0
        empty = (0,) * 6
        for key in stored.keys() | expected.keys() | maybe.keys():
            have, want, extra = stored.get(key, empty), expected.get(key, empty), maybe.get(key, empty)
            for cls in range(4):
                lost += max(0, want[cls] - have[cls])
                doubled += max(0, have[cls] - want[cls] - extra[cls])
            if have[:4] == want[:4] and have[4:] != want[4:] and key not in maybe:
                lost += 1  # same requests, different bytes: something is wrong in the cell
        return Outcome(sent=sum(sum(c[:4]) for c in expected.values()),
                       stored=sum(sum(c[:4]) for c in stored.values()), lost=lost, doubled=doubled,
                       unconfirmed=sum(sum(c[:4]) for c in maybe.values()))

    def metrics(self, which: str = "collector") -> str:
        listen = self.collector_metrics if which == "collector" else self.pipeline_metrics
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=10) as resp:
            return resp.read().decode()
