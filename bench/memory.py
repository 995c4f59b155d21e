"""Resource ceilings: peak memory of the collector and the pipeline, each as its own OS process.

``python -m bench.memory [--duration 60] [--events 10000000] [--only collector,collector-spool,pipeline]``

Memory is read from ``/proc/<pid>/status`` every ``--interval`` seconds (0.2):
VmRSS of the process plus that of any descendants, and the process's VmHWM
(its peak RSS as the kernel counted it). Three measurements:

1. ``collector``: a real ``apim-analytics collector serve`` process (spool on
   disk, the real broker) driven for ``--duration`` seconds as fast as it
   answers, by the load generator of bench/collector_ceiling.py (simulated Mixer
   calls of 100 instances, 8 in flight; a pool of calls sent again and again,
   each copy with its own ``dedup_id`` so that none is taken for a Mixer retry).
   Target: peak RSS under 250 MB, and no growth.
2. ``collector-spool``: the same, with Kafka unreachable (a closed port) and
   ``--spool-max-mb`` small, so the spool on disk fills; once it is full calls
   get UNAVAILABLE (the load generator does not retry them, so the pressure
   stays at its maximum). Memory must stay flat while the spool grows.
3. ``pipeline``: ``--events`` simulated events (default 10,000,000) produced to a
   fresh topic in the collector's record format (bench/pipeline.py's producer),
   then ``apim-analytics pipeline run --once`` with its default settings as a
   subprocess into a fresh store (SQLite file, or a private PostgreSQL schema
   with ``--store postgresql``). The store's total requests must equal the
   events produced exactly. Target: peak RSS under 1 GB, and no growth from run
   to run.

"Flat", for a collector, means the highest RSS of the last quarter of the run
is at most ``max(16 MB, 10%)`` above the highest RSS of the second quarter (the
first quarter is warm-up). A pipeline run's RSS rises while it reads its
records, so for the pipeline it means the same between its runs: the highest
per-run peak of the second half of the runs against that of the first half
(run 1 left out). The peak is also checked against the kernel's VmHWM, which
catches what falls between two samples. (``ru_maxrss`` from wait4 cannot be
used: exec folds the forking parent's RSS into it.)

Results go to bench/results/memory.json; a short table is printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1024 * 1024
COLLECTOR_TARGET_MB = 250
PIPELINE_TARGET_MB = 1024
FLAT_SLACK_MB, FLAT_SLACK_RATIO = 16.0, 0.10


# -- sampling /proc ----------------------------------------------------------------------------------------------

def status_kb(pid: int, *fields: str) -> dict[str, int]:
    """``VmRSS``/``VmHWM``… of a process in kB (absent fields, or a process gone: not in the result)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in fields:
                    out[name] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, their children…), from the ppid fields in /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class Sample:
    t: float  # seconds since the sampler started
    rss_kb: int  # VmRSS of the process and its descendants
    processes: int
    extra: dict[str, Any] = field(default_factory=dict)


class RssSampler:
    """Samples a process tree's RSS every ``interval_s`` on a thread; ``extra()`` adds fields to each sample."""

    def __init__(self, pid: int, interval_s: float = 0.2, extra: Callable[[], dict[str, Any]] | None = None) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.extra = extra
        self.samples: list[Sample] = []
        self.hwm_kb = 0  # the process's VmHWM, last seen
        self.children_hwm_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = time.monotonic()

    def elapsed(self) -> float:
        """Seconds since the sampler started, on the samples' clock."""
        return round(time.monotonic() - self._t0, 3)

    def sample(self) -> Sample | None:
        """One sample now (``None`` once the process is gone)."""
        main = status_kb(self.pid, "VmRSS", "VmHWM")
        if "VmRSS" not in main:
            return None
        rss, n = main["VmRSS"], 1
        self.hwm_kb = max(self.hwm_kb, main.get("VmHWM", 0))
        for child in descendants(self.pid):
            got = status_kb(child, "VmRSS", "VmHWM")
            if "VmRSS" in got:
                rss += got["VmRSS"]
                n += 1
                self.children_hwm_kb[child] = max(self.children_hwm_kb.get(child, 0), got.get("VmHWM", 0))
        s = Sample(self.elapsed(), rss, n, self.extra() if self.extra else {})
        self.samples.append(s)
        return s

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self.sample() is None:
                return
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop sampling (one last sample if the process is still there); stopping again changes nothing."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.sample()
        return self.samples


def _mb(kb: float) -> float:
    return round(kb / 1024, 1)


def summarize(samples: list[Sample], interval_s: float) -> dict[str, Any]:
    """Peak, RSS at 25/50/75/100% of the run, the peak of each quarter, and whether it stayed flat."""
    if not samples:
        return {"samples": 0}
    t0, t1 = samples[0].t, samples[-1].t
    span = t1 - t0

    def at(fraction: float) -> Sample:
        when = t0 + fraction * span
        return min(samples, key=lambda s: abs(s.t - when))

    quarters = []
    for q in range(4):
        lo, hi = t0 + q * span / 4, t0 + (q + 1) * span / 4
        inside = [s.rss_kb for s in samples if lo <= s.t <= hi] or [at((q + 0.5) / 4).rss_kb]
        quarters.append(max(inside))
    growth_kb = quarters[3] - quarters[1]
    rss = [s.rss_kb for s in samples]
    return {
        "samples": len(samples), "interval_s": interval_s, "duration_s": round(span, 1),
        "peak_rss_mb": _mb(max(rss)), "min_rss_mb": _mb(min(rss)), "mean_rss_mb": _mb(sum(rss) / len(rss)),
        "rss_mb_at": {f"{p}%": _mb(at(p / 100).rss_kb) for p in (25, 50, 75, 100)},
        "quarter_peak_rss_mb": [_mb(q) for q in quarters],
        "growth_q2_to_q4_mb": _mb(growth_kb),
        "flat": growth_kb / 1024 <= max(FLAT_SLACK_MB, FLAT_SLACK_RATIO * quarters[1] / 1024),
        "processes_max": max(s.processes for s in samples),
    }


# -- the collector ------------------------------------------------------------------------------------------------

def sustained_calls(pool: list, duration_s: float, tag: str) -> Iterator[Any]:
    """The pool's calls over and over for ``duration_s`` (from the first call taken), each copy with its own
    ``dedup_id``, so that its bytes (the collector's call id) differ from every other call's."""
    from schemas.mixer.template.metric.template_handler_service_pb2 import HandleMetricRequest

    deadline = None
    for i in itertools.count():
        now = time.monotonic()
        if deadline is None:
            deadline = now + duration_s
        elif now >= deadline:
            return
        call = HandleMetricRequest()
        call.CopyFrom(pool[i % len(pool)])
        call.dedup_id = f"{tag}-{i}"
        yield call


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _metrics(address: str) -> dict[str, float]:
    """The collector's Prometheus samples (name{labels} -> value)."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def bench_collector(kafka: str, duration_s: float, work: Path, *, pool: list, kafka_down: bool = False,
                    spool_max_mb: float = 32, interval_s: float = 0.2, concurrency: int | None = None,
                    target_mb: float = COLLECTOR_TARGET_MB, seed: int = 7) -> dict[str, Any]:
    """Run a collector process under sustained load and sample its memory (and its spool folder on disk)."""
    from apim_analytics.demo import _free_port, start_collector, stop_collector
    from bench.collector_ceiling import CONCURRENCY
    from core.topics import ensure_topic
    from simulator.catalog import build_catalog
    from simulator.sender import SendSettings, send
    from simulator.tokens import subscription_catalog_rows

    name = "collector-spool" if kafka_down else "collector"
    work.mkdir(parents=True, exist_ok=True)
    subs = work / "subscriptions.jsonl"
    subs.write_text("".join(json.dumps(r) + "\n" for r in subscription_catalog_rows(build_catalog(seed=seed))))
    topic = f"bench.memory.{uuid.uuid4().hex[:8]}"
    if not kafka_down:
        ensure_topic(kafka, topic, 6)
    bootstrap = f"127.0.0.1:{_free_port()}" if kafka_down else kafka  # nothing listens there
    target, metrics = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    spool = work / "spool"
    started = time.perf_counter()
    proc = start_collector(target, bootstrap, topic, subs, work / "collector.log", metrics_listen=metrics,
                           extra_args=["--spool-max-mb", f"{spool_max_mb:g}"] if kafka_down else [])
    start_s = time.perf_counter() - started
    sampler = RssSampler(proc.pid, interval_s, extra=lambda: {"spool_bytes": _dir_bytes(spool)}).start()
    try:
        settings = SendSettings(target=target, concurrency=concurrency or CONCURRENCY,
                                max_attempts=1 if kafka_down else SendSettings().max_attempts)
        report = send(sustained_calls(pool, duration_s, f"{name}-{uuid.uuid4().hex[:6]}"), settings)
        samples = sampler.stop()
        counters = _metrics(metrics)
    finally:
        sampler.stop()
        stop_collector(proc)
        if not kafka_down:
            delete_topic(kafka, topic)
    summary = summarize(samples, interval_s)
    spool_mb = [s.extra["spool_bytes"] / MB for s in samples]
    result: dict[str, Any] = {
        "component": name, "kafka": "unreachable (closed port)" if kafka_down else kafka,
        "target_mb": target_mb, "collector_start_s": round(start_s, 1),
        "load": {"duration_s": duration_s, "concurrency": settings.concurrency, "instances_per_call": 100,
                 "pool_calls": len(pool), "calls": report.calls, "status_counts": report.status_counts,
                 "events_acknowledged": report.instances, "events_refused": report.failed_instances,
                 "elapsed_s": round(report.elapsed_s, 1),
                 "events_per_s": round(report.instances / report.elapsed_s) if report.elapsed_s else 0,
                 "call_p50_ms": report.latency_p50_ms, "call_p99_ms": report.latency_p99_ms},
        "collector_counters": {k: v for k, v in counters.items() if k.startswith((
            "apim_collector_calls_total", "apim_collector_events_total", "apim_collector_records_spooled_total",
            "apim_collector_spool_depth_bytes"))},
        "memory": summary,
        "vmhwm_mb": _mb(sampler.hwm_kb),
        "spool_mb_at": {k: round(spool_mb[i], 1) for k, i in zip(
            ("25%", "50%", "75%", "100%"), [min(len(spool_mb) - 1, round(f * (len(spool_mb) - 1)))
                                              for f in (0.25, 0.5, 0.75, 1.0)])},
        "spool_max_mb": spool_max_mb if kafka_down else None,
        "rss_series": _series(samples),
    }
    result["pass"] = bool(summary.get("peak_rss_mb", 0) < target_mb and summary.get("flat"))
    if kafka_down:
        first_full = next((s.t for s in samples if s.extra["spool_bytes"] >= spool_max_mb * MB * 0.9), None)
        result["spool_full_after_s"] = first_full
        result["pass"] = result["pass"] and report.status_counts.get("UNAVAILABLE", 0) > 0
    return result


def _series(samples: list[Sample], points: int = 60) -> list[list[float]]:
    """The time series thinned to about ``points`` [t, RSS MB(, spool MB)] rows (the summary uses every sample)."""
    step = max(1, len(samples) // points)
    picked = samples[::step]
    if samples and picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return [[s.t, _mb(s.rss_kb), *([round(s.extra["spool_bytes"] / MB, 1)] if "spool_bytes" in s.extra else [])]
            for s in picked]


def delete_topic(kafka: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka)
    try:
        admin.delete_topics([topic])
    except Exception:  # noqa: BLE001 - a topic left behind only costs broker disk
        pass
    finally:
        admin.close()


# -- the pipeline -------------------------------------------------------------------------------------------------

def store_totals(store: str) -> dict[str, int]:
    """Total requests in the store per granularity, and the events the pipeline's run log recorded."""
    from sqlalchemy import func, select

    from store.engine import make_engine
    from store.tables import pipeline_runs, usage_day, usage_hour, usage_minute

    engine = make_engine(store, readonly=True)
    try:
        with engine.connect() as conn:
            out = {t.name: int(conn.execute(select(func.coalesce(func.sum(t.c.requests), 0))).scalar_one())
                   for t in (usage_minute, usage_hour, usage_day)}
            out["pipeline_runs.events"] = int(conn.execute(
                select(func.coalesce(func.sum(pipeline_runs.c.events), 0))).scalar_one())
            out["pipeline_runs"] = int(conn.execute(select(func.count()).select_from(pipeline_runs)).scalar_one())
    finally:
        engine.dispose()
    return out


_SUMMARY = re.compile(r"pipeline: (\d+) run\(s\), (\d+) records, (\d+) events")


def run_pipeline_process(kafka: str, topic: str, store: str, interval_s: float = 0.2,
                         extra_args: list[str] | None = None) -> dict[str, Any]:
    """``apim-analytics pipeline run --once`` as a subprocess, its RSS sampled; the runs' commit times are read
    from its log so each sample can be given to a run."""
    cmd = [sys.executable, "-m", "apim_analytics.cli", "pipeline", "run", "--once", "--kafka", kafka,
           "--topic", topic, "--store", store, *(extra_args or [])]
    env = {**os.environ, "APIM_LOG_FORMAT": "json", "APIM_LOG_LEVEL": "INFO"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampler = RssSampler(proc.pid, interval_s).start()
    commits: list[dict[str, Any]] = []
    errors: list[str] = []

    def read_log() -> None:
        for line in proc.stderr:
            try:
                entry = json.loads(line)
            except ValueError:
                errors.append(line.rstrip()[:300])
                continue
            if entry.get("msg") == "run committed":
                commits.append({"t": sampler.elapsed(), "records": entry.get("records"),
                                "events": entry.get("events"), "seconds": entry.get("seconds")})
            elif entry.get("level") in ("error", "critical"):
                errors.append(line.rstrip()[:300])

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    stdout = proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - t0
    samples = sampler.stop()
    reader.join(10)
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline exited with {proc.returncode}: {stdout[-500:]} {errors[-5:]}")
    match = _SUMMARY.search(stdout)
    per_run, start = [], 0.0
    for i, c in enumerate(commits):
        inside = [s.rss_kb for s in samples if start < s.t <= c["t"]]
        per_run.append({"run": i + 1, "records": c["records"], "events": c["events"], "seconds": c["seconds"],
                        "committed_at_s": c["t"], "peak_rss_mb": _mb(max(inside)) if inside else None})
        start = c["t"]
    return {"cmd": " ".join(cmd[1:]).replace(store, "<store>"), "wall_s": round(wall, 1),
            "runs": int(match.group(1)) if match else len(commits),
            "records": int(match.group(2)) if match else None,
            "events": int(match.group(3)) if match else None,
            "memory": summarize(samples, interval_s), "vmhwm_mb": _mb(sampler.hwm_kb),
            "per_run": per_run, "flat_across_runs": flat_across_runs([r["peak_rss_mb"] for r in per_run]),
            "errors": errors[-5:],
            "rss_series": _series(samples)}


def bench_pipeline(kafka: str, events: int, store_kind: str, work: Path, *, partitions: int = 6,
                   rate: float = 2000.0, seed: int = 5, interval_s: float = 0.2,
                   target_mb: float = PIPELINE_TARGET_MB, keep_topic: bool = False) -> dict[str, Any]:
    """Produce ``events`` into a fresh topic, then work the backlog off with a pipeline process into a fresh store."""
    from bench.pipeline import fresh_store, produce
    from core.topics import ensure_topic

    topic = f"bench.memory.{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka, topic, partitions)
    try:
        t0 = time.perf_counter()
        produced = produce(kafka, topic, events, partitions, rate, seed)
        produced["seconds"] = round(time.perf_counter() - t0, 1)
        produced["events_per_s"] = round(produced["events"] / produced["seconds"]) if produced["seconds"] else None
        with fresh_store(store_kind, work / "memory.db") as store:
            run = run_pipeline_process(kafka, topic, store, interval_s)
            totals = store_totals(store)
    finally:
        if not keep_topic:
            delete_topic(kafka, topic)
    summary = run["memory"]
    exact = totals["usage_minute"] == produced["events"] == run["events"]
    result = {"component": "pipeline", "store": store_kind, "target_mb": target_mb, "produced": produced,
              "pipeline": {k: v for k, v in run.items() if k not in ("memory", "rss_series", "vmhwm_mb")},
              "events_per_s": round(run["events"] / run["wall_s"]) if run["wall_s"] else None,
              "store_totals": totals, "exact": exact, "memory": summary, "vmhwm_mb": run["vmhwm_mb"],
              "rss_series": run["rss_series"]}
    # One run's RSS rises as it reads; what must not rise is the peak from run to run.
    flat = run["flat_across_runs"]
    result["pass"] = bool(exact and summary.get("peak_rss_mb", 0) < target_mb and flat is not False)
    return result


def flat_across_runs(peaks: list[float | None]) -> bool | None:
    """Whether the later runs' peak RSS stays within the slack of the earlier runs' (``None``: under 3 runs,
    nothing to compare). Run 1 is left out of the comparison when there are 4 runs or more (warm-up)."""
    known = [p for p in peaks if p is not None]
    if len(known) < 3:
        return None
    half = (len(known) + 1) // 2
    early = known[1:half] if len(known) >= 4 else known[:half]
    late = known[half:]
    return max(late) - max(early) <= max(FLAT_SLACK_MB, FLAT_SLACK_RATIO * max(early))


# -- main -----------------------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    mem = _status_kb_meminfo()
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "mem_total_gb": round(mem / MB, 1) if mem else None}


def _status_kb_meminfo() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


COMPONENTS = ("collector", "collector-spool", "pipeline")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="Kafka bootstrap servers [env: APIM_KAFKA_BOOTSTRAP]")
    parser.add_argument("--only", default=",".join(COMPONENTS), help="which measurements, comma-separated")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sustained load per collector run")
    parser.add_argument("--pool-events", type=int, default=20_000,
                        help="events in the pool of simulated calls the load generator cycles through")
    parser.add_argument("--spool-max-mb", type=float, default=32,
                        help="the collector's --spool-max-mb in the Kafka-unreachable run")
    parser.add_argument("--events", type=int, default=10_000_000, help="backlog the pipeline works off")
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite", help="the pipeline's store")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the pipeline's topic")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="simulated requests/s of the pipeline's base traffic (bench/pipeline.py)")
    parser.add_argument("--seed", type=int, default=5, help="seed of the pipeline's simulated traffic")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between RSS samples")
    parser.add_argument("--collector-target-mb", type=float, default=COLLECTOR_TARGET_MB,
                        help="pass mark for the collector's peak RSS, MB")
    parser.add_argument("--pipeline-target-mb", type=float, default=PIPELINE_TARGET_MB,
                        help="pass mark for the pipeline's peak RSS, MB")
    parser.add_argument("--keep-topic", action="store_true", help="keep the pipeline's topic (deleted by default)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for memory.json")
    args = parser.parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(only) - set(COMPONENTS)
    if unknown:
        parser.error(f"--only: unknown {sorted(unknown)}; choose from {', '.join(COMPONENTS)}")

    results: dict[str, Any] = {"benchmark": "memory", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "machine": machine(), "load_average_start": _load(), "components": {}}
    with tempfile.TemporaryDirectory(prefix="apim-bench-memory-") as tmp:
        work = Path(tmp)
        if {"collector", "collector-spool"} & set(only):
            from bench.collector_ceiling import build_calls

            pool = build_calls(args.pool_events)
            for name in ("collector", "collector-spool"):
                if name in only:
                    results["components"][name] = bench_collector(
                        args.kafka, args.duration, work / name, pool=pool, kafka_down=name == "collector-spool",
                        spool_max_mb=args.spool_max_mb, interval_s=args.interval,
                        target_mb=args.collector_target_mb)
                    results["components"][name]["load_average_after"] = _load()
        if "pipeline" in only:
            results["components"]["pipeline"] = bench_pipeline(
                args.kafka, args.events, args.store, work, partitions=args.partitions, rate=args.rate,
                seed=args.seed, interval_s=args.interval, target_mb=args.pipeline_target_mb,
                keep_topic=args.keep_topic)
            results["components"]["pipeline"]["load_average_after"] = _load()
    results["load_average_end"] = _load()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "memory.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"results in {path}")
    return 0 if all(c["pass"] for c in results["components"].values()) else 1


def print_table(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"memory benchmark, {results['date']}, {m['cpus']} cores, {m['mem_total_gb']} GB, load average "
          f"{results['load_average_start']} at start, {results['load_average_end']} at end")
    print(f"{'component':<17}{'peak RSS':>9}{'target':>8}{'RSS at 25/50/75/100% (MB)':>28}{'growth':>8}"
          f"{'  rate':<24}{'pass':>5}")
    for name, c in results["components"].items():
        mem = c["memory"]
        at = "/".join(f"{v:.0f}" for v in mem["rss_mb_at"].values())
        if name == "pipeline":
            rate = f"  {c['pipeline']['events']:,} ev, {c['events_per_s']:,}/s"
        else:
            rate = f"  {c['load']['events_per_s']:,} events/s"
        print(f"{name:<17}{mem['peak_rss_mb']:>9}{c['target_mb']:>8.0f}{at:>28}{mem['growth_q2_to_q4_mb']:>8}"
              f"{rate:<24}{'yes' if c['pass'] else 'NO':>5}")
    if "collector-spool" in results["components"]:
        c = results["components"]["collector-spool"]
        print(f"collector-spool: spool on disk at 25/50/75/100%: "
              f"{'/'.join(str(v) for v in c['spool_mb_at'].values())} MB (limit {c['spool_max_mb']} MB, full after "
              f"{c['spool_full_after_s']} s); calls {c['load']['status_counts']}")
    if "pipeline" in results["components"]:
        c = results["components"]["pipeline"]
        p = c["pipeline"]
        print(f"pipeline: produced {c['produced']['events']:,} events in {c['produced']['records']:,} records in "
              f"{c['produced']['seconds']} s; {p['runs']} runs in {p['wall_s']} s; store total requests "
              f"{c['store_totals']['usage_minute']:,} ({'exact' if c['exact'] else 'MISMATCH'}); peak RSS per run "
              f"{[r['peak_rss_mb'] for r in p['per_run']]} MB (flat across runs: {p['flat_across_runs']}); "
              f"VmHWM {c['vmhwm_mb']} MB")


if __name__ == "__main__":
    sys.exit(main())
