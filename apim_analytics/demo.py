"""``apim-analytics demo``: the whole spine, end to end, on this machine.

1. start a collector process (the real ``apim-analytics collector serve``),
2. replay simulated Mixer traffic to it over gRPC (or, with ``--protocol als|otel``, Istio 1.8+
   sidecars' access logs, after loading the catalog's OpenAPI documents),
3. stop the collector gracefully,
4. run the Beam pipeline once into a fresh SQLite store,
5. print usage per API and tier, and check it against the simulator's ground truth.

Each demo uses its own topic so a rerun never mixes in an earlier run's events.
Kafka must be running (``make services``).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import case, func, select

from apim_analytics.demo_settings import DemoSettings
from simulator.check import compare_all
from store.engine import make_engine
from store.tables import usage_minute


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_serving(target: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"collector exited with status {proc.returncode}")
            try:
                reply = stub.Check(  # type: ignore[attr-defined]  # the HealthStub stubs declare no methods
                    health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"collector at {target} not serving after {timeout_s}s")


def start_collector(target: str, kafka: str, topic: str, subscriptions: Path, log_path: Path,
                    metrics_listen: str = "", extra_args: list[str] | None = None) -> subprocess.Popen:
    """Start ``apim-analytics collector serve`` as its own process and wait until it is SERVING."""
    cmd = [sys.executable, "-m", "apim_analytics.cli", "collector", "serve", "--listen", target,
           "--kafka", kafka, "--topic", topic, "--subscriptions", str(subscriptions),
           "--metrics-listen", metrics_listen, "--spool-dir", str(log_path.parent / "spool"), *(extra_args or [])]
    log_file = open(log_path, "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_serving(target, proc)
    except Exception:
        proc.kill()
        raise
    return proc


def stop_collector(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def usage_by_api_and_tier(store_url: str) -> list[tuple[str, str, str, int, int, int, int, int]]:
    """(api, version, tier, requests, 2xx, 3xx, 4xx, 5xx) over the whole store."""
    engine = make_engine(store_url, readonly=True)
    t = usage_minute.c
    stmt = (select(t.api_name, t.api_version, t.tier, func.sum(t.requests), func.sum(t.count_2xx),
                   func.sum(t.count_3xx), func.sum(t.count_4xx), func.sum(t.count_5xx))
            .group_by(t.api_name, t.api_version, t.tier).order_by(t.api_name, t.api_version, t.tier))
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(stmt)]
    engine.dispose()
    return rows


def _print_table(rows: list[tuple]) -> None:
    header = ("api", "version", "tier", "requests", "2xx", "3xx", "4xx", "5xx")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))


def run_demo(args: DemoSettings) -> int:
    from pipeline.job import run as run_pipeline
    from pipeline.settings import PipelineSettings
    from simulator.catalog import build_catalog
    from simulator.cli import SimulationConfig, simulate
    from simulator.tokens import subscription_catalog_rows

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    store_url = f"sqlite:///{(out / 'apim-analytics.db').resolve()}"
    topic = f"apim.usage.v1.demo-{int(time.time())}"
    subscriptions = out / "subscriptions.jsonl"
    catalog = build_catalog(seed=args.seed)
    subscriptions.write_text("".join(json.dumps(r) + "\n" for r in subscription_catalog_rows(catalog)))

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    target = f"127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    extra: list[str] = []
    if args.protocol != "mixer":  # Istio 1.8+: requests are matched to the APIs' OpenAPI documents
        from simulator.openapi import load_catalog

        loaded = load_catalog(store_url, catalog.apis, out / "openapi")
        print(f"demo: loaded {len(loaded)} OpenAPI documents into the API catalog ({out / 'openapi'})")
        extra = ["--apis-store", store_url]
    print(f"demo: starting collector on {target} -> Kafka {args.kafka}, topic {topic}")
    proc = start_collector(target, args.kafka, topic, subscriptions, out / "collector.log", extra_args=extra)
    timings["collector start"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        # The replayed window ends now, so every request time is one the collector accepts.
        start_ms = (int(time.time() * 1000) - int(args.duration * 1000)) // 60_000 * 60_000
        config = SimulationConfig(target=target, rate=args.rate, duration=args.duration, seed=args.seed,
                                  start=start_ms, ground_truth=str(out / "ground-truth.csv"),
                                  protocol=args.protocol)
        report, truth = simulate(config)
        timings["simulate"] = time.perf_counter() - t0
        unit = {"mixer": "HandleMetric calls", "als": "ALS messages", "otel": "OTLP exports"}[args.protocol]
        print(f"demo: simulator sent {report.instances} events in {report.calls} {unit} "
              f"({report.failures} failed) in {timings['simulate']:.1f}s")
    finally:
        stop_collector(proc)
    if report.failures:
        print(f"demo: {report.failures} calls failed; see {out / 'collector.log'}", file=sys.stderr)
        return 1

    t0 = time.perf_counter()
    settings = PipelineSettings(kafka=args.kafka, topic=topic, store=store_url)
    results = run_pipeline(settings)
    timings["pipeline"] = time.perf_counter() - t0
    events = sum(r.events for r in results)
    print(f"demo: pipeline aggregated {events} events in {len(results)} run(s), {timings['pipeline']:.1f}s "
          f"-> {store_url}")

    print()
    _print_table(usage_by_api_and_tier(store_url))
    print()
    print(throttle_summary(store_url))
    comparisons = compare_all(store_url, truth)
    print(build_dashboard(store_url, out / "dashboard.html"))
    timings["total"] = time.perf_counter() - t_all
    print("demo: timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    for granularity, comparison in comparisons.items():
        stream = sys.stdout if comparison.exact else sys.stderr
        print(f"demo: usage_{granularity} vs simulator ground truth: {comparison.describe()}", file=stream)
    return 0 if all(c.exact for c in comparisons.values()) else 1


def build_dashboard(store_url: str, path: Path) -> str:
    """Write the HTML dashboard of the demo's store; one line saying where."""
    from dashboards.data import dashboard_data
    from dashboards.page import render_page

    engine = make_engine(store_url, readonly=True)
    try:
        path.write_text(render_page(dashboard_data(engine)), encoding="utf-8")
    finally:
        engine.dispose()
    return f"demo: dashboard: {path} (open it in a browser; `apim-analytics dashboard serve --store ...` serves it)"


def throttle_summary(store_url: str) -> str:
    """One line on the throttle-quota store the run filled: keys, near their limit, throttled."""
    from store.tables import throttle_decisions

    engine = make_engine(store_url, readonly=True)
    d = throttle_decisions.c
    with engine.connect() as conn:
        keys, near, throttled = conn.execute(select(
            func.count(), func.coalesce(func.sum(case((d.near_limit, 1), else_=0)), 0),
            func.coalesce(func.sum(case((d.throttled, 1), else_=0)), 0))).one()
    engine.dispose()
    return (f"demo: throttle-quota store: {keys} throttle keys counted, {near} near their limit, "
            f"{throttled} over quota in their latest window (apim-analytics throttle throttled --store ...)")
