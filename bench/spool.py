"""Spool benchmark: appends/s and MB/s of the collector's durable spool (collector/spool.py).

    python -m bench.spool [--dir .local/bench-spool] [--scale 1.0]

Appends 10 KiB entries with real fsyncs (group commit) into a fresh spool in a
folder on the disk under test: one appender with one entry per append, 64
concurrent appenders with one entry, and 64 with ten entries. At scale 1.0 it
writes about 120 MB, deleted afterwards. Prints one line per case; asserts
nothing (the spool's behaviour is tested in tests/unit/test_spool.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from collector.spool import Spool

ENTRY_BYTES = 10 * 1024
CASES = [  # (name, appenders, appends, entries per append)
    ("1 appender, 1 entry/append", 1, 200, 1),
    ("64 appenders, 1 entry/append", 64, 4000, 1),
    ("64 appenders, 10 entries/append", 64, 800, 10),
]


async def measure(directory: Path, appenders: int, appends: int, per_append: int) -> tuple[float, float]:
    """(appends/s, MB/s) of ``appends`` appends of ``per_append`` entries shared by ``appenders`` tasks."""
    entry = os.urandom(ENTRY_BYTES)
    spool = Spool.open(directory, max_bytes=1 << 34)
    remaining = appends

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await spool.append([entry] * per_append)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(appenders)))
    elapsed = time.perf_counter() - started
    await spool.close()
    return appends / elapsed, appends * per_append * ENTRY_BYTES / elapsed / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".local"),
                        help="parent folder of the temporary spools (put it on the disk under test; "
                             "/tmp is often tmpfs, where fsync costs nothing)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of appends of each case")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir))
    try:
        for n, (name, appenders, appends, per_append) in enumerate(CASES):
            count = max(1, round(appends * args.scale))
            rate, mbs = asyncio.run(measure(work / f"case{n}", appenders, count, per_append))
            print(f"spool throughput, 10 KiB entries, {name}: {rate:,.0f} appends/s, {mbs:,.1f} MB/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
