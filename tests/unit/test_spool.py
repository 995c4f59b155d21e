"""The durable spool: order, durability, recovery from torn tails and crashes, group commit.

Every test works in its own tmp_path folder on the real file system and uses
real fsyncs (counted, not faked, except where a test makes one block or fail).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from collector.spool import (
    FRAME_OVERHEAD,
    POSITION_FILE,
    Position,
    Spool,
    SpoolCorrupt,
    SpoolFull,
    _encode,
    segment_name,
)

REPO = Path(__file__).resolve().parents[2]


def make_entry(i: int, j: int = 0, size: int | None = None) -> bytes:
    """A self-describing entry: ``b"i:j:"`` then bytes derived from (i, j), so damage or mix-ups show."""
    if size is None:
        size = 100 + (i * 7919 + j * 104729) % 3000
    head = f"{i}:{j}:".encode()
    digest = hashlib.sha256(head).digest()
    body = digest * (size // len(digest) + 1)
    return (head + body)[:max(size, len(head))]


def check_entry(data: bytes) -> tuple[int, int]:
    """The (i, j) of an entry made by :func:`make_entry`, after checking every byte."""
    i, j, _ = data.split(b":", 2)
    assert data == make_entry(int(i), int(j), len(data)), f"entry {i}:{j} is damaged"
    return int(i), int(j)


def seg_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.seg"))


def frame_bytes(entries: list[bytes]) -> int:
    return sum(len(e) for e in entries) + FRAME_OVERHEAD * len(entries)


async def drain(spool: Spool, batch: int = 1000) -> list[tuple[Position, bytes]]:
    """Read and acknowledge everything, like the collector's drain task."""
    out: list[tuple[Position, bytes]] = []
    while items := await spool.read(batch):
        out += items
        await spool.ack(items[-1][0])
    return out


async def read_all(spool: Spool) -> list[tuple[Position, bytes]]:
    """Everything unacknowledged, without acknowledging (one read)."""
    return await spool.read(1 << 30, max_bytes=1 << 40)


def test_round_trip_in_order_across_segments(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=4096)
        expected: list[bytes] = []
        positions: list[Position] = []
        for k in range(30):
            batch = [make_entry(k, j) for j in range(k % 4 + 1)]
            positions.append(await spool.append(batch))
            expected += batch
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        assert len(seg_files(tmp_path)) >= 5
        got = await drain(spool, batch=7)
        assert [e for _, e in got] == expected
        assert [p for p, _ in got] == sorted(p for p, _ in got)
        assert set(positions) <= {p for p, _ in got}  # each append's position is its last entry's
        assert spool.empty and spool.depth_entries == 0 and spool.depth_bytes == 0
        await spool.close()

    asyncio.run(main())


def test_reopen_keeps_entries_and_read_position(tmp_path: Path) -> None:
    entries = [make_entry(i) for i in range(40)]

    async def first_run() -> Position:
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=8192)
        for i in range(0, 40, 5):
            await spool.append(entries[i:i + 5])
        items = await spool.read(12)
        await spool.ack(items[-1][0])
        await spool.close()
        return items[-1][0]

    async def second_run(acked: Position) -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=8192)
        assert spool.depth_entries == 28
        assert spool.depth_bytes == frame_bytes(entries[12:])
        items = await read_all(spool)
        assert [e for _, e in items] == entries[12:]
        assert items[0][0] > acked
        more = await spool.append([make_entry(99)])
        assert more > items[-1][0]
        assert [e for _, e in await drain(spool)] == [*entries[12:], make_entry(99)]
        await spool.close()
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=8192)
        assert spool.empty and await spool.read(10) == []
        await spool.close()

    acked = asyncio.run(first_run())
    asyncio.run(second_run(acked))


def test_read_without_ack_returns_the_same(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=4096)
        entries = [make_entry(i, size=1000) for i in range(10)]
        await spool.append(entries)
        first = await spool.read(4)
        assert first == await spool.read(4)
        assert [e for _, e in first] == entries[:4]
        # max_bytes bounds the payload, but one entry always comes back so a big one cannot stall the drain.
        assert len(await spool.read(10, max_bytes=2500)) == 2
        assert len(await spool.read(10, max_bytes=10)) == 1
        await spool.ack(first[1][0])  # partial ack of what was read
        rest = await spool.read(100)
        assert [e for _, e in rest] == entries[2:]
        assert spool.depth_entries == 8
        await spool.close()

    asyncio.run(main())


def test_ack_deletes_consumed_segments(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=3000)
        for i in range(6):
            await spool.append([make_entry(i, size=2000)])  # one entry per segment
        assert seg_files(tmp_path) == [segment_name(n) for n in range(1, 7)]
        items = await spool.read(2)
        await spool.ack(items[-1][0])  # segments 1 and 2 fully consumed
        assert seg_files(tmp_path) == [segment_name(n) for n in range(3, 7)]
        assert (tmp_path / POSITION_FILE).stat().st_size == 24
        items = await spool.read(10)
        await spool.ack(items[-1][0])  # everything; the last segment stays, it is still written to
        assert seg_files(tmp_path) == [segment_name(6)]
        # The next append after a full drain starts a fresh segment, so the consumed one can go.
        pos = await spool.append([make_entry(7, size=10)])
        assert pos.segment == 7
        await spool.ack((await spool.read(1))[0][0])
        assert seg_files(tmp_path) == [segment_name(7)]
        await spool.close()
        assert not (tmp_path / "read.pos.tmp").exists()

    asyncio.run(main())


def test_spool_full_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        entry = make_entry(1, size=1000)
        limit = 3 * (1000 + FRAME_OVERHEAD)
        spool = Spool.open(tmp_path, max_bytes=limit, segment_bytes=1 << 20)
        await spool.append([entry, entry])
        sizes = {p.name: p.stat().st_size for p in tmp_path.glob("*.seg")}
        with pytest.raises(SpoolFull, match=rf"{2 * 1020} bytes held \+ {2 * 1020} new > max_bytes={limit}") as info:
            await spool.append([entry, entry])  # one of the two would fit: still all or nothing
        assert (info.value.depth_bytes, info.value.requested_bytes, info.value.max_bytes) == (2040, 2040, limit)
        with pytest.raises(SpoolFull, match="can never fit"):
            await spool.append([make_entry(2, size=limit)])
        assert {p.name: p.stat().st_size for p in tmp_path.glob("*.seg")} == sizes
        assert spool.depth_entries == 2 and spool.depth_bytes == 2040
        # Appends in flight hold their space: of two concurrent appends, only the first fits.
        results = await asyncio.gather(spool.append([entry]), spool.append([entry]), return_exceptions=True)
        assert isinstance(results[0], Position) and isinstance(results[1], SpoolFull)
        items = await spool.read(2)
        await spool.ack(items[-1][0])
        await spool.append([entry, entry])  # space freed by the ack
        assert [e for _, e in await drain(spool)] == [entry] * 3
        await spool.close()

    asyncio.run(main())


def test_depth_counters_exact(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=5000)
        assert (spool.depth_entries, spool.depth_bytes, spool.empty) == (0, 0, True)
        appended: list[bytes] = []
        for k in range(12):
            batch = [make_entry(k, j) for j in range(k % 3 + 1)]
            task = asyncio.create_task(spool.append(batch))
            await asyncio.sleep(0)
            appended += batch
            assert spool.depth_entries == len(appended)  # counted while still in flight
            assert not spool.empty
            await task
            assert spool.depth_bytes == frame_bytes(appended)
        items = await spool.read(5)
        await spool.ack(items[2][0])
        assert (spool.depth_entries, spool.depth_bytes) == (len(appended) - 3, frame_bytes(appended[3:]))
        await spool.ack(items[2][0])  # again: no-op
        assert spool.depth_entries == len(appended) - 3
        await spool.ack(items[4][0])
        assert (spool.depth_entries, spool.depth_bytes) == (len(appended) - 5, frame_bytes(appended[5:]))
        await spool.close()
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=5000)
        assert (spool.depth_entries, spool.depth_bytes) == (len(appended) - 5, frame_bytes(appended[5:]))
        # An ack not preceded by a read (counted by walking the frames on disk) is exact too.
        later = (await spool.read(4))[-1][0]
        spool._handed.positions.clear()
        await spool.ack(later)
        assert (spool.depth_entries, spool.depth_bytes) == (len(appended) - 9, frame_bytes(appended[9:]))
        await drain(spool)
        assert (spool.depth_entries, spool.depth_bytes, spool.empty) == (0, 0, True)
        await spool.close()

    asyncio.run(main())


def test_ack_rejects_positions_it_cannot_honour(tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20)
        pos = await spool.append([make_entry(1, size=100), make_entry(2, size=100)])
        with pytest.raises(ValueError, match="durable data ends"):
            await spool.ack(Position(pos.segment, pos.offset + 1))
        with pytest.raises(ValueError, match="not the end of an entry"):
            await spool.ack(Position(pos.segment, 50))
        assert spool.depth_entries == 2
        await spool.close()
        with pytest.raises(RuntimeError, match="closed"):
            await spool.append([b"x"])

    asyncio.run(main())


def _fill(tmp_path: Path, commits: list[list[bytes]], segment_bytes: int = 1 << 20) -> None:
    """Append each list as its own commit, then close."""
    async def main() -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=segment_bytes)
        for batch in commits:
            await spool.append(batch)
        await spool.close()

    asyncio.run(main())


def _reopen_and_read(tmp_path: Path) -> list[bytes]:
    async def main() -> list[bytes]:
        spool = Spool.open(tmp_path, max_bytes=10 << 20)
        items = [e for _, e in await read_all(spool)]
        assert spool.depth_entries == len(items)
        await spool.close()
        return items

    return asyncio.run(main())


@pytest.mark.parametrize("tail", ["half_frame", "header_only", "garbage", "zeros", "few_bytes", "append_cut_short"])
def test_torn_tail_is_cut_and_everything_before_survives(tmp_path: Path, tail: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    commits = [[make_entry(c, j) for j in range(3)] for c in range(4)]
    _fill(tmp_path, commits)
    seg = tmp_path / segment_name(1)
    good_size = seg.stat().st_size
    frame = _encode([make_entry(9, size=5000)], good_size)
    three = [make_entry(9, j, size=500) for j in range(3)]
    junk = {"half_frame": frame[:len(frame) // 2], "header_only": frame[:FRAME_OVERHEAD],
            "garbage": b"\x01\x02garbage\xff" * 100, "zeros": bytes(4096), "few_bytes": frame[:3],
            # two whole frames of a three-entry append: intact, but the append never completed
            "append_cut_short": _encode(three, good_size)[:frame_bytes(three[:2])]}[tail]
    with seg.open("ab") as f:
        f.write(junk)
    with caplog.at_level(logging.WARNING, logger="collector.spool"):
        assert _reopen_and_read(tmp_path) == [e for c in commits for e in c]
    assert f"cut a torn tail of {len(junk)} bytes off {seg}" in caplog.text
    assert seg.stat().st_size == good_size
    caplog.clear()
    _fill(tmp_path, [[make_entry(10)]])  # appending after recovery works, and the next open is clean
    with caplog.at_level(logging.WARNING, logger="collector.spool"):
        assert _reopen_and_read(tmp_path) == [e for c in commits for e in c] + [make_entry(10)]
    assert not [r for r in caplog.records if r.name == "collector.spool" and r.levelno >= logging.WARNING]


def test_hole_inside_the_last_commit_is_a_torn_tail(tmp_path: Path) -> None:
    # Power loss can persist later pages of an unsynced write but not earlier ones: intact frames after a
    # hole, all of the same (unacknowledged) commit. That is a torn tail, not corruption; and the torn
    # append goes as a whole, its intact first entry included.
    first = [make_entry(1, j) for j in range(3)]
    last = [make_entry(2, j, size=2000) for j in range(5)]
    _fill(tmp_path, [first, last])
    seg = tmp_path / segment_name(1)
    hole_at = frame_bytes(first) + frame_bytes(last[:1]) + 10  # inside the second frame of the last commit
    with seg.open("r+b") as f:
        f.seek(hole_at)
        f.write(bytes(4096))
    assert _reopen_and_read(tmp_path) == first


def test_damage_in_a_middle_segment_raises_spool_corrupt(tmp_path: Path) -> None:
    _fill(tmp_path, [[make_entry(i, size=1500)] for i in range(6)], segment_bytes=3100)
    assert len(seg_files(tmp_path)) == 3
    seg = tmp_path / segment_name(2)
    at = frame_bytes([make_entry(2, size=1500)]) + FRAME_OVERHEAD + 700  # payload of the 2nd frame
    with seg.open("r+b") as f:
        f.seek(at)
        f.write(b"X")
    with pytest.raises(SpoolCorrupt, match=rf"{segment_name(2)}: bad frame at offset {at - FRAME_OVERHEAD - 700}"):
        Spool.open(tmp_path, max_bytes=10 << 20)


def test_damage_before_a_later_commit_raises_spool_corrupt(tmp_path: Path) -> None:
    # Same segment, but an intact later commit follows the bad frame: the bad frame had been fsync'd.
    commits = [[make_entry(c, j) for j in range(2)] for c in range(3)]
    _fill(tmp_path, commits)
    seg = tmp_path / segment_name(1)
    bad = frame_bytes(commits[0])
    with seg.open("r+b") as f:
        f.seek(bad + FRAME_OVERHEAD + 5)
        f.write(b"X")
    size = seg.stat().st_size
    with pytest.raises(SpoolCorrupt, match=rf"{segment_name(1)}: bad frame at offset {bad}: crc mismatch.*later"):
        Spool.open(tmp_path, max_bytes=10 << 20)
    assert seg.stat().st_size == size  # nothing was cut


def test_other_damage_raises_spool_corrupt(tmp_path: Path) -> None:
    _fill(tmp_path, [[make_entry(i, size=1500)] for i in range(6)], segment_bytes=3100)

    async def ack_one() -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20)
        await spool.ack((await spool.read(1))[0][0])
        # Damage appearing after open is caught by read().
        with (tmp_path / segment_name(3)).open("r+b") as f:
            f.seek(FRAME_OVERHEAD + 3)
            f.write(b"X")
        with pytest.raises(SpoolCorrupt, match=segment_name(3)):
            await spool.read(10)
        await spool.close()

    asyncio.run(ack_one())
    (tmp_path / segment_name(2)).rename(tmp_path / "aside")
    with pytest.raises(SpoolCorrupt, match=f"segment {segment_name(2)} is missing"):
        Spool.open(tmp_path, max_bytes=10 << 20)
    (tmp_path / "aside").rename(tmp_path / segment_name(2))
    position = tmp_path / POSITION_FILE
    position.write_bytes(position.read_bytes()[:-1] + b"\x07")
    with pytest.raises(SpoolCorrupt, match=r"read\.pos"):
        Spool.open(tmp_path, max_bytes=10 << 20)


def test_group_commit_shares_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    calls: list[int] = []

    def counting_fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    async def main() -> None:
        spool = Spool.open(tmp_path, max_bytes=100 << 20)
        monkeypatch.setattr(os, "fsync", counting_fsync)
        batches = [[make_entry(i, j) for j in range(i % 3 + 1)] for i in range(200)]
        positions = await asyncio.gather(*(spool.append(b) for b in batches))
        assert len(calls) <= 10, f"{len(calls)} fsyncs for 200 appends"
        # Read order is position order, and each append's entries are contiguous and end at its position.
        items = await read_all(spool)
        assert [p for p, _ in items] == sorted(p for p, _ in items)
        by_position = sorted(range(200), key=lambda i: positions[i])
        assert [e for _, e in items] == [e for i in by_position for e in batches[i]]
        end_of = {p: n for n, (p, _) in enumerate(items)}
        assert all(items[end_of[positions[i]]][1] == batches[i][-1] for i in range(200))
        await spool.close()

    asyncio.run(main())


def test_fsync_runs_in_a_thread_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    gate = threading.Event()
    entered = threading.Event()
    state = {"in_flight": 0, "max_in_flight": 0}
    sizes_at_fsync: list[int] = []
    lock = threading.Lock()

    def slow_fsync(fd: int) -> None:
        with lock:
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        sizes_at_fsync.append(os.fstat(fd).st_size)
        entered.set()
        gate.wait(5)
        real_fsync(fd)
        with lock:
            state["in_flight"] -= 1

    async def main() -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20, fsync_interval_s=0)
        monkeypatch.setattr(os, "fsync", slow_fsync)
        try:
            a = asyncio.create_task(spool.append([make_entry(1)]))
            while not entered.is_set():
                await asyncio.sleep(0.001)
            b = asyncio.create_task(spool.append([make_entry(2)]))  # arrives during A's fsync
            ticks = 0
            for _ in range(20):  # the loop keeps serving while the fsync blocks
                await asyncio.sleep(0.001)
                ticks += 1
            assert ticks == 20 and not a.done() and not b.done()
            assert await spool.read(10) == []  # nothing is durable yet
        finally:
            gate.set()
        pos_a, pos_b = await a, await b
        assert pos_b > pos_a
        # B waited for a second fsync; A's fsync did not cover B's bytes, which were written only after it.
        assert sizes_at_fsync == [pos_a.offset, pos_b.offset]
        assert state["max_in_flight"] == 1
        assert [e for _, e in await read_all(spool)] == [make_entry(1), make_entry(2)]
        await spool.close()

    asyncio.run(main())


def test_failed_commit_is_undone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def failing_fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    async def main() -> None:
        spool = Spool.open(tmp_path, max_bytes=10 << 20, segment_bytes=4096)
        await spool.append([make_entry(1)])
        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(OSError, match="No space left"):
            await spool.append([make_entry(2, size=3000), make_entry(3, size=3000)])  # would also roll
        assert spool.depth_entries == 1 and spool.depth_bytes == frame_bytes([make_entry(1)])
        assert seg_files(tmp_path) == [segment_name(1)]
        await spool.append([make_entry(4)])
        assert [e for _, e in await read_all(spool)] == [make_entry(1), make_entry(4)]
        await spool.close()

    asyncio.run(main())
    assert _reopen_and_read(tmp_path) == [make_entry(1), make_entry(4)]


_CRASH_SCRIPT = """
import asyncio, os, random, signal, sys, threading
sys.path.insert(0, {repo!r})
from collector.spool import Spool
from tests.unit.test_spool import make_entry


def kill():
    os.kill(os.getpid(), signal.SIGKILL)


class TearingWriter:
    # Stands in for the segment file: the next write() gets half its bytes out, then the process dies.
    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[:len(data) // 2])
        self._f.flush()
        kill()

    def __getattr__(self, name):
        return getattr(self._f, name)


async def main(directory, mode, seed):
    rng = random.Random(seed)
    spool = Spool.open(directory, max_bytes=1 << 30, segment_bytes=(512 << 10) if mode == "timer" else (1 << 30))
    kill_after = rng.randint(20, 80)
    done = 0

    async def one(i):
        nonlocal done
        pos = await spool.append([make_entry(i, j, size=rng.randint(1000, 120_000)) for j in range(1 + i % 3)])
        os.write(1, f"{{i}} {{pos.segment}} {{pos.offset}}\\n".encode())
        done += 1
        if done == kill_after:  # appends are in flight: more were queued as soon as one completed
            if mode == "timer":  # SIGKILL from another thread at a random moment of the next commit
                threading.Timer(rng.random() * 0.03, kill).start()
            else:  # SIGKILL in the middle of the next commit's write()
                spool._w_file = TearingWriter(spool._w_file)
                threading.Timer(1.0, kill).start()

    tasks = set()
    i = 0
    while True:
        while len(tasks) < 24:
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.mark.parametrize(("mode", "seed"), [("timer", 1), ("timer", 2), ("mid_write", 3)])
def test_sigkill_loses_no_acknowledged_append(tmp_path: Path, mode: str, seed: int,
                                              caplog: pytest.LogCaptureFixture) -> None:
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(_CRASH_SCRIPT.format(repo=str(REPO))))
    directory = tmp_path / "spool"
    proc = subprocess.run([sys.executable, str(script), str(directory), mode, str(seed)], capture_output=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    acknowledged: dict[int, Position] = {}
    for line in proc.stdout.decode().splitlines(keepends=True):
        if line.endswith("\n"):
            i, segment, offset = map(int, line.split())
            acknowledged[i] = Position(segment, offset)
    assert len(acknowledged) >= 20

    async def check() -> None:
        spool = Spool.open(directory, max_bytes=1 << 30)  # recovery verifies every frame's crc
        found: dict[int, list[tuple[int, Position]]] = {}
        total = 0
        while items := await spool.read(200):
            for pos, data in items:
                i, j = check_entry(data)
                found.setdefault(i, []).append((j, pos))
            total += len(items)
            await spool.ack(items[-1][0])
        assert spool.empty
        await spool.close()
        for i, pos in acknowledged.items():
            assert [j for j, _ in found.get(i, [])] == list(range(1 + i % 3)), f"append {i} lost or torn"
            assert found[i][-1][1] == pos
        # Unacknowledged appends that survived are whole too: a torn append is cut, never half-kept.
        assert all([j for j, _ in parts] == list(range(1 + i % 3)) for i, parts in found.items())
        assert total == sum(len(parts) for parts in found.values())

    with caplog.at_level(logging.WARNING, logger="collector.spool"):
        asyncio.run(check())
    if mode == "mid_write":
        assert "cut a torn tail" in caplog.text
