"""CPU of a whole ``pipeline run --once`` process that finds nothing to read, imports included.

    python -m bench.pipeline_idle [--repeats 7]

A cron job or a Kubernetes CronJob runs ``--once`` every few minutes whether or not events came; an
idle run should cost next to nothing. Per store (SQLite and PostgreSQL): a fresh topic with nothing on
it, a store migrated by a first run, then ``--repeats`` runs, each a fresh process whose user + system
CPU comes from ``wait4``. Reported beside the baseline from the same run, a bare ``python -c pass``,
and the cost of ``import apache_beam`` alone (which an idle run must not pay). Target: 1 CPU-s.
Results: bench/results/pipeline-idle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.pipeline import fresh_store
from core.topics import ensure_topic

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline-idle.json"
TARGET_CPU_S = 1.0
CLI = [sys.executable, "-c", "import sys; from apim_analytics.cli import main; sys.exit(main())"]


def cpu_s(argv: list[str]) -> float:
    """User + system CPU seconds of one run of ``argv``; a failed run is an error, not a number."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[3:])} exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    return usage.ru_utime + usage.ru_stime


def median_cpu(argv: list[str], repeats: int) -> tuple[float, float]:
    cpu_s(argv)  # warm the file cache and the .pyc files (and migrate the store)
    samples = sorted(cpu_s(argv) for _ in range(repeats))
    return round(statistics.median(samples), 3), round(samples[-1], 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kafka", default=os.environ.get("APIM_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--stores", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    results: list[dict[str, object]] = []
    baselines = {"python -c pass": [sys.executable, "-c", "pass"],
                 "python -c 'import apache_beam'": [sys.executable, "-c", "import apache_beam"]}
    for name, command in baselines.items():
        med, top = median_cpu(command, args.repeats)
        results.append({"case": name, "cpu_s_median": med, "cpu_s_max": top})
        print(f"{name:<45} median {med:.3f} CPU-s (max {top:.3f})", flush=True)
    topic = f"bench-idle-{uuid.uuid4().hex[:8]}"
    ensure_topic(args.kafka, topic, 6)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            with fresh_store(kind, Path(tmp) / "idle.db") as url:
                command = [*CLI, "pipeline", "run", "--once", "--kafka", args.kafka, "--topic", topic, "--store", url]
                med, top = median_cpu(command, args.repeats)
            results.append({"case": f"pipeline run --once, nothing to read ({kind})", "store": kind,
                            "cpu_s_median": med, "cpu_s_max": top, "met": med <= TARGET_CPU_S})
            print(f"{'idle pipeline run --once (' + kind + ')':<45} median {med:.3f} CPU-s (max {top:.3f}); "
                  f"target <= {TARGET_CPU_S}: {'met' if med <= TARGET_CPU_S else 'NOT met'}", flush=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "pipeline_idle", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {platform.python_version()}", "repeats": args.repeats,
        "target_cpu_s": TARGET_CPU_S, "results": results}, indent=2) + "\n")
    return 0 if all(r.get("met", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
