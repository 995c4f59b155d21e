# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled record decoder for the pipeline: UsageEventColumns bytes -> numpy buffers.

Same interface and results as pipeline.decode.ChunkBuilder (the reference,
protobuf runtime). This one walks the wire format itself and writes packed
columns straight into the chunk's buffers; string columns cost one dictionary
lookup per distinct value per record. Anything it does not handle exactly
(malformed bytes, a StringColumn given twice, which protobuf would merge,
groups) raises Unsupported internally and that record is decoded by the
reference instead, so both accept and reject the same records.
"""

from libc.stdint cimport uint64_t, int64_t, int32_t, uint8_t
from libc.string cimport memcpy, memset
from cpython.unicode cimport PyUnicode_DecodeUTF8

import numpy as np

from pipeline import decode as _decode
from pipeline.decode import MAX_EVENTS_PER_RECORD, Chunk, PoisonRecord, message_columns
from schemas.apim.usage.v1 import usage_event_columns_pb2 as _cols_pb

# Column kinds as C constants (comparing a C int with a Python-level constant costs a Python call).
cdef enum:
    STRING = 0
    INT = 1
    DOUBLE = 2
    BOOL = 3
    INT32 = 4

assert (_decode.STRING, _decode.INT, _decode.DOUBLE, _decode.BOOL, _decode.INT32) == (0, 1, 2, 3, 4)

DEF MAX_FIELD = 1003
DEF MAX_SLOTS = 64
DEF COUNT_FIELD = 1000
DEF HEADER_FIELD = 1001
# How a declared UsageEventColumns field outside the spec is checked when skipped: protobuf parses
# (and validates) every declared field, so skipping one unchecked would accept records it rejects.
DEF SKIP_UNKNOWN = 0
DEF SKIP_STRINGS = 1
DEF SKIP_VARINTS = 2
DEF SKIP_DOUBLES = 3


class Unsupported(ValueError):
    """Left to the reference decoder."""


cdef inline uint64_t _varint(const unsigned char* buf, Py_ssize_t* pos, Py_ssize_t end) except? 0xFFFFFFFFFFFFFFFF:
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if pos[0] >= end or shift > 63:
            raise Unsupported("truncated varint")
        b = buf[pos[0]]
        pos[0] += 1
        result |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            return result
        shift += 7


cdef inline Py_ssize_t _skip(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end, uint64_t tag) except -1:
    cdef uint64_t n
    cdef int wire = <int>(tag & 7)
    if (tag >> 3) == 0 or (tag >> 3) > 536870911:
        raise Unsupported("field number out of range")
    if wire == 0:
        _varint(buf, &pos, end)
    elif wire == 1:
        pos += 8
    elif wire == 2:
        n = _varint(buf, &pos, end)
        if n > <uint64_t>(end - pos):
            raise Unsupported("truncated field")
        pos += <Py_ssize_t>n
    elif wire == 5:
        pos += 4
    else:
        raise Unsupported("groups or bad wire type")
    if pos > end:
        raise Unsupported("truncated field")
    return pos


cdef int _check_utf8(const unsigned char* p, Py_ssize_t n) except -1:
    """Raises UnicodeDecodeError (the caller falls back) when protobuf would reject the string."""
    cdef Py_ssize_t i = 0
    cdef uint64_t word, seen = 0
    while i + 8 <= n:  # ASCII test a word at a time, no early exit (vectorisable)
        memcpy(&word, p + i, 8)
        seen |= word
        i += 8
    while i < n:
        seen |= p[i]
        i += 1
    if seen & 0x8080808080808080ULL:
        PyUnicode_DecodeUTF8(<const char*>p, n, "strict")
    return 0


cdef int _check_skipped(int how, const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end) except -1:
    """Validate a length-delimited declared field the spec does not read, as protobuf would parse it."""
    cdef uint64_t tag, length
    cdef int run = 0
    if how == SKIP_DOUBLES:
        if (end - pos) % 8:
            raise Unsupported("packed doubles not a multiple of 8 bytes")
    elif how == SKIP_VARINTS:  # whole varints of at most 10 bytes, as _varint reads them
        while pos < end:
            run = run + 1 if buf[pos] & 0x80 else 0
            if run > 9:
                raise Unsupported("varint too long")
            pos += 1
        if run:
            raise Unsupported("truncated varint")
    elif how == SKIP_STRINGS:  # a StringColumn: values (1) must be UTF-8, codes (2) packed varints
        while pos < end:
            tag = _varint(buf, &pos, end)
            if tag == ((1 << 3) | 2) or tag == ((2 << 3) | 2):
                length = _varint(buf, &pos, end)
                if length > <uint64_t>(end - pos):
                    raise Unsupported("truncated field")
                if tag == ((1 << 3) | 2):
                    _check_utf8(buf + pos, <Py_ssize_t>length)
                else:
                    _check_skipped(SKIP_VARINTS, buf, pos, pos + <Py_ssize_t>length)
                pos += <Py_ssize_t>length
            else:
                pos = _skip(buf, pos, end, tag)
    return 0


cdef class CompiledChunkBuilder:
    cdef public tuple spec
    cdef public Py_ssize_t n
    cdef Py_ssize_t _pending
    cdef Py_ssize_t _capacity
    cdef int _nslots
    cdef int _slot_of[MAX_FIELD]
    cdef int _kind[MAX_SLOTS]
    cdef void* _ptr[MAX_SLOTS]
    cdef Py_ssize_t _len[MAX_SLOTS]
    cdef uint8_t _string_seen[MAX_SLOTS]
    cdef uint8_t _skip_how[MAX_FIELD]
    cdef list _arrays
    cdef list _index
    cdef list _names
    cdef object _l2g_array
    cdef int32_t* _l2g
    cdef Py_ssize_t _l2g_cap

    def __init__(self, spec, Py_ssize_t capacity=65536):
        cdef int i
        self.spec = tuple(spec)
        if len(self.spec) > MAX_SLOTS:
            raise ValueError(f"at most {MAX_SLOTS} columns")
        for i in range(MAX_FIELD):
            self._slot_of[i] = -1
            self._skip_how[i] = SKIP_UNKNOWN
        for fd in _cols_pb.UsageEventColumns.DESCRIPTOR.fields:
            if 0 < fd.number < MAX_FIELD and fd.number not in (COUNT_FIELD, HEADER_FIELD):
                if fd.message_type is not None:
                    self._skip_how[fd.number] = SKIP_STRINGS
                elif fd.type == fd.TYPE_DOUBLE:
                    self._skip_how[fd.number] = SKIP_DOUBLES
                else:
                    self._skip_how[fd.number] = SKIP_VARINTS
        self._nslots = len(self.spec)
        self._names = []
        for i, col in enumerate(self.spec):
            if not 0 < col.number < MAX_FIELD or col.number in (COUNT_FIELD, HEADER_FIELD):
                raise ValueError(f"column {col.name}: field {col.number} not supported")
            self._slot_of[col.number] = i
            self._kind[i] = col.kind
            self._names.append(col.name)
        self._capacity = max(capacity, 16)
        self._l2g_cap = 0
        self._grow_l2g(1024)
        self._reset()

    cdef int _grow_l2g(self, Py_ssize_t size) except -1:
        if size <= self._l2g_cap:
            return 0
        self._l2g_array = np.zeros(max(size, 2 * self._l2g_cap), np.int32)
        self._l2g_cap = len(self._l2g_array)
        self._l2g = <int32_t*><size_t>self._l2g_array.ctypes.data
        return 0

    @property
    def compiled(self):
        return True

    def _reset(self):
        cdef int i
        self.n = 0
        self._pending = 0
        self._arrays = []
        self._index = []
        for i in range(self._nslots):
            self._arrays.append(np.zeros(self._capacity, self._dtype(self._kind[i])))
            self._index.append({"": 0} if self._kind[i] == STRING else None)
        self._refresh()

    cdef object _dtype(self, int kind):
        if kind == STRING:
            return np.int32
        if kind == DOUBLE:
            return np.float64
        if kind == BOOL:
            return np.uint8
        return np.int64

    cdef void _refresh(self):
        cdef int i
        for i in range(self._nslots):
            self._ptr[i] = <void*><size_t>self._arrays[i].ctypes.data

    cdef int _ensure(self, Py_ssize_t size) except -1:
        cdef Py_ssize_t cap = self._capacity
        cdef int i
        if size <= cap:
            return 0
        while cap < size:
            cap *= 2
        for i in range(self._nslots):
            old = self._arrays[i]
            grown = np.zeros(cap, old.dtype)
            grown[:self._capacity] = old
            self._arrays[i] = grown
        self._capacity = cap
        self._refresh()
        return 0

    cdef int _width(self, int kind):
        if kind == STRING:
            return 4
        if kind == BOOL:
            return 1
        return 8

    def add(self, value):
        if value is None:
            raise PoisonRecord("empty record")
        if not isinstance(value, bytes):
            value = bytes(value)
        try:
            return self._add_fast(value)
        except (Unsupported, UnicodeDecodeError):
            count, call_id, columns = message_columns(value, self.spec)
            self._put(count, columns)
            return count, call_id

    cdef int _put_scalar(self, int slot, uint64_t raw) except -1:
        cdef Py_ssize_t at = self.n + self._len[slot]
        cdef int kind = self._kind[slot]
        self._ensure(at + 1)
        if kind == INT:
            (<int64_t*>self._ptr[slot])[at] = <int64_t>raw
        elif kind == INT32:
            (<int64_t*>self._ptr[slot])[at] = <int64_t>(<int32_t>raw)
        elif kind == BOOL:
            (<uint8_t*>self._ptr[slot])[at] = 1 if raw != 0 else 0
        else:  # STRING codes
            if raw > 0x7FFFFFFF:
                raise Unsupported("code out of range")
            (<int32_t*>self._ptr[slot])[at] = <int32_t>raw
        self._len[slot] += 1
        return 0

    cdef int _packed(self, int slot, const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end) except -1:
        """Append a packed run: a tight loop per kind, capacity checked once for the whole run."""
        cdef Py_ssize_t k = 0, at = self.n + self._len[slot]
        cdef int kind = self._kind[slot]
        cdef int64_t* p64
        cdef int32_t* p32
        cdef uint8_t* p8
        cdef uint64_t raw
        if kind == DOUBLE:
            if (end - pos) % 8:
                raise Unsupported("packed doubles not a multiple of 8 bytes")
            k = (end - pos) // 8
            self._ensure(at + k)
            memcpy((<char*>self._ptr[slot]) + 8 * at, buf + pos, 8 * k)
            self._len[slot] += k
            return 0
        self._ensure(at + (end - pos))
        if kind == INT:
            p64 = (<int64_t*>self._ptr[slot]) + at
            while pos < end:
                if buf[pos] < 0x80:
                    p64[k] = buf[pos]
                    pos += 1
                else:
                    p64[k] = <int64_t>_varint(buf, &pos, end)
                k += 1
        elif kind == INT32:
            p64 = (<int64_t*>self._ptr[slot]) + at
            while pos < end:
                if buf[pos] < 0x80:
                    p64[k] = buf[pos]
                    pos += 1
                else:
                    p64[k] = <int64_t>(<int32_t>_varint(buf, &pos, end))
                k += 1
        elif kind == BOOL:
            p8 = (<uint8_t*>self._ptr[slot]) + at
            while pos < end:
                if buf[pos] < 0x80:
                    p8[k] = 1 if buf[pos] else 0
                    pos += 1
                else:
                    p8[k] = 1 if _varint(buf, &pos, end) else 0
                k += 1
        else:  # STRING codes
            p32 = (<int32_t*>self._ptr[slot]) + at
            while pos < end:
                if buf[pos] < 0x80:
                    p32[k] = buf[pos]
                    pos += 1
                else:
                    raw = _varint(buf, &pos, end)
                    if raw > 0x7FFFFFFF:
                        raise Unsupported("code out of range")
                    p32[k] = <int32_t>raw
                k += 1
        self._len[slot] += k
        return 0

    cdef tuple _add_fast(self, bytes value):
        cdef const unsigned char* buf = value
        cdef Py_ssize_t end = len(value)
        cdef Py_ssize_t pos = 0, sub_end, p, q
        cdef uint64_t tag, length, raw
        cdef int64_t count = 0
        cdef int fnum, wire, slot, i, kind, header_seen = 0
        cdef Py_ssize_t j, m, nvals
        cdef int32_t* codes
        cdef int32_t code
        cdef double d
        call_id = ""
        local = [None] * self._nslots
        for i in range(self._nslots):
            self._len[i] = 0
            self._string_seen[i] = 0
        while pos < end:
            tag = _varint(buf, &pos, end)
            fnum = <int>(tag >> 3) if (tag >> 3) < 0x7FFFFFFF else -1
            wire = <int>(tag & 7)
            if fnum == COUNT_FIELD and wire == 0:
                count = <int64_t>(<int32_t>_varint(buf, &pos, end))
                continue
            if fnum == HEADER_FIELD and wire == 2:
                if header_seen:
                    raise Unsupported("header twice")
                header_seen = 1
                length = _varint(buf, &pos, end)
                if length > <uint64_t>(end - pos):
                    raise Unsupported("truncated header")
                sub_end = pos + <Py_ssize_t>length
                while pos < sub_end:
                    tag = _varint(buf, &pos, sub_end)
                    if (tag >> 3) == 3 and (tag & 7) == 2:
                        length = _varint(buf, &pos, sub_end)
                        if length > <uint64_t>(sub_end - pos):
                            raise Unsupported("truncated call id")
                        call_id = PyUnicode_DecodeUTF8(<const char*>buf + pos, <Py_ssize_t>length, "strict")
                        pos += <Py_ssize_t>length
                    elif (tag >> 3) == 1 and (tag & 7) == 2:  # producer_id: skipped, but must be UTF-8
                        length = _varint(buf, &pos, sub_end)
                        if length > <uint64_t>(sub_end - pos):
                            raise Unsupported("truncated producer id")
                        _check_utf8(buf + pos, <Py_ssize_t>length)
                        pos += <Py_ssize_t>length
                    else:
                        pos = _skip(buf, pos, sub_end, tag)
                continue
            if fnum <= 0 or fnum >= MAX_FIELD or self._slot_of[fnum] < 0:
                if fnum in (COUNT_FIELD, HEADER_FIELD):
                    raise Unsupported("count or header with an unexpected wire type")
                if wire == 2 and 0 < fnum < MAX_FIELD and self._skip_how[fnum] != SKIP_UNKNOWN:
                    length = _varint(buf, &pos, end)
                    if length > <uint64_t>(end - pos):
                        raise Unsupported("truncated field")
                    _check_skipped(self._skip_how[fnum], buf, pos, pos + <Py_ssize_t>length)
                    pos += <Py_ssize_t>length
                else:
                    pos = _skip(buf, pos, end, tag)
                continue
            slot = self._slot_of[fnum]
            kind = self._kind[slot]
            if kind == STRING:
                if wire != 2 or self._string_seen[slot]:
                    raise Unsupported("string column repeated or mis-typed")
                self._string_seen[slot] = 1
                length = _varint(buf, &pos, end)
                if length > <uint64_t>(end - pos):
                    raise Unsupported("truncated string column")
                sub_end = pos + <Py_ssize_t>length
                vals = []
                while pos < sub_end:
                    tag = _varint(buf, &pos, sub_end)
                    if (tag >> 3) == 1 and (tag & 7) == 2:
                        length = _varint(buf, &pos, sub_end)
                        if length > <uint64_t>(sub_end - pos):
                            raise Unsupported("truncated value")
                        vals.append(PyUnicode_DecodeUTF8(<const char*>buf + pos, <Py_ssize_t>length, "strict"))
                        pos += <Py_ssize_t>length
                    elif (tag >> 3) == 2 and (tag & 7) == 2:
                        length = _varint(buf, &pos, sub_end)
                        if length > <uint64_t>(sub_end - pos):
                            raise Unsupported("truncated codes")
                        self._packed(slot, buf, pos, pos + <Py_ssize_t>length)
                        pos += <Py_ssize_t>length
                    elif (tag >> 3) == 2 and (tag & 7) == 0:
                        self._put_scalar(slot, _varint(buf, &pos, sub_end))
                    else:
                        pos = _skip(buf, pos, sub_end, tag)
                local[slot] = vals
                continue
            if wire == 2:
                length = _varint(buf, &pos, end)
                if length > <uint64_t>(end - pos):
                    raise Unsupported("truncated packed column")
                self._packed(slot, buf, pos, pos + <Py_ssize_t>length)
                pos += <Py_ssize_t>length
            elif kind == DOUBLE and wire == 1:
                if end - pos < 8:
                    raise Unsupported("truncated double")
                self._ensure(self.n + self._len[slot] + 1)
                memcpy((<char*>self._ptr[slot]) + 8 * (self.n + self._len[slot]), buf + pos, 8)
                self._len[slot] += 1
                pos += 8
            elif kind != DOUBLE and wire == 0:
                self._put_scalar(slot, _varint(buf, &pos, end))
            else:
                raise Unsupported("column with an unexpected wire type")
        if count < 0 or count > MAX_EVENTS_PER_RECORD:
            raise PoisonRecord(f"event count {count} out of range")
        self._ensure(self.n + count)
        for slot in range(self._nslots):
            kind = self._kind[slot]
            m = self._len[slot]
            if kind == STRING:
                vals = local[slot]
                nvals = len(vals) if vals is not None else 0
                if m == 0 and nvals == 0:
                    memset((<char*>self._ptr[slot]) + 4 * self.n, 0, 4 * count)
                    continue
                codes = (<int32_t*>self._ptr[slot]) + self.n
                for j in range(m):
                    if codes[j] >= nvals:
                        raise PoisonRecord(f"column {self._names[slot]} has a code beyond its {nvals} values")
                if m != count:
                    raise PoisonRecord(f"column {self._names[slot]} has {m} entries, the batch has {count}")
                index = <dict>self._index[slot]
                self._grow_l2g(nvals)
                for j in range(nvals):
                    v = vals[j]
                    g = index.get(v)
                    if g is None:
                        g = len(index)
                        index[v] = g
                    self._l2g[j] = <int32_t>g
                for j in range(m):
                    codes[j] = self._l2g[codes[j]]
            else:
                if m == 0:
                    memset((<char*>self._ptr[slot]) + self._width(kind) * self.n, 0, self._width(kind) * count)
                    continue
                if m != count:
                    raise PoisonRecord(f"column {self._names[slot]} has {m} entries, the batch has {count}")
        self._pending = count
        return count, call_id

    def _put(self, Py_ssize_t count, dict columns):
        cdef int slot
        self._ensure(self.n + count)
        lo, hi = self.n, self.n + count
        for slot in range(self._nslots):
            values = columns.get(self._names[slot])
            arr = self._arrays[slot]
            if self._kind[slot] == STRING:
                index = self._index[slot]
                arr[lo:hi] = [index.setdefault(v, len(index)) for v in values] if values else 0
            else:
                arr[lo:hi] = values if values else 0
        self._pending = count

    def accept(self):
        self.n += self._pending
        self._pending = 0

    def take(self):
        cdef int slot
        n = self.n
        numbers = {}
        strings = {}
        for slot in range(self._nslots):
            arr = self._arrays[slot][:n].copy()
            name = self._names[slot]
            if self._kind[slot] == STRING:
                strings[name] = (arr, list(self._index[slot]))
            elif self._kind[slot] == BOOL:
                numbers[name] = arr.view(np.bool_)
            else:
                numbers[name] = arr
        self._reset()
        return Chunk(n=n, numbers=numbers, strings=strings)
