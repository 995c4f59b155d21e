"""CPU cost of starting the CLI: ``--help``, a subcommand's help, an argument error and ``config show``.

    python -m bench.cli_startup [--repeats 7]

Each case runs the installed ``apim-analytics`` entry point in a fresh process and takes its user + system
CPU from ``wait4``; the median of the repeats is reported beside the baseline measured in the same run, a
bare ``python -c pass`` (the interpreter's own start-up, which no change of ours can remove). The target is
under 0.3 CPU-s for ``--help``. Results: bench/results/cli-startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "cli-startup.json"
TARGET_HELP_CPU_S = 0.3
CLI = [sys.executable, "-c", "import sys; from apim_analytics.cli import main; sys.exit(main())"]
CASES: dict[str, list[str]] = {
    "baseline: python -c pass": [sys.executable, "-c", "pass"],
    "apim-analytics --help": [*CLI, "--help"],
    "apim-analytics usage --help": [*CLI, "usage", "--help"],
    "apim-analytics pipeline run --help": [*CLI, "pipeline", "run", "--help"],
    "argument error (unknown subcommand)": [*CLI, "frobnicate"],
    "apim-analytics config show": [*CLI, "config", "show"],
}


def cpu_s(argv: list[str]) -> float:
    """User + system CPU seconds of one run of ``argv`` (its children included)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    results = []
    for name, command in CASES.items():
        cpu_s(command)  # warm the file cache and the .pyc files
        samples = sorted(cpu_s(command) for _ in range(args.repeats))
        results.append({"case": name, "cpu_s_median": round(statistics.median(samples), 3),
                        "cpu_s_max": round(samples[-1], 3)})
        print(f"{name:<40} median {results[-1]['cpu_s_median']:.3f} CPU-s  (max {samples[-1]:.3f})", flush=True)
    help_cpu = next(r["cpu_s_median"] for r in results if r["case"] == "apim-analytics --help")
    baseline = results[0]["cpu_s_median"]
    print(f"--help: {help_cpu:.3f} CPU-s, {help_cpu - baseline:.3f} above the bare interpreter; "
          f"target < {TARGET_HELP_CPU_S}: {'met' if help_cpu < TARGET_HELP_CPU_S else 'NOT met'}")
    RESULTS.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, {platform.python_version()}",
        "repeats": args.repeats, "target_help_cpu_s": TARGET_HELP_CPU_S, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
