"""A durable local spool: a segmented append-only log for records Kafka could not take.

The collector may answer Mixer only once a call's records are safe. When Kafka
does not acknowledge them in time, the records are appended here instead and
the call is answered once :meth:`Spool.append` returns, i.e. once they are on
disk (fsync'd). A drain task later reads them back oldest first, sends them to
Kafka and acknowledges them with :meth:`Spool.ack`. The spool is used from one
asyncio event loop; all blocking file work runs on the spool's own two worker
threads so the loop keeps serving gRPC calls while the disk works.

File format
===========

Everything lives in one folder:

``00000000000000000001.seg``, ``00000000000000000002.seg``, ...
    Segment files, named by a 20-digit, zero-padded segment number that only
    grows. Each is a plain concatenation of frames, no file header. Only the
    highest-numbered segment is ever written to, and only at its end (files
    are opened in append mode). A new segment is started before an append
    whose frames would push the current one past ``segment_bytes`` (a single
    append is never split, so one larger than ``segment_bytes`` gets a segment
    of its own), and before the first append after the spool was fully drained
    (so the consumed segment can be deleted at the next ack).

A frame (all integers big-endian)::

    offset  size  field
    0       4     magic        b"\\xa7SP1" (format version 1)
    4       4     crc          zlib.crc32 of bytes 8 .. end of payload
    8       4     length       bits 0-30: payload length in bytes; bit 31: set
                               on the last entry of an append
    12      8     batch_start  offset in this segment where the write batch
                               (one group commit) holding this frame began (u64)
    20      n     payload      the entry, opaque bytes

An append's frames are written with one ``write()`` into one segment, its last
frame flagged, so recovery can keep or drop an append as a whole.

``read.pos``
    The durable read position: everything before it has been acknowledged.
    24 bytes: magic ``b"\\xa7SPR"``, crc32 of the next 16 bytes, segment (u64),
    offset (u64). It is replaced atomically (write ``read.pos.tmp``, fsync,
    rename over ``read.pos``, fsync the folder), so a crash leaves either the
    old or the new position, never a torn one. Missing means "nothing
    acknowledged yet". Segments below its segment are fully consumed; a crash
    between writing it and deleting them only leaves files that the next
    :meth:`Spool.open` deletes.

A :class:`Position` ``(segment, offset)`` names the byte just after an entry's
frame; it is what :meth:`Spool.append` returns and what :meth:`Spool.ack`
takes.

Crash recovery
==============

A group commit writes its frames then fsyncs; the next commit starts writing
only after that fsync returned, and a segment is fsync'd before the next
segment receives a byte. So at any moment only the tail of the *last* segment,
written by the one commit in progress, can be damaged by a crash:

- SIGKILL mid-``write()`` leaves a prefix of the frames: a partial last frame.
- Power loss can also leave holes (zeros) *inside* the unsynced region, with
  intact frames after them, since the page cache is written back in any order.

:meth:`Spool.open` therefore checks every frame (magic, length within the file,
CRC) from the read position on. A bad frame in any segment but the last is
corruption (:class:`SpoolCorrupt`). A bad frame at offset ``X`` of the last
segment is a torn tail, unless some intact frame after ``X`` has
``batch_start > X``: such a frame belongs to a later commit, which started only
after the commit that wrote ``X`` was fsync'd, so ``X`` was durable and has
been damaged since: :class:`SpoolCorrupt`. A torn tail is cut (truncated and
logged with the number of bytes cut) back to the end of the last complete
append, so the intact leading entries of a torn append go too: that append
never returned, and its caller retries all of it. The one case this cannot
tell apart is damage to the very last, already acknowledged commit, which is
cut like a torn tail.

Entries whose commit failed (an fsync or write error, e.g. a full disk) are
undone: the segment is truncated back to where that commit started, so the
callers, who got the error, never see their entries drained later. An append
that was cancelled by its caller is still committed (it may already be on
disk); like any spooled entry it is drained to Kafka. Delivery is therefore
at-least-once: a crash between Kafka's acknowledgement of drained entries and
:meth:`Spool.ack` drains them again after the restart.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import itertools
import logging
import os
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from collector.errors import SpoolCorrupt, SpoolFull  # raised here; defined with the collector's other errors

log = logging.getLogger(__name__)

FRAME_MAGIC = b"\xa7SP1"
_FRAME = struct.Struct(">4sIIQ")  # magic, crc32, length | end-of-append flag, batch_start
_FRAME_META = struct.Struct(">IQ")  # length | flag, batch_start: the header bytes the crc covers
_END_OF_APPEND = 1 << 31
FRAME_OVERHEAD = _FRAME.size
"""Bytes a frame adds to its entry; :attr:`Spool.depth_bytes` counts them too."""
MAX_ENTRY_BYTES = _END_OF_APPEND - 1
"""31 bits of the length field hold the length."""

POSITION_MAGIC = b"\xa7SPR"
_POSITION = struct.Struct(">4sIQQ")  # magic, crc32 of the rest, segment, offset
POSITION_FILE = "read.pos"
POSITION_TEMP = "read.pos.tmp"
SEGMENT_SUFFIX = ".seg"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_MIN_IO_BUFFER = 64 << 10


@dataclass(frozen=True, order=True)
class Position:
    """A place in the spool: the byte just after an entry's frame.

    Ordered like the log: a later entry has a greater position.
    """

    segment: int
    offset: int

    def __str__(self) -> str:
        return f"{self.segment}:{self.offset}"


@dataclass
class _Append:
    """One waiting :meth:`Spool.append` call."""

    entries: list[bytes]
    frame_bytes: int
    future: asyncio.Future[Position]


@dataclass
class _Handed:
    """The entries the last :meth:`Spool.read` returned, so :meth:`Spool.ack` can count without disk I/O."""

    base: Position
    positions: list[Position] = field(default_factory=list)
    cumulative_bytes: list[int] = field(default_factory=list)


def segment_name(number: int) -> str:
    """The file name of segment ``number``, e.g. ``00000000000000000001.seg``."""
    return f"{number:020d}{SEGMENT_SUFFIX}"


def _fsync_dir(directory: Path) -> None:
    """Make created, renamed or deleted names in ``directory`` durable (a file's fsync does not)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(entries: Sequence[bytes], batch_start: int) -> bytes:
    """The frames of one append joined, so it costs one ``write()``; the last one is flagged."""
    parts: list[bytes] = []
    last = len(entries) - 1
    for n, entry in enumerate(entries):
        length_field = len(entry) | (_END_OF_APPEND if n == last else 0)
        crc = zlib.crc32(entry, zlib.crc32(_FRAME_META.pack(length_field, batch_start)))
        parts.append(_FRAME.pack(FRAME_MAGIC, crc, length_field, batch_start))
        parts.append(entry)
    return b"".join(parts)


def _check_frame(f: IO[bytes], offset: int, end: int, chunk_bytes: int) -> tuple[int, int, bool] | str:
    """Verify the frame at ``offset`` (``f`` is positioned there) without holding its payload.

    Returns:
        ``(frame_bytes, batch_start, ends_an_append)`` when the frame is
        intact, else why not. ``f`` is left just after an intact frame.
    """
    header = f.read(FRAME_OVERHEAD)
    if len(header) < FRAME_OVERHEAD:
        return f"incomplete frame header ({len(header)} of {FRAME_OVERHEAD} bytes)"
    magic, crc, length_field, batch_start = _FRAME.unpack(header)
    length = length_field & MAX_ENTRY_BYTES
    if magic != FRAME_MAGIC:
        return f"bad magic {magic!r}"
    if offset + FRAME_OVERHEAD + length > end:
        return f"frame of {length} payload bytes runs past the end of the file ({end} bytes)"
    actual = zlib.crc32(header[8:])
    left = length
    while left:
        chunk = f.read(min(left, chunk_bytes))
        if not chunk:
            return "file shrank while being read"
        actual = zlib.crc32(chunk, actual)
        left -= len(chunk)
    if actual != crc:
        return f"crc mismatch (stored {crc:#010x}, computed {actual:#010x})"
    return FRAME_OVERHEAD + length, batch_start, bool(length_field & _END_OF_APPEND)


def _find_magic(f: IO[bytes], start: int, end: int, chunk_bytes: int) -> int | None:
    """The offset of the next frame magic at or after ``start``, streaming in chunks."""
    pos = start
    while pos < end:
        f.seek(pos)
        chunk = f.read(min(chunk_bytes, end - pos))
        if not chunk:
            return None
        hit = chunk.find(FRAME_MAGIC)
        if hit >= 0:
            return pos + hit
        if pos + len(chunk) >= end:
            return None
        pos += len(chunk) - (len(FRAME_MAGIC) - 1)  # a magic may straddle two chunks
    return None


def _later_commit_after(f: IO[bytes], bad: int, end: int, chunk_bytes: int) -> int | None:
    """The offset of an intact frame after ``bad`` written by a later commit than the one at ``bad``.

    Such a frame proves the bytes at ``bad`` had been fsync'd (see the module
    docstring), so the damage is corruption rather than a torn tail.
    """
    pos = bad + 1
    while (hit := _find_magic(f, pos, end, chunk_bytes)) is not None:
        f.seek(hit)
        checked = _check_frame(f, hit, end, chunk_bytes)
        if isinstance(checked, str):
            pos = hit + 1
            continue
        frame_bytes, batch_start, _ = checked
        if batch_start > bad:
            return hit
        pos = hit + frame_bytes
    return None


def _read_position(path: Path) -> Position | None:
    """The durable read position, or None when nothing was ever acknowledged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != _POSITION.size:
        raise SpoolCorrupt(f"{path}: {len(data)} bytes, expected {_POSITION.size}")
    magic, crc, segment, offset = _POSITION.unpack(data)
    if magic != POSITION_MAGIC or zlib.crc32(data[8:]) != crc:
        # Written by atomic rename, so a crash cannot tear it: this is damage.
        raise SpoolCorrupt(f"{path}: bad magic or crc")
    return Position(segment, offset)


async def _wait_done(fut: asyncio.Future[Any]) -> bool:
    """Wait until a worker-thread job finished, even if the waiting task is cancelled meanwhile.

    A thread cannot be interrupted: returning early would let the next job
    (or :meth:`Spool.close`) touch the same files concurrently, and lose the
    job's outcome. Returns whether cancellation was requested, so the caller
    can record the outcome first and then raise ``CancelledError``.
    """
    cancelled = False
    while not fut.done():
        try:
            await asyncio.wait((fut,))
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


class Spool:
    """A durable FIFO of opaque entries on local disk, with group-committed appends.

    Create it with :meth:`open`. Not thread-safe: use it from one event loop.
    See the module docstring for the file format and crash semantics.
    """

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int, fsync_interval_s: float,
                 io_buffer_bytes: int, segments: dict[int, int], read_pos: Position, depth_entries: int,
                 depth_bytes: int) -> None:
        """Internal: use :meth:`open`, which recovers the folder and computes these."""
        self._dir = directory
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._fsync_interval_s = fsync_interval_s
        self._io_buffer_bytes = io_buffer_bytes
        # Loop-side state: durable segment sizes (live segments, ascending), what has been acknowledged,
        # and what is held. Only the event loop touches these.
        self._segments = segments
        last = max(segments)
        self._durable = Position(last, segments[last])
        self._read_pos = read_pos
        self._depth_entries = depth_entries
        self._depth_bytes = depth_bytes
        self._pending: list[_Append] = []
        self._committer: asyncio.Task[None] | None = None
        self._last_commit_start = float("-inf")
        self._read_lock = asyncio.Lock()
        self._handed = _Handed(read_pos)
        self._closed = False
        # Writer state: touched only by the one commit job running on a worker thread (or by open/close).
        self._w_seg = last
        self._w_size = segments[last]
        self._w_file: IO[bytes] = open(self._segment_path(last), "ab", buffering=io_buffer_bytes)  # noqa: SIM115
        self._w_epoch = 0  # bumped when a failed commit is undone, so the reader drops stale buffers
        self._broken: BaseException | None = None
        # Reader state: touched only by the read/ack job running under _read_lock.
        self._reader: tuple[int, int, IO[bytes]] | None = None  # segment, writer epoch, file
        # Two workers: one commit job and one read/ack job can run at once; neither kind overlaps itself.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="spool")

    # -- opening and recovery -------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path | str, *, max_bytes: int, segment_bytes: int = 64 << 20,
             fsync_interval_s: float = 0.002, io_buffer_bytes: int = 1 << 20) -> Spool:
        """Open (creating if needed) the spool in ``directory`` and recover it after any crash.

        Blocking: call it at startup, before serving. Verifies every frame from
        the durable read position on, cuts a torn tail off the last segment
        (logging how many bytes), deletes segments a previous run had fully
        acknowledged, and counts what is left.

        Args:
            directory: the spool's folder; created with parents if missing.
            max_bytes: limit on unacknowledged bytes (entries plus
                :data:`FRAME_OVERHEAD` each). Disk use can exceed it by up to
                one segment of already-acknowledged entries awaiting deletion.
            segment_bytes: size at which a new segment file is started. Smaller
                segments free disk sooner as the spool drains; larger ones mean
                fewer files.
            fsync_interval_s: minimum time between the starts of two group
                commits. An isolated append is committed at once; under load,
                appends arriving within the interval share one fsync, which
                caps the fsync rate on disks where fsync is cheap (on slow
                disks the fsync itself already batches the arrivals). 0: no cap.
            io_buffer_bytes: buffer size of the segment files and of recovery's
                streaming reads; bounds the memory used per file.

        Raises:
            SpoolCorrupt: damage other than a torn tail (see the module docstring).
            ValueError: a nonsensical argument.
        """
        if max_bytes <= 0 or segment_bytes <= 0 or fsync_interval_s < 0 or io_buffer_bytes < _MIN_IO_BUFFER:
            raise ValueError(f"bad spool settings: max_bytes={max_bytes}, segment_bytes={segment_bytes}, "
                             f"fsync_interval_s={fsync_interval_s}, io_buffer_bytes={io_buffer_bytes} "
                             f"(minimum {_MIN_IO_BUFFER})")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / POSITION_TEMP).unlink(missing_ok=True)
        names_changed = False

        numbers = sorted(int(m.group(1)) for name in os.listdir(directory) if (m := _SEGMENT_NAME.match(name)))
        read_pos = _read_position(directory / POSITION_FILE) or Position(numbers[0] if numbers else 1, 0)
        for number in numbers:
            if number < read_pos.segment:  # fully acknowledged; the previous run died before deleting it
                (directory / segment_name(number)).unlink()
                names_changed = True
                log.info("spool: deleted acknowledged segment %s left by a previous run", segment_name(number))
        live = [n for n in numbers if n >= read_pos.segment]
        for a, b in itertools.pairwise(live):
            if b != a + 1:
                raise SpoolCorrupt(f"{directory}: segment {segment_name(a + 1)} is missing "
                                   f"(found {segment_name(a)} and {segment_name(b)})")
        if not live:
            # Nothing left. If the read position points into a deleted segment, entries before its offset
            # are consumed: the next segment must get a higher number, or new entries would look consumed.
            first = read_pos.segment + (1 if read_pos.offset > 0 else 0)
            with open(directory / segment_name(first), "ab"):
                pass
            names_changed = True
            live = [first]
        if live[0] != read_pos.segment:  # the read segment was consumed and deleted
            read_pos = Position(live[0], 0)

        segments: dict[int, int] = {}
        depth_entries = depth_bytes = 0
        for number in live:
            start = read_pos.offset if number == read_pos.segment else 0
            end, entries = cls._recover_segment(directory / segment_name(number), start,
                                                last=number == live[-1], chunk_bytes=io_buffer_bytes)
            segments[number] = end
            depth_entries += entries
            depth_bytes += end - start
        if names_changed:
            _fsync_dir(directory)
        if depth_entries:
            log.info("spool %s: recovered %d unacknowledged entries (%d bytes) in %d segment(s)",
                     directory, depth_entries, depth_bytes, len(segments))
        return cls(directory, max_bytes=max_bytes, segment_bytes=segment_bytes, fsync_interval_s=fsync_interval_s,
                   io_buffer_bytes=io_buffer_bytes, segments=segments, read_pos=read_pos,
                   depth_entries=depth_entries, depth_bytes=depth_bytes)

    @staticmethod
    def _recover_segment(path: Path, start: int, *, last: bool, chunk_bytes: int) -> tuple[int, int]:
        """Verify the frames of one segment from ``start``; cut a torn tail off the last segment.

        Returns:
            The segment's (possibly truncated) size and how many entries lie after ``start``.
        """
        size = path.stat().st_size
        if start > size:
            raise SpoolCorrupt(f"{path}: the read position {start} lies beyond the end of the file ({size} bytes)")
        entries = kept_entries = 0
        offset = kept = start  # kept: the end of the last complete append (the read position is a safe one)
        with open(path, "rb", buffering=chunk_bytes) as f:
            f.seek(start)
            reason = "the last append's final frame is missing"
            while offset < size:
                checked = _check_frame(f, offset, size, chunk_bytes)
                if isinstance(checked, str):
                    reason = checked
                    break
                offset += checked[0]
                entries += 1
                if checked[2]:
                    kept, kept_entries = offset, entries
            if kept == size:
                return size, entries
            problem = (f"bad frame at offset {offset}: {reason}" if offset < size
                       else f"the append at offset {kept} lacks its final frame")
            if not last:
                raise SpoolCorrupt(f"{path}: {problem}; this segment is not the last, so it was complete and fsync'd")
            if offset < size:
                later = _later_commit_after(f, offset, size, chunk_bytes)
                if later is not None:
                    raise SpoolCorrupt(f"{path}: {problem}; an intact frame of a later commit at offset {later} "
                                       "shows it had been fsync'd")
        with open(path, "r+b") as f:
            f.truncate(kept)
            f.flush()
            os.fsync(f.fileno())
        log.warning("spool: cut a torn tail of %d bytes off %s at offset %d (%s): a crash interrupted a write that "
                    "had not been acknowledged", size - kept, path, kept, problem)
        return kept, kept_entries

    # -- state ------------------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The spool's folder."""
        return self._dir

    @property
    def max_bytes(self) -> int:
        """The limit on :attr:`depth_bytes`."""
        return self._max_bytes

    @property
    def depth_entries(self) -> int:
        """Unacknowledged entries, including those of appends still waiting for their fsync.

        Counting appends in flight makes :attr:`empty` false as soon as the
        first entry is handed over, so a caller that routes by "is the spool
        empty?" keeps later calls behind earlier ones.
        """
        return self._depth_entries

    @property
    def depth_bytes(self) -> int:
        """Unacknowledged bytes, each entry counted with its :data:`FRAME_OVERHEAD`; appends in flight included."""
        return self._depth_bytes

    @property
    def empty(self) -> bool:
        """Whether every entry ever appended has been acknowledged."""
        return self._depth_entries == 0

    def _segment_path(self, number: int) -> Path:
        return self._dir / segment_name(number)

    # -- appending --------------------------------------------------------------------------------------

    async def append(self, entries: Sequence[bytes]) -> Position:
        """Append ``entries`` in order; return once they are durable.

        Appends of concurrent callers share one fsync (group commit). The write
        and fsync run on a worker thread; at most one commit is in flight, and
        an append arriving while one is in flight waits for the next.

        Returns:
            The position just after the last entry. Positions of later appends
            compare greater. With no entries: the end of the durable data.

        Raises:
            SpoolFull: the entries do not fit under ``max_bytes`` (nothing is written).
            OSError: the commit failed (e.g. disk full); it was undone, nothing
                of this append will be read back.
            RuntimeError: the spool is closed.
        """
        if self._closed:
            raise RuntimeError("the spool is closed")
        if self._broken is not None:
            raise OSError(f"the spool is unusable since an I/O error could not be undone ({self._broken!r}); "
                          "reopen it") from self._broken
        items = [e if type(e) is bytes else bytes(e) for e in entries]
        if not items:
            return self._durable
        frame_bytes = sum(map(len, items)) + FRAME_OVERHEAD * len(items)
        if self._depth_bytes + frame_bytes > self._max_bytes:
            if frame_bytes > self._max_bytes:
                message = (f"an append of {frame_bytes} bytes ({len(items)} entries, framing included) can never "
                           f"fit in a spool of max_bytes={self._max_bytes}")
            else:
                message = (f"spool full: {self._depth_bytes} bytes held + {frame_bytes} new > "
                           f"max_bytes={self._max_bytes}")
            raise SpoolFull(message, depth_bytes=self._depth_bytes, requested_bytes=frame_bytes,
                            max_bytes=self._max_bytes)
        if max(map(len, items)) > MAX_ENTRY_BYTES:
            raise ValueError(f"an entry is larger than the frame format's {MAX_ENTRY_BYTES} bytes")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Position] = loop.create_future()
        self._pending.append(_Append(items, frame_bytes, future))
        self._depth_entries += len(items)
        self._depth_bytes += frame_bytes
        if self._committer is None:
            # Started as a task, it first runs after every append of this loop iteration has queued.
            self._committer = loop.create_task(self._commit_loop(), name="spool-commit")
        return await future

    async def _commit_loop(self) -> None:
        """Commit queued appends, one write+fsync job at a time, until none are left."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending and self._broken is None:
                wait = self._last_commit_start + self._fsync_interval_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # appends arriving meanwhile join this commit
                batch, self._pending = self._pending, []
                fully_drained = self._read_pos >= self._durable and self._durable.offset > 0
                self._last_commit_start = loop.time()
                job = loop.run_in_executor(self._executor, self._write_batch,
                                           [a.entries for a in batch], [a.frame_bytes for a in batch], fully_drained)
                cancelled = await _wait_done(job)
                error = job.exception()
                if error is None:
                    positions, sizes = job.result()
                    self._segments.update(sizes)
                    last = max(sizes)
                    self._durable = Position(last, sizes[last])
                    for a, position in zip(batch, positions):
                        if not a.future.done():
                            a.future.set_result(position)
                else:
                    self._fail(batch, error)
                if cancelled:
                    raise asyncio.CancelledError
        finally:
            self._committer = None
            if self._pending:  # broken, or the loop is shutting down
                pending, self._pending = self._pending, []
                self._fail(pending, self._broken or RuntimeError("the spool's commit task was cancelled"))

    def _fail(self, appends: list[_Append], error: BaseException) -> None:
        """Give ``error`` to appends whose entries will never be read back, and release their space."""
        for a in appends:
            self._depth_entries -= len(a.entries)
            self._depth_bytes -= a.frame_bytes
            if not a.future.done():
                a.future.set_exception(error)

    def _write_batch(self, batch: list[list[bytes]], frame_bytes: list[int],
                     fully_drained: bool) -> tuple[list[Position], dict[int, int]]:
        """Worker thread: write the appends of one group commit, fsync, and report where each ended.

        Returns:
            Each append's end position, and the new durable size of every segment written.
        """
        start_seg, start_size = self._w_seg, self._w_size
        created: list[int] = []
        sizes: dict[int, int] = {}
        positions: list[Position] = []
        batch_start = self._w_size
        roll_first = fully_drained
        try:
            for entries, size in zip(batch, frame_bytes):
                if self._w_size > 0 and (roll_first or self._w_size + size > self._segment_bytes):
                    sizes[self._w_seg] = self._w_size
                    self._roll()
                    created.append(self._w_seg)
                    batch_start = 0
                    roll_first = False
                self._w_file.write(_encode(entries, batch_start))
                self._w_size += size
                positions.append(Position(self._w_seg, self._w_size))
            self._w_file.flush()
            os.fsync(self._w_file.fileno())
            if created:
                _fsync_dir(self._dir)
        except BaseException:
            self._undo(start_seg, start_size, created)
            raise
        sizes[self._w_seg] = self._w_size
        return positions, sizes

    def _roll(self) -> None:
        """Worker thread: make the current segment durable, then start the next one.

        The old segment is fsync'd before the new one gets a byte, so only the
        last segment can ever hold a torn tail.
        """
        self._w_file.flush()
        os.fsync(self._w_file.fileno())
        self._w_file.close()
        number = self._w_seg + 1
        fd = os.open(self._segment_path(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._w_file = os.fdopen(fd, "ab", buffering=self._io_buffer_bytes)
        self._w_seg, self._w_size = number, 0

    def _undo(self, seg: int, size: int, created: list[int]) -> None:
        """Worker thread: after a failed commit, put the files back as they were before it.

        Otherwise the failed commit's bytes (whose callers got an error) could
        be read back, or, if garbage, would sit in front of the next commit and
        look like corruption at the next open. If this fails too, the spool
        refuses further appends until it is reopened (recovery then cuts the
        tail).
        """
        try:
            # Closing the raw file first makes the buffered writer drop, not flush, what it still holds.
            self._w_file.raw.close()  # type: ignore[attr-defined]  # IO[bytes] does not declare .raw; it is a BufferedWriter
            for number in created:
                self._segment_path(number).unlink(missing_ok=True)
            path = self._segment_path(seg)
            os.truncate(path, size)
            self._w_file = open(path, "ab", buffering=self._io_buffer_bytes)  # noqa: SIM115
            self._w_seg, self._w_size = seg, size
            self._w_epoch += 1
            os.fsync(self._w_file.fileno())
            if created:
                _fsync_dir(self._dir)
            log.warning("spool: a commit failed; undid it (segment %s back to %d bytes)", segment_name(seg), size)
        except BaseException as exc:  # noqa: BLE001 - recorded; appends now fail until reopen
            self._broken = exc
            log.error("spool: could not undo a failed commit (%r); appends fail until the spool is reopened", exc)

    # -- reading and acknowledging -------------------------------------------------------------------------

    async def read(self, max_entries: int, max_bytes: int = 16 << 20) -> list[tuple[Position, bytes]]:
        """The oldest unacknowledged durable entries, in append order, without consuming them.

        Reading twice without :meth:`ack` returns the same entries. Entries are
        streamed from the segment files; only the returned ones are in memory.

        Args:
            max_entries: at most this many entries.
            max_bytes: stop before the payloads would exceed this many bytes
                (but always return at least one entry when there is one, or an
                entry larger than this would stall the drain forever).

        Returns:
            ``(position, entry)`` pairs; pass the last position to :meth:`ack`.

        Raises:
            SpoolCorrupt: a frame no longer verifies.
        """
        if self._closed:
            raise RuntimeError("the spool is closed")
        if max_entries <= 0:
            return []
        async with self._read_lock:
            start = self._read_pos
            job = asyncio.get_running_loop().run_in_executor(
                self._executor, self._read_blocking, start, dict(self._segments), max_entries, max_bytes)
            cancelled = await _wait_done(job)
            result = job.result()
            if cancelled:
                raise asyncio.CancelledError
            handed = _Handed(start)
            total = 0
            for position, entry in result:
                total += len(entry) + FRAME_OVERHEAD
                handed.positions.append(position)
                handed.cumulative_bytes.append(total)
            self._handed = handed
            return result

    def _reader_for(self, segment: int) -> IO[bytes]:
        """Worker thread: the cached read handle on ``segment``.

        Reused across reads so a drain reading sequentially hits the buffer;
        replaced when a failed commit was undone, since bytes it buffered past
        the durable end may since have been truncated and rewritten.
        """
        if self._reader is not None:
            number, epoch, f = self._reader
            if number == segment and epoch == self._w_epoch:
                return f
            f.close()
            self._reader = None
        f = open(self._segment_path(segment), "rb", buffering=self._io_buffer_bytes)  # noqa: SIM115
        self._reader = (segment, self._w_epoch, f)
        return f

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader[2].close()
            self._reader = None

    def _read_blocking(self, start: Position, ends: dict[int, int], max_entries: int,
                       max_bytes: int) -> list[tuple[Position, bytes]]:
        """Worker thread: read durable entries from ``start`` (``ends``: durable size per segment)."""
        out: list[tuple[Position, bytes]] = []
        total = 0
        segment, offset = start.segment, start.offset
        while len(out) < max_entries:
            end = ends[segment]
            if offset >= end:
                if segment + 1 not in ends:
                    break
                segment, offset = segment + 1, 0
                continue
            f = self._reader_for(segment)
            f.seek(offset)
            header = f.read(FRAME_OVERHEAD)
            where = f"{self._segment_path(segment)} at offset {offset}"
            if len(header) < FRAME_OVERHEAD:
                raise SpoolCorrupt(f"{where}: incomplete frame header inside durable data")
            magic, crc, length_field, _ = _FRAME.unpack(header)
            length = length_field & MAX_ENTRY_BYTES
            if magic != FRAME_MAGIC or offset + FRAME_OVERHEAD + length > end:
                raise SpoolCorrupt(f"{where}: bad frame header inside durable data")
            if out and total + length > max_bytes:
                break
            payload = f.read(length)
            if len(payload) != length or zlib.crc32(payload, zlib.crc32(header[8:])) != crc:
                raise SpoolCorrupt(f"{where}: crc mismatch inside durable data")
            offset += FRAME_OVERHEAD + length
            out.append((Position(segment, offset), payload))
            total += length
        return out

    async def ack(self, upto: Position) -> None:
        """Mark everything up to and including the entry ending at ``upto`` as consumed.

        Persists the read position durably (atomic replace of ``read.pos``)
        before returning, then deletes segment files that are entirely
        consumed. Acknowledging a position already acknowledged is a no-op, so a
        drain that retries after an error is harmless.

        Raises:
            ValueError: ``upto`` is past the durable data or not the end of an entry.
        """
        if self._closed:
            raise RuntimeError("the spool is closed")
        async with self._read_lock:
            start = self._read_pos
            if upto <= start:
                return
            if upto > self._durable or upto.segment not in self._segments:
                raise ValueError(f"cannot acknowledge {upto}: the durable data ends at {self._durable}")
            counted = self._count_from_handed(upto)
            from_handed = counted is not None
            if counted is None:  # not from the last read (e.g. after a restart): walk the frame headers
                job = asyncio.get_running_loop().run_in_executor(
                    self._executor, self._count_frames, start, upto, dict(self._segments))
                cancelled = await _wait_done(job)
                counted = job.result()
                if cancelled:
                    raise asyncio.CancelledError
            entries, nbytes = counted
            # Skip over fully consumed segments that are final (a later one exists), so they can go.
            new_pos = upto
            while new_pos.offset >= self._segments[new_pos.segment] and new_pos.segment + 1 in self._segments:
                new_pos = Position(new_pos.segment + 1, 0)
            doomed = [n for n in self._segments if n < new_pos.segment]
            # Update memory first: Kafka has these entries, so even if persisting fails they must not be
            # drained again by this process (after a restart they would be, which is only a duplicate).
            self._read_pos = new_pos
            self._depth_entries -= entries
            self._depth_bytes -= nbytes
            for n in doomed:
                del self._segments[n]
            self._handed = self._trim_handed(upto, new_pos) if from_handed else _Handed(new_pos)
            persisted: asyncio.Future[None] = asyncio.get_running_loop().run_in_executor(
                self._executor, self._persist, new_pos, doomed)
            cancelled = await _wait_done(persisted)
            persisted.result()
            if cancelled:
                raise asyncio.CancelledError

    def _count_from_handed(self, upto: Position) -> tuple[int, int] | None:
        """Entries and bytes from the read position to ``upto``, if the last read returned ``upto``."""
        h = self._handed
        if h.base != self._read_pos:
            return None
        i = bisect.bisect_left(h.positions, upto)
        if i == len(h.positions) or h.positions[i] != upto:
            return None
        return i + 1, h.cumulative_bytes[i]

    def _trim_handed(self, upto: Position, new_pos: Position) -> _Handed:
        """The rest of the last read, rebased on ``new_pos``, so a partial ack leaves it countable.

        Only valid when ``upto`` was one of the handed positions.
        """
        h = self._handed
        i = bisect.bisect_right(h.positions, upto)
        done = h.cumulative_bytes[i - 1]
        return _Handed(new_pos, h.positions[i:], [c - done for c in h.cumulative_bytes[i:]])

    def _count_frames(self, start: Position, upto: Position, ends: dict[int, int]) -> tuple[int, int]:
        """Worker thread: walk frame headers from ``start`` to ``upto``; count entries and bytes."""
        entries = nbytes = 0
        segment, offset = start.segment, start.offset
        while Position(segment, offset) < upto:
            if offset >= ends[segment]:
                segment, offset = segment + 1, 0
                continue
            f = self._reader_for(segment)
            f.seek(offset)
            header = f.read(FRAME_OVERHEAD)
            if len(header) < FRAME_OVERHEAD or header[:4] != FRAME_MAGIC:
                raise SpoolCorrupt(f"{self._segment_path(segment)} at offset {offset}: bad frame header")
            frame_bytes = FRAME_OVERHEAD + (_FRAME.unpack(header)[2] & MAX_ENTRY_BYTES)
            offset += frame_bytes
            entries += 1
            nbytes += frame_bytes
        if Position(segment, offset) != upto:
            raise ValueError(f"cannot acknowledge {upto}: not the end of an entry")
        return entries, nbytes

    def _persist(self, pos: Position, doomed: list[int]) -> None:
        """Worker thread: durably replace ``read.pos``, then delete consumed segments.

        Order matters: were a segment deleted first, a crash could leave a read
        position pointing before entries that no longer exist.
        """
        body = _POSITION.pack(POSITION_MAGIC, 0, pos.segment, pos.offset)[8:]
        data = POSITION_MAGIC + struct.pack(">I", zlib.crc32(body)) + body
        temp = self._dir / POSITION_TEMP
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self._dir / POSITION_FILE)
        _fsync_dir(self._dir)
        if self._reader is not None and self._reader[0] in doomed:
            self._close_reader()
        for number in doomed:
            # A crash before the unlink is harmless: open() deletes segments below the read position.
            self._segment_path(number).unlink(missing_ok=True)

    # -- closing -----------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Let queued appends commit, wait for any read/ack, close the files. Idempotent."""
        if self._closed:
            return
        self._closed = True
        committer = self._committer
        if committer is not None:
            await asyncio.wait((committer,))
        async with self._read_lock:
            self._close_reader()
            if not self._w_file.closed:
                self._w_file.close()
        self._executor.shutdown(wait=False)
