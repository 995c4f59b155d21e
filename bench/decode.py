"""Record decode alone: CPU microseconds per event, compiled vs reference builder.

``python -m bench.decode``. Realistic records (the simulator's traffic as the
collector publishes it: one UsageEventColumns record per call and partition)
are built first; then ``builder.add(value); builder.accept()`` is timed over
all of them with process CPU time, best of several runs, each on a fresh
builder (so every run fills its string dictionaries from empty, as a pipeline
run does). A ``take()`` at the end is included, as it is part of a chunk's cost.
"""

from __future__ import annotations

import argparse
import time

from bench.feed import simulated_calls
from pipeline.builders import CompiledChunkBuilder
from pipeline.decode import AGGREGATED_COLUMNS, ChunkBuilder


def records(seed: int = 5, rate: float = 2000, duration_s: float = 60, partitions: int = 6) -> list[bytes]:
    hour_ms = 3_600_000
    start_ms = (int(time.time() * 1000) // hour_ms - 6) * hour_ms  # a whole hour, 6 hours ago
    return [r.value for _, recs in simulated_calls(seed=seed, rate=rate, duration_s=duration_s, start_ms=start_ms,
                                                   partitions=partitions) for r in recs]


def time_builder(make, values: list[bytes], repeat: int) -> tuple[float, int]:
    """(best CPU seconds over ``repeat`` runs, events decoded)."""
    best, n = float("inf"), 0
    for _ in range(repeat):
        builder = make(AGGREGATED_COLUMNS)
        add, accept = builder.add, builder.accept
        t0 = time.process_time()
        for v in values:
            add(v)
            accept()
        chunk = builder.take()
        best = min(best, time.process_time() - t0)
        n = chunk.n
    return best, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=60)
    parser.add_argument("--reference", action="store_true", help="also time the protobuf-runtime builder")
    args = parser.parse_args(argv)
    values = records(duration_s=args.duration_s)
    size = sum(map(len, values))
    builders = [("compiled", CompiledChunkBuilder)]
    if args.reference:
        builders.append(("reference", ChunkBuilder))
    for name, make in builders:
        cpu, n = time_builder(make, values, args.repeat)
        print(f"{name:9s}: {len(values)} records, {n} events ({n / len(values):.1f}/record, {size / n:.0f} B/event): "
              f"{cpu * 1e6 / n:.3f} us/event, best of {args.repeat}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
