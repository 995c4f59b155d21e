"""Fault scenarios with the whole system running: ``python -m bench.faults``.

Each scenario runs simulated Mixer traffic (real gRPC, paced in real time, retried like Mixer
until accepted) into a collector process, the real Kafka broker, a pipeline process in follow
mode and the store, breaks one part while traffic flows, and ends by comparing the store with
the simulator's ground truth cell by cell (minute, API, version, application, tier). It reports
events sent (acknowledged to the sender), stored, lost, doubled, and the recovery time: from the
moment the broken part is back to the moment the store holds every event acknowledged before then.

    python -m bench.faults [--rate 1000] [--duration 40] [--store postgresql|sqlite] [--only NAME ...]
                           [--pipeline follow|streaming] [--protocol mixer|als|otel]

Results go to bench/results/faults.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import System, Traffic, cancel_cluster_jobs
from bench.hostile import flood

RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"


@dataclass
class ScenarioResult:
    name: str
    sent: int
    stored: int
    lost: int
    doubled: int
    recovery_s: list[float]
    wall_s: float
    details: dict[str, Any] = field(default_factory=dict)
    protocol: str = "mixer"
    #: ALS: entries on streams a collector SIGKILL broke (never confirmed), and how many of them were stored
    unconfirmed: int = 0
    unconfirmed_stored: int = 0

    @property
    def exact(self) -> bool:
        """Nothing confirmed was lost, nothing doubled; of the unconfirmed, some may be in flight and lost."""
        return self.lost == 0 and self.doubled == 0 and self.sent <= self.stored <= self.sent + self.unconfirmed

    @property
    def in_flight_lost(self) -> int:
        """Entries a SIGKILL took with it: sent on an ALS stream it broke, never stored. (Entries flushed while
        no collector listened are ``details["refused"]``: Envoy drops those itself, as it would here.)"""
        return self.unconfirmed - int(self.details.get("refused", 0)) - self.unconfirmed_stored


Fault = Callable[[System, Traffic, "Plan"], list[float]]


@dataclass(frozen=True)
class Plan:
    """How hard a scenario pushes: traffic rate and length, and a seed for the random moments."""

    rate: float = 1000.0
    duration_s: float = 40.0
    seed: int = 11
    spool_max_mb: float = 0.25  # spool_quota_exhausted: small enough to fill in seconds at ``rate``
    kafka_traffic_s: float = 60.0  # kafka_killed_twice: traffic long enough for two broker restarts
    kafka_kills: int = 2  # kafka_killed_twice: how many times (the test suite's streaming run kills once)
    pipeline: str = "follow"  # "streaming": the embedded mini-cluster; "streaming-cluster": the standalone one
    pipeline_kills: int = 10  # pipeline_killed_ten_times
    protocol: str = "mixer"  # what the mesh sends: mixer, als or otel (Istio 1.8+)


def _recovered(system: System, traffic: Traffic) -> float:
    """Seconds until the store holds everything acknowledged up to now."""
    return round(system.wait_stored(traffic.delivered), 2)


def kafka_killed_twice(system: System, traffic: Traffic, plan: Plan) -> list[float]:
    """SIGKILL the broker and start it again, twice in a row, while traffic flows (the collector spools
    meanwhile); the recovery is measured from the second restart.

    The traffic lasts long enough for both restarts (``Plan.kafka_traffic_s``); ``kills_under_load``
    says how many kills happened while it flowed, ``restart_s`` how long each restart took.
    """
    services, under_load, restarts = system.services(), 0, []
    time.sleep(0.05 * plan.duration_s)
    for _ in range(plan.kafka_kills):
        under_load += traffic.running
        services.kill_kafka()
        time.sleep(1.0)
        began = time.monotonic()
        services.start_kafka()
        restarts.append(round(time.monotonic() - began, 1))
        time.sleep(1.0)
    system.details.update(kills_under_load=under_load, restart_s=restarts)
    return [_recovered(system, traffic)]


def collector_killed_holding_spool(system: System, traffic: Traffic, plan: Plan) -> list[float]:
    """Hang the broker so the collector spools, SIGKILL the collector, then bring both back."""
    services = system.services()
    time.sleep(0.2 * plan.duration_s)
    services.pause_kafka()
    try:
        spooled = _wait_for_counter(system, "apim_collector_records_spooled_total", "", 5, 60,
                                    "the collector did not spool while the broker was hung")
        system.kill_collector()
    finally:
        services.resume_kafka()
    system.start_collector()
    system.details["records_spooled_before_the_kill"] = spooled
    return [_recovered(system, traffic)]


def pipeline_killed_ten_times(system: System, traffic: Traffic, plan: Plan) -> list[float]:
    """SIGKILL the pipeline at random moments (seeded), restarting it each time."""
    rng = random.Random(plan.seed)
    for _ in range(plan.pipeline_kills):
        time.sleep(rng.uniform(0.3, 0.6) * plan.duration_s / plan.pipeline_kills)
        system.kill_pipeline()
        system.start_pipeline()
    return [_recovered(system, traffic)]


def postgres_restarted(system: System, traffic: Traffic, plan: Plan) -> list[float]:
    """pg_ctl restart (fast) under load: the pipeline's open run fails and is planned again."""
    time.sleep(0.3 * plan.duration_s)
    system.services().restart_postgres()
    return [_recovered(system, traffic)]


def jobserver_killed(system: System, traffic: Traffic, plan: Plan) -> list[float]:
    """Streaming only: SIGKILL the Beam Flink job server and start it again. The embedded mini-cluster and
    its job die with it: the driver submits the job again and it resumes from the store's offsets. On the
    standalone cluster the job runs on: the driver watches it through Flink's REST API and submits nothing."""
    time.sleep(0.3 * plan.duration_s)
    services = system.services()
    cluster = plan.pipeline == "streaming-cluster"
    services.kill_jobserver(cluster=cluster)
    time.sleep(2.0)
    services.start_jobserver(cluster=cluster)
    recovered = _recovered(system, traffic)
    system.details["job_submissions"] = system.pipeline_log().count('"msg":"streaming job submitted"')
    return [recovered]


def taskmanager_killed(system: System, traffic: Traffic, plan: Plan) -> list[float]:
    """Standalone cluster only: SIGKILL the TaskManager under load and start it again; Flink restarts the
    job from its last checkpoint, and the readers position themselves from the store's offsets."""
    time.sleep(0.3 * plan.duration_s)
    services = system.services()
    services.kill_taskmanager()
    time.sleep(2.0)
    services.start_taskmanager()
    return [_recovered(system, traffic)]


def spool_quota_exhausted(system: System, traffic: Traffic, plan: Plan) -> list[float]:
    """Hang the broker until the (small) spool is full: calls must get UNAVAILABLE, not be dropped."""
    services = system.services()
    time.sleep(0.15 * plan.duration_s)
    services.pause_kafka()
    try:
        _wait_for_counter(system, "apim_collector_calls_total", 'code="UNAVAILABLE"', 3, 120,
                          "the spool never filled up (no UNAVAILABLE answers)")
        time.sleep(2.0)  # stay full for a while: Mixer keeps retrying
        system.details["unavailable_answers"] = _counter(system.metrics(), "apim_collector_calls_total",
                                                         'code="UNAVAILABLE"')
    finally:
        services.resume_kafka()
    return [_recovered(system, traffic)]


def hostile_flood(system: System, traffic: Traffic, plan: Plan) -> list[float]:
    """Malformed and hostile calls mixed into the real traffic: zero crashes, every rejection counted."""
    time.sleep(0.1 * plan.duration_s)
    report = flood(system.target, calls=max(70, int(plan.duration_s * 5)), seed=plan.seed, pause_s=0.05)
    assert system.collector is not None
    metrics = system.metrics()
    system.details.update(
        hostile_calls=report.sent, by_kind=dict(report.by_kind), answered=dict(report.statuses),
        collector_alive=system.collector.poll() is None,
        collector_invalid_argument=_counter(metrics, "apim_collector_calls_total", 'code="INVALID_ARGUMENT"'),
        collector_instances_rejected=_counter(metrics, "apim_collector_instances_rejected_total"),
        instances_refused_expected=report.instances_refused_expected)
    return []


SCENARIOS: dict[str, tuple[Fault, list[str]]] = {
    "kafka_killed_twice": (kafka_killed_twice, []),
    "collector_killed_holding_spool": (collector_killed_holding_spool, ["--ack-timeout-s", "1"]),
    "pipeline_killed_ten_times": (pipeline_killed_ten_times, []),
    "postgres_restarted": (postgres_restarted, []),
    "spool_quota_exhausted": (spool_quota_exhausted, ["--ack-timeout-s", "1"]),
    "hostile_flood": (hostile_flood, []),
    "jobserver_killed": (jobserver_killed, []),
    "taskmanager_killed": (taskmanager_killed, []),
}
#: What breaks the pipeline itself; with --pipeline streaming only these run (the collector-side ones do not
#: depend on how the pipeline runs). jobserver_killed needs the streaming pipeline.
STREAMING_SCENARIOS = ("pipeline_killed_ten_times", "jobserver_killed", "kafka_killed_twice", "postgres_restarted")
#: Istio 1.8+ (--protocol als|otel): the broker killed, the collector SIGKILLed, the pipeline killed.
PROTOCOL_SCENARIOS = ("kafka_killed_twice", "collector_killed_holding_spool", "pipeline_killed_ten_times")
#: On the standalone cluster, the TaskManager can die on its own as well.
CLUSTER_SCENARIOS = (*STREAMING_SCENARIOS, "taskmanager_killed")


def _wait_for_counter(system: System, name: str, labels: str, at_least: float, timeout_s: float,
                      failure: str) -> float:
    """Poll the collector's counter until it reaches ``at_least``; its value then."""
    deadline = time.monotonic() + timeout_s
    while (value := _counter(system.metrics(), name, labels)) < at_least:
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.2)
    return value


def _counter(metrics: str, name: str, labels: str = "") -> float:
    """Sum of a Prometheus counter's samples (those whose labels contain ``labels``)."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name) and not line.startswith("#") and labels in line:
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == name:
                total += float(value)
    return total


def run_scenario(name: str, plan: Plan, store_url: str, workdir: Path, kafka: str = "127.0.0.1:9092"
                 ) -> ScenarioResult:
    """Run one scenario end to end on a fresh topic; the store at ``store_url`` must be empty."""
    fault, collector_args = SCENARIOS[name]
    if name == "spool_quota_exhausted":
        collector_args = [*collector_args, "--spool-max-mb", str(plan.spool_max_mb)]
    began = time.monotonic()
    if plan.pipeline == "streaming-cluster":
        cancel_cluster_jobs()
    system = System(workdir, store_url, kafka=kafka, collector_args=collector_args, seed=plan.seed,
                    pipeline_mode=plan.pipeline, protocol=plan.protocol)
    with system:
        duration = max(plan.duration_s, plan.kafka_traffic_s) if name == "kafka_killed_twice" else plan.duration_s
        traffic = system.traffic(rate=plan.rate, duration_s=duration, seed=plan.seed)
        recovery = fault(system, traffic, plan)
        report, truth = traffic.join(timeout_s=duration + 600)
        system.wait_stored(truth.totals()["requests"], timeout_s=300)
        time.sleep(2.0)  # anything counted twice would land by now: one more pipeline run at least
        outcome = system.outcome(truth, traffic.unconfirmed)
        details = dict(system.details, generated=report.instances + report.failed_instances,
                       sender_retries=report.retries, sender_failures=report.failures,
                       refused=report.refused_instances,
                       sender_statuses=dict(report.status_counts) if report.status_counts else {})
    return ScenarioResult(name, outcome.sent, outcome.stored, outcome.lost, outcome.doubled, recovery,
                          round(time.monotonic() - began, 1), details, plan.protocol, outcome.unconfirmed,
                          outcome.unconfirmed_stored)


def _store_url(kind: str, workdir: Path, name: str) -> tuple[str, Callable[[], None]]:
    """A fresh store for one scenario (a private PostgreSQL schema, or a SQLite file)."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / (name + '.db')}", lambda: None
    from sqlalchemy import text

    from store.engine import make_engine

    base = os.environ.get("APIM_BENCH_PG_URL", "postgresql+psycopg://apim:apim@127.0.0.1:55432/apim_test")
    schema = f"faults_{name}_{int(time.time())}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", drop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="simulated requests per second (default 1000)")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of traffic per scenario (default 40)")
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql",
                        help="store kind (default postgresql; postgres_restarted needs it)")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None, help="run only these")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="the local broker to use (and break) [env: APIM_KAFKA_BOOTSTRAP]")
    parser.add_argument("--pipeline", choices=("follow", "streaming", "streaming-cluster"), default="follow",
                        help="how the pipeline runs: bounded runs in a loop, the streaming job on the embedded "
                             "Flink of `make services`, or on the standalone cluster (deploy/local/flink-cluster.sh, "
                             "started first); results go to faults-<pipeline>.json")
    parser.add_argument("--protocol", choices=("mixer", "als", "otel"), default="mixer",
                        help="what the simulated mesh sends (als/otel: Istio 1.8+ sidecars; results go to "
                             "faults-<protocol>.json)")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    suffix = "-".join(x for x in (args.pipeline if args.pipeline != "follow" else "",
                                  args.protocol if args.protocol != "mixer" else "") if x)
    args.out = args.out or (RESULTS.with_name(f"faults-{suffix}.json") if suffix else RESULTS)
    plan = Plan(rate=args.rate, duration_s=args.duration, seed=args.seed, pipeline=args.pipeline,
                protocol=args.protocol)
    wanted = {"follow": [n for n in SCENARIOS if n not in ("jobserver_killed", "taskmanager_killed")],
              "streaming": list(STREAMING_SCENARIOS), "streaming-cluster": list(CLUSTER_SCENARIOS)}
    names = args.only or (wanted[args.pipeline] if args.protocol == "mixer" else list(PROTOCOL_SCENARIOS))
    results = []
    print(f"{'scenario':<32} {'sent':>8} {'stored':>8} {'lost':>5} {'doubled':>7} {'recovery s':>14} {'wall s':>7}"
          f" {'unconfirmed':>11} {'in flight lost':>14}")
    for name in names:
        if name == "postgres_restarted" and args.store != "postgresql":
            continue
        with tempfile.TemporaryDirectory(prefix=f"apim-fault-{name}-") as tmp:
            url, drop = _store_url(args.store, Path(tmp), name)
            try:
                r = run_scenario(name, plan, url, Path(tmp), kafka=args.kafka)
            except (TimeoutError, RuntimeError) as exc:  # the store never caught up: a failed scenario, not a crash
                r = ScenarioResult(name, -1, 0, 0, 0, [], 0.0, {"error": str(exc)[:300]})  # sent -1: never exact
            finally:
                drop()
        results.append(r)
        rec = ", ".join(f"{x:.1f}" for x in r.recovery_s) or "-"
        print(f"{r.name:<32} {r.sent:>8} {r.stored:>8} {r.lost:>5} {r.doubled:>7} {rec:>14} {r.wall_s:>7.1f}"
              f" {r.unconfirmed:>11} {r.in_flight_lost:>14}{'' if r.exact else '   NOT EXACT'}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    scenarios = [asdict(r) | {"exact": r.exact, "in_flight_lost": r.in_flight_lost} for r in results]
    if args.only and args.out.exists():  # a partial run replaces only its scenarios
        ran = {r.name for r in results}
        kept = [s for s in json.loads(args.out.read_text()).get("scenarios", []) if s["name"] not in ran]
        scenarios = [*kept, *scenarios]
        scenarios.sort(key=lambda s: list(SCENARIOS).index(s["name"]))
    args.out.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": {"cores": os.cpu_count()},
        "plan": asdict(plan), "store": args.store, "pipeline": args.pipeline, "protocol": args.protocol,
        "scenarios": scenarios}, indent=2) + "\n")
    print(f"results: {args.out}")
    return 0 if all(r.exact for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
