"""End-to-end freshness: from a Mixer call being answered to its events being visible in the store.

    python -m bench.freshness [--rate 20000] [--duration 30] [--store postgresql|sqlite]

The whole system runs as in production (bench.harness: collector and pipeline processes, the real
broker, PostgreSQL by default) while the simulator sends at ``--rate`` events per second, paced in
real time. Two timelines are kept: when the sender's calls were acknowledged (events acknowledged so
far) and what the store holds (total requests, polled every ``--poll`` seconds). The freshness of
the k-th acknowledged event is the first poll that shows at least k events minus the moment the
k-th event was acknowledged; p50/p99/max are over every event. Because runs commit every event
acknowledged before they were planned, the store's count grows in acknowledgement order, so this
matches event-by-event freshness up to the poll interval (reported with the numbers).

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
from bench.harness import System

RESULTS = Path(__file__).resolve().parent / "results" / "freshness.json"


def _first_at_least(timeline: list[tuple[float, int]], counts: np.ndarray) -> np.ndarray:
    """For each count, the first time the (non-decreasing) timeline reached it; NaN when it never did."""
    times = np.array([t for t, _ in timeline] + [np.nan])
    values = np.array([v for _, v in timeline])
    return times[np.searchsorted(values, counts, side="left")]


def measure(store_url: str, workdir: Path, *, rate: float, duration_s: float, poll_s: float = 0.1,
            seed: int = 5, interval_s: float = 0.2, kafka: str = "127.0.0.1:9092") -> dict[str, Any]:
    """Run the system at ``rate`` for ``duration_s`` and return the freshness figures."""
    system = System(workdir, store_url, kafka=kafka, seed=seed)
    stored: list[tuple[float, int]] = [(time.monotonic(), 0)]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                n = system.stored_total()
            except Exception:  # noqa: BLE001 - keep polling through a hiccup
                n = stored[-1][1]
            now = time.monotonic()
            if n > stored[-1][1]:
                stored.append((now, n))
            stop.wait(poll_s)

    with system:
        poller = threading.Thread(target=poll, name="store-poll", daemon=True)
        poller.start()
        began = time.monotonic()
        traffic = system.traffic(rate=rate, duration_s=duration_s, seed=seed, concurrency=16)
        report, truth = traffic.join(timeout_s=duration_s * 20 + 600)
        send_s = time.monotonic() - began
        total = truth.totals()["requests"]
        system.wait_stored(total, timeout_s=600)
        time.sleep(poll_s * 2)
        stop.set()
        poller.join()
        outcome = system.outcome(truth)
    acked = traffic.timeline
    counts = np.arange(1, total + 1)
    fresh = _first_at_least(stored, counts) - _first_at_least(acked, counts)
    fresh = fresh[~np.isnan(fresh)]
    return {
        "offered_rate": rate, "duration_s": duration_s, "events": int(total),
        "achieved_send_rate": round(total / send_s, 1), "poll_s": poll_s, "pipeline_interval_s": interval_s,
        "freshness_p50_s": round(float(np.percentile(fresh, 50)), 3),
        "freshness_p99_s": round(float(np.percentile(fresh, 99)), 3),
        "freshness_max_s": round(float(fresh.max()), 3),
        "mixer_call_p50_ms": round(report.latency_p50_ms, 2), "mixer_call_p99_ms": round(report.latency_p99_ms, 2),
        "exact": outcome.exact, "lost": outcome.lost, "doubled": outcome.doubled,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20_000.0, help="offered events per second (default 20000)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of traffic (default 30)")
    parser.add_argument("--poll", type=float, default=0.1, help="store poll interval, seconds (default 0.1)")
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="the local broker [env: APIM_KAFKA_BOOTSTRAP]")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="apim-freshness-") as tmp:
        url, drop = _store_url(args.store, Path(tmp), "freshness")
        try:
            result = measure(url, Path(tmp), rate=args.rate, duration_s=args.duration, poll_s=args.poll,
                             kafka=args.kafka)
        finally:
            drop()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": {"cores": os.cpu_count()},
              "store": args.store, "load_avg_after": os.getloadavg()[0], **result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"freshness: offered {result['offered_rate']:,.0f} events/s, achieved {result['achieved_send_rate']:,.0f}/s "
          f"({result['events']:,} events, {args.store}); call answered -> visible in the store: "
          f"p50 {result['freshness_p50_s']} s, p99 {result['freshness_p99_s']} s, max {result['freshness_max_s']} s "
          f"(target p99 < 5 s); Mixer calls p50 {result['mixer_call_p50_ms']} ms, "
          f"p99 {result['mixer_call_p99_ms']} ms; "
          f"store {'exact' if result['exact'] else 'NOT EXACT'}")
    return 0 if result["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
