"""Kafka record values -> numpy columns, many records per chunk.

The pipeline reads only the columns it aggregates (``AGGREGATED_COLUMNS``)
and writes them straight into growing numpy buffers: string columns arrive
dictionary-encoded (``StringColumn``), so a record costs one dictionary lookup
per distinct value, and numeric columns are copied from their packed wire
form. No Python object is made per event.

Two builders with one interface:
- ``pipeline._columns.CompiledChunkBuilder`` (Cython) walks the wire format;
  on anything it does not handle exactly (a column repeated where protobuf
  would merge, a group) it falls back to the protobuf runtime for that record;
- :class:`ChunkBuilder` here, the reference, parses with the protobuf runtime.
tests/unit/test_pipeline_decode.py checks they agree, with hypothesis.

:func:`pipeline.builders.new_builder` picks the compiled one (this module must not import it:
``pipeline._columns`` builds on the types defined here).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from google.protobuf.message import DecodeError

from pipeline.errors import PoisonRecord  # raised here (and by pipeline._columns); defined with the pipeline's errors
from schemas.apim.usage.v1 import usage_event_columns_pb2 as cols_pb

log = logging.getLogger(__name__)

STRING, INT, DOUBLE, BOOL, INT32 = 0, 1, 2, 3, 4  # INT32: int32/enum on the wire, int64 in the chunk
MAX_EVENTS_PER_RECORD = 1_000_000


class ColumnSpec(NamedTuple):
    name: str
    number: int
    kind: int


def _spec(name: str) -> ColumnSpec:
    fd = cols_pb.UsageEventColumns.DESCRIPTOR.fields_by_name[name]
    if fd.message_type is not None:
        kind = STRING
    elif fd.type == fd.TYPE_DOUBLE:
        kind = DOUBLE
    elif fd.type == fd.TYPE_BOOL:
        kind = BOOL
    elif fd.type in (fd.TYPE_INT32, fd.TYPE_ENUM):
        kind = INT32
    else:
        kind = INT
    return ColumnSpec(name, fd.number, kind)


AGGREGATED_COLUMNS: tuple[ColumnSpec, ...] = tuple(_spec(n) for n in (
    "event_id", "call_index", "request_timestamp_ms",
    "api_name", "api_version", "api_context", "api_resource_template", "api_resource_path", "api_method",
    "api_creator", "api_creator_tenant_domain", "api_id",
    "application_id", "application_name", "application_owner", "key_type", "subscription_tier",
    "application_tier", "user_name", "destination",
    "response_code", "throttled_out", "fault", "response_latency_ms", "backend_latency_ms",
    "request_size_bytes", "response_size_bytes",
))

_DTYPES = {INT: np.int64, INT32: np.int64, DOUBLE: np.float64, BOOL: np.bool_}


@dataclass
class Chunk:
    """Decoded events as columns. Strings: (codes, values) with values[codes[i]] the event's value;
    code 0 is always the empty string."""

    n: int
    numbers: dict[str, np.ndarray]
    strings: dict[str, tuple[np.ndarray, list[str]]]

    def string(self, name: str) -> np.ndarray:
        """A string column materialised as an object array (tests and tools; aggregation uses codes)."""
        codes, values = self.strings[name]
        return np.asarray(values, dtype=object)[codes]


def concat_chunks(parts: Sequence[tuple[Chunk, np.ndarray | None]]) -> Chunk:
    """Several chunks (each with its keep mask, None: keep all) as one: the kept events, string codes remapped
    onto one dictionary per column. Why: the streaming job aggregates the few small chunks of a commit at
    once, because aggregating one costs tens of milliseconds whatever its size."""
    numbers: dict[str, list[np.ndarray]] = {}
    strings: dict[str, tuple[list[np.ndarray], dict[str, int]]] = {}
    n = 0
    for chunk, keep in parts:
        n += chunk.n if keep is None else int(keep.sum())
        for name, values in chunk.numbers.items():
            numbers.setdefault(name, []).append(values if keep is None else values[keep])
        for name, (codes, texts) in chunk.strings.items():
            pieces, index = strings.setdefault(name, ([], {"": 0}))
            lut = np.fromiter((index.setdefault(t, len(index)) for t in texts), np.int32, len(texts))
            pieces.append(lut[codes if keep is None else codes[keep]])
    return Chunk(n=n, numbers={k: np.concatenate(v) for k, v in numbers.items()},
                 strings={k: (np.concatenate(p), list(index)) for k, (p, index) in strings.items()})


def message_columns(value: bytes, spec: Sequence[ColumnSpec]) -> tuple[int, str, dict[str, list]]:
    """The reference decode: (count, call id, {column: values per event}) with the protobuf runtime.

    Raises:
        PoisonRecord: undecodable bytes or inconsistent columns.
    """
    try:
        batch = cols_pb.UsageEventColumns.FromString(value)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise PoisonRecord(f"not a UsageEventColumns batch: {str(exc)[:120]}") from exc
    n = batch.count
    if n < 0 or n > MAX_EVENTS_PER_RECORD:
        raise PoisonRecord(f"event count {n} out of range")
    out: dict[str, list] = {}
    for col in spec:
        if col.kind == STRING:
            sc = getattr(batch, col.name)
            codes, values = list(sc.codes), list(sc.values)
            if not codes and not values:
                continue
            if any(c >= len(values) for c in codes):
                raise PoisonRecord(f"column {col.name} has a code beyond its {len(values)} values")
            column = [values[c] for c in codes]
        else:
            column = list(getattr(batch, col.name))
            if not column:
                continue
        if len(column) != n:
            raise PoisonRecord(f"column {col.name} has {len(column)} entries, the batch has {n}")
        out[col.name] = column
    return n, batch.header.call_id, out


class ChunkBuilder:
    """Reference builder: appends records' columns into numpy buffers (see module docstring).

    ``add`` decodes a record into a pending region and returns (count, call
    id); ``accept`` keeps it (a caller that finds the call already counted
    simply does not accept, and the next ``add`` overwrites it); ``take``
    returns the accepted events and starts a new chunk.
    """

    compiled = False

    def __init__(self, spec: Sequence[ColumnSpec] = AGGREGATED_COLUMNS, capacity: int = 1 << 16) -> None:
        self.spec = tuple(spec)
        self._capacity = capacity
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self._pending = 0
        self._numbers: dict[str, np.ndarray] = {
            c.name: np.zeros(self._capacity, _DTYPES[c.kind]) for c in self.spec if c.kind != STRING}
        self._codes = {c.name: np.zeros(self._capacity, np.int32) for c in self.spec if c.kind == STRING}
        self._index: dict[str, dict[str, int]] = {c.name: {"": 0} for c in self.spec if c.kind == STRING}

    def _ensure(self, size: int) -> None:
        if size <= self._capacity:
            return
        cap = self._capacity
        while cap < size:
            cap *= 2
        for d in (self._numbers, self._codes):
            for name, arr in d.items():
                grown = np.zeros(cap, arr.dtype)
                grown[:self.n] = arr[:self.n]
                d[name] = grown
        self._capacity = cap

    def add(self, value: bytes | None) -> tuple[int, str]:
        if value is None:
            raise PoisonRecord("empty record")
        n, call_id, columns = message_columns(value, self.spec)
        self._put(n, columns)
        return n, call_id

    def _put(self, n: int, columns: dict[str, list]) -> None:
        self._ensure(self.n + n)
        lo, hi = self.n, self.n + n
        for c in self.spec:
            values = columns.get(c.name)
            if c.kind == STRING:
                index = self._index[c.name]
                self._codes[c.name][lo:hi] = [index.setdefault(v, len(index)) for v in values] if values else 0
            else:
                self._numbers[c.name][lo:hi] = values if values else 0
        self._pending = n

    def accept(self) -> None:
        self.n += self._pending
        self._pending = 0

    def take(self) -> Chunk:
        n = self.n
        chunk = Chunk(
            n=n,
            numbers={k: v[:n].copy() for k, v in self._numbers.items()},
            strings={k: (v[:n].copy(), list(self._index[k])) for k, v in self._codes.items()},
        )
        self._reset()
        return chunk
