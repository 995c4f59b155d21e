"""End-to-end freshness: from a Mixer call being answered to its events being visible in the store.

    python -m bench.freshness [--rate 20000] [--duration 30] [--store postgresql|sqlite]
                              [--pipeline follow|streaming] [--out FILE]

The whole system runs as in production (bench.harness: collector and pipeline processes, the real
broker, PostgreSQL by default; with ``--pipeline streaming`` the streaming job on the Flink job server
of ``make services``) while pre-built Mixer calls are replayed at ``--rate`` events per second, paced
in real time (building them first keeps the traffic source under a tenth of a core).

Two timelines are kept: when the calls were acknowledged (events acknowledged so far) and what the
store holds (total requests, polled every ``--poll`` seconds). The freshness of the k-th acknowledged
event is the first poll that shows at least k events minus the moment the k-th event was
acknowledged; p50/p99/max are over every event. Bounded runs commit every event acknowledged before
they were planned, so the store's count grows in acknowledgement order and this matches
event-by-event freshness up to the poll interval. The streaming job commits each partition on its
own, so there the match is close rather than exact.

Also reported: the pipeline's CPU per 1,000 events and its peak RSS (in streaming mode the driver,
whose process also runs Beam's LOOPBACK workers, and Flink: the job server JVM hosting the embedded
mini-cluster, or the standalone cluster's JobManager, TaskManager and Python worker pool), and the
traffic source's own CPU share. Throttle counters and decisions commit in the same store transaction
as the usage facts, so they are visible within the same figures; the run checks they are there.

Results go to bench/results/freshness.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.faults import _store_url
from bench.harness import System, local_dir
from bench.memory import descendants, status_kb

RESULTS = Path(__file__).resolve().parent / "results" / "freshness.json"


def _first_at_least(timeline: list[tuple[float, int]], counts: np.ndarray) -> np.ndarray:
    """For each count, the first time the (non-decreasing) timeline reached it; NaN when it never did."""
    times = np.array([t for t, _ in timeline] + [np.nan])
    values = np.array([v for _, v in timeline])
    return times[np.searchsorted(values, counts, side="left")]


class Replay:
    """Pre-built Mixer calls sent on a raw gRPC channel at a fixed pace, each retried until accepted.

    ``timeline`` holds (monotonic time, events acknowledged so far), as bench.harness.Traffic does.
    """

    def __init__(self, target: str, calls: list[tuple[bytes, int]], rate: float, concurrency: int = 16) -> None:
        self.target, self.calls, self.rate, self.concurrency = target, calls, rate, concurrency
        self.timeline: list[tuple[float, int]] = []
        self.latencies_ms: list[float] = []
        self.retries = 0
        self._delivered = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)
        self.cpu_s = 0.0

    def start(self) -> Replay:
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        import grpc

        cpu0 = time.thread_time()
        slots = threading.BoundedSemaphore(self.concurrency)
        channel = grpc.insecure_channel(self.target, options=[("grpc.max_send_message_length", 64 << 20)])
        call = channel.unary_unary("/metric.HandleMetricService/HandleMetric")  # bytes in, bytes out
        began = time.monotonic()
        sent_events = 0
        pending: list[threading.Event] = []
        for raw, events in self.calls:
            due = began + sent_events / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent_events += events
            slots.acquire()
            done = threading.Event()
            pending.append(done)
            self._send(call, raw, events, slots, done, time.monotonic())
        for done in pending:
            done.wait()
        channel.close()
        self.cpu_s = time.thread_time() - cpu0

    def _send(self, call, raw: bytes, events: int, slots, done: threading.Event, first_try: float) -> None:
        future = call.future(raw, timeout=10.0)

        def finished(f) -> None:
            if f.exception() is not None:  # Mixer retries a failed report; so do we
                with self._lock:
                    self.retries += 1
                time.sleep(0.05)
                self._send(call, raw, events, slots, done, first_try)
                return
            now = time.monotonic()
            with self._lock:
                self._delivered += events
                self.timeline.append((now, self._delivered))
                self.latencies_ms.append((now - first_try) * 1000)
            slots.release()
            done.set()

        future.add_done_callback(finished)


def build_replay(seed: int, rate: float, duration_s: float, batch: int = 100):
    """The calls (serialized, with their event counts) and their ground truth, built before the clock starts."""
    from simulator.catalog import build_catalog
    from simulator.ground_truth import GroundTruth
    from simulator.mixer import build_requests
    from simulator.traffic import generate

    catalog = build_catalog(seed=seed)
    start_ms = int(time.time() * 1000)
    requests = list(generate(catalog, rate=rate, duration_s=duration_s, start_ms=start_ms, seed=seed))
    truth = GroundTruth().add_all(requests)
    calls = [(m.SerializeToString(), len(m.instances)) for m in build_requests(requests, batch_size=batch)]
    return calls, truth


def _rss_mb(pid: int, field: str = "VmHWM") -> float:
    return round(status_kb(pid, field).get(field, 0) / 1024, 1)


def _flink_pids(mode: str) -> list[int]:
    """The JVMs running the job (and, on the standalone cluster, the Python worker pool; its SDK workers are
    its descendants)."""
    local = local_dir()
    files = ([local / "flink-jobserver" / "jobserver.pid"] if mode == "streaming" else
             [local / "flink-cluster" / f"{name}.pid" for name in ("jobmanager", "taskmanager", "worker-pool")])
    pids = []
    for f in files:
        try:
            pids.append(int(f.read_text().split()[0]))
        except (OSError, ValueError):
            continue
    return pids


def _cpu_of(pids: list[int]) -> float:
    from bench.cpu import process_cpu_s

    total = 0.0
    for pid in pids:
        try:
            total += process_cpu_s(pid)
        except OSError:
            continue
    return total


def measure(store_url: str, workdir: Path, *, rate: float, duration_s: float, poll_s: float = 0.1,
            seed: int = 5, interval_s: float = 0.2, kafka: str = "127.0.0.1:9092",
            pipeline_mode: str = "follow") -> dict[str, Any]:
    """Run the system at ``rate`` for ``duration_s`` and return the freshness figures."""
    from bench.cpu import own_cpu_s, process_cpu_s

    warmup_s = 3.0  # sent and stored before the clock starts: the measure is steady state, not start-up
    calls, truth = build_replay(seed, rate, duration_s + warmup_s)
    warmup_calls = int(len(calls) * warmup_s / (duration_s + warmup_s))
    warmup, calls = calls[:warmup_calls], calls[warmup_calls:]
    warmup_events = sum(n for _, n in warmup)
    system = System(workdir, store_url, kafka=kafka, seed=seed, pipeline_mode=pipeline_mode)
    stored: list[tuple[float, int]] = [(time.monotonic(), 0)]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                n = system.stored_total() - warmup_events
            except Exception:  # noqa: BLE001 - keep polling through a hiccup
                n = stored[-1][1]
            now = time.monotonic()
            if n > stored[-1][1]:
                stored.append((now, n))
            stop.wait(poll_s)

    flink = _flink_pids(pipeline_mode) if pipeline_mode != "follow" else []
    with system:
        assert system.pipeline is not None
        Replay(system.target, warmup, rate).start().join(timeout_s=600)
        system.wait_stored(warmup_events, timeout_s=600)
        stored[:] = [(time.monotonic(), 0)]
        poller = threading.Thread(target=poll, name="store-poll", daemon=True)
        poller.start()
        pipe_cpu0 = process_cpu_s(system.pipeline.pid)
        flink = sorted(set(flink + [c for p in flink for c in descendants(p)]))  # SDK workers started by now
        jvm_cpu0 = _cpu_of(flink)
        own0 = own_cpu_s()
        began = time.monotonic()
        traffic = Replay(system.target, calls, rate).start()
        traffic.join(timeout_s=duration_s * 20 + 600)
        send_s = time.monotonic() - began
        total = truth.totals()["requests"] - warmup_events
        system.wait_stored(total + warmup_events, timeout_s=600)
        wall_s = time.monotonic() - began
        pipe_cpu = process_cpu_s(system.pipeline.pid) - pipe_cpu0
        jvm_cpu = _cpu_of(flink) - jvm_cpu0
        own_cpu = own_cpu_s() - own0
        pipe_rss = _rss_mb(system.pipeline.pid)
        jvm_rss = round(sum(_rss_mb(p, "VmRSS") for p in flink), 1)
        time.sleep(poll_s * 2)
        stop.set()
        poller.join()
        outcome = system.outcome(truth)
        decisions = _throttle_rows(store_url)
    acked = traffic.timeline
    latencies = np.array(traffic.latencies_ms or [0.0])
    counts = np.arange(1, total + 1)
    fresh = _first_at_least(stored, counts) - _first_at_least(acked, counts)
    fresh = fresh[~np.isnan(fresh)]
    return {
        "offered_rate": rate, "duration_s": duration_s, "events": int(total),
        "achieved_send_rate": round(total / send_s, 1), "poll_s": poll_s, "pipeline_interval_s": interval_s,
        "freshness_p50_s": round(float(np.percentile(fresh, 50)), 3),
        "freshness_p99_s": round(float(np.percentile(fresh, 99)), 3),
        "freshness_max_s": round(float(fresh.max()), 3),
        "mixer_call_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "mixer_call_p99_ms": round(float(np.percentile(latencies, 99)), 2), "sender_retries": traffic.retries,
        "pipeline": pipeline_mode,
        "pipeline_cpu_s_per_1000_events": round(pipe_cpu / total * 1000, 4),
        "pipeline_cpu_share": round(pipe_cpu / wall_s, 3), "pipeline_peak_rss_mb": pipe_rss,
        "flink_cpu_s_per_1000_events": round(jvm_cpu / total * 1000, 4) if flink else None,
        "flink_rss_mb": jvm_rss or None,
        "source_cpu_share": round(traffic.cpu_s / send_s, 3), "bench_process_cpu_share": round(own_cpu / wall_s, 3),
        "throttle_counter_rows": decisions[0], "throttle_decision_rows": decisions[1],
        "exact": outcome.exact, "lost": outcome.lost, "doubled": outcome.doubled,
    }


def _throttle_rows(store_url: str) -> tuple[int, int]:
    from sqlalchemy import func, select

    from store.engine import make_engine
    from store.tables import throttle_counters, throttle_decisions

    engine = make_engine(store_url, readonly=True)
    try:
        with engine.connect() as conn:
            return (int(conn.execute(select(func.count()).select_from(throttle_counters)).scalar() or 0),
                    int(conn.execute(select(func.count()).select_from(throttle_decisions)).scalar() or 0))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20_000.0, help="offered events per second (default 20000)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of traffic (default 30)")
    parser.add_argument("--poll", type=float, default=0.1, help="store poll interval, seconds (default 0.1)")
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="the local broker [env: APIM_KAFKA_BOOTSTRAP]")
    parser.add_argument("--pipeline", choices=("follow", "streaming", "streaming-cluster"), default="follow",
                        help="bounded runs in a loop, the streaming job on the embedded Flink of `make services`, "
                             "or on the standalone cluster (deploy/local/flink-cluster.sh, started first)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="apim-freshness-") as tmp:
        url, drop = _store_url(args.store, Path(tmp), "freshness")
        try:
            result = measure(url, Path(tmp), rate=args.rate, duration_s=args.duration, poll_s=args.poll,
                             kafka=args.kafka, pipeline_mode=args.pipeline)
        finally:
            drop()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": {"cores": os.cpu_count()},
              "store": args.store, "load_avg_after": os.getloadavg()[0], **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"freshness: offered {result['offered_rate']:,.0f} events/s, achieved {result['achieved_send_rate']:,.0f}/s "
          f"({result['events']:,} events, {args.store}); call answered -> visible in the store: "
          f"p50 {result['freshness_p50_s']} s, p99 {result['freshness_p99_s']} s, max {result['freshness_max_s']} s "
          f"; pipeline ({args.pipeline}) {result['pipeline_cpu_s_per_1000_events']} CPU-s per 1,000 events, "
          f"peak RSS {result['pipeline_peak_rss_mb']} MB"
          + (f", Flink (JVMs, worker pool) {result['flink_cpu_s_per_1000_events']} CPU-s per 1,000 events, "
             f"RSS {result['flink_rss_mb']} MB" if result["flink_rss_mb"] else "")
          + f"; source {result['source_cpu_share']:.1%} of a core; Mixer calls p50 {result['mixer_call_p50_ms']} ms, "
          f"p99 {result['mixer_call_p99_ms']} ms; "
          f"store {'exact' if result['exact'] else 'NOT EXACT'}")
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
