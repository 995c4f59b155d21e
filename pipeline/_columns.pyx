# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled record decoder for the pipeline: UsageEventColumns bytes -> numpy buffers.

Same interface and results as pipeline.decode.ChunkBuilder (the reference,
protobuf runtime). This one walks the wire format itself and writes packed
columns straight into the chunk's buffers. String columns are interned per
column in a C hash table keyed by the values' UTF-8 bytes (see StrTable): a value
the chunk has already seen costs a hash and a memcmp; a new one is checked to be
UTF-8 and its bytes kept. No Python object is made per value: the chunk's
dictionaries become lists of str once, in take(). Anything it does not handle exactly
(malformed bytes, a StringColumn given twice, which protobuf would merge,
groups) raises Unsupported internally and that record is decoded by the
reference instead, so both accept and reject the same records.
"""

from libc.stdint cimport uint64_t, int64_t, int32_t, uint32_t, uint8_t
from libc.string cimport memcpy, memset, memcmp
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.unicode cimport PyUnicode_DecodeUTF8

from core._wire_primitives cimport _skip, _varint

import os

import numpy as np

from core.wire import WireUnsupported as Unsupported
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


# --- string interning ---------------------------------------------------------------------------
#
# Per string column, one StrTable maps a value's UTF-8 bytes to its chunk-global code, and is the
# chunk's dictionary for the column until take() decodes it to a list of str. It replaces a Python
# dict keyed by str, which needed every value of every record decoded to a str (an allocation, a
# copy, a SipHash and a deallocation) just to find out that it was already known. Here:
# - the values' bytes are kept back to back in an arena, in code order: code c is
#   arena[offs[c]:offs[c + 1]] (so equality is a length compare and a memcmp);
# - an open-addressing table (linear probing, power-of-two size, at most half full) holds 8-byte
#   entries (32 bits of the hash, code), so a probe touches one cache line and compares hashes
#   before any bytes.
# The hash is wyhash (fast, good on short keys), keyed by a per-process random seed. The values come
# from user traffic (request paths...), so a table whose probe runs grow implausibly long (an attack
# on the fast hash, or astronomically bad luck) switches for the rest of the chunk to CPython's
# keyed SipHash for bytes, which is what the dict it replaces relied on.

cdef extern from *:
    ctypedef unsigned long long uint128 "unsigned __int128"

cdef extern from "Python.h":
    Py_hash_t _Py_HashBytes(const void* src, Py_ssize_t n)  # SipHash13 keyed per process (PYTHONHASHSEED)

cdef struct Entry:
    uint32_t hash
    int32_t code  # EMPTY: free

cdef struct StrTable:
    Entry* entries
    Py_ssize_t mask  # len(entries) - 1
    int32_t count  # codes in use; code 0 is ""
    bint sip  # hashing with _Py_HashBytes rather than wyhash (after an over-long probe run)
    unsigned char* arena
    Py_ssize_t arena_cap
    Py_ssize_t* offs  # count + 1 offsets into arena
    Py_ssize_t offs_cap

DEF EMPTY = -1
DEF TABLE_START = 256  # entries; a column's table grows by doubling from here, arena and offs likewise
DEF TABLE_KEEP = 1 << 16  # a table up to this size (512 KiB) is reused by the next chunk, a larger one freed
# Longest probe run tolerated on insert before switching to SipHash. Linear probing at load <= 1/2
# makes a run this long with probability well under 1e-9 per insert on a random hash.
DEF PROBE_LIMIT = 160

cdef uint64_t _SECRET0 = 0xa0761d6478bd642fULL
cdef uint64_t _SECRET1 = 0xe7037ed1a0b428dbULL


cdef inline uint64_t _mix(uint64_t a, uint64_t b) noexcept nogil:
    cdef uint128 r = <uint128>a * b
    return <uint64_t>r ^ <uint64_t>(r >> 64)


cdef uint64_t _SEED = int.from_bytes(os.urandom(8), "little")  # per process, like CPython's own hash key
_SEED ^= _mix(_SEED ^ _SECRET0, _SECRET1)


cdef inline uint64_t _r8(const unsigned char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline uint64_t _r4(const unsigned char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t _wyhash(const unsigned char* p, Py_ssize_t n, uint64_t seed) noexcept nogil:
    """The wyhash construction (public domain): its short-key reads and 16-byte loop, without the
    48-byte three-lane one (values are short)."""
    cdef uint64_t a, b, lo, hi
    cdef uint128 r
    cdef Py_ssize_t i = n
    if n <= 16:
        if n >= 4:  # two (possibly overlapping) 4-byte reads from each end
            a = (_r4(p) << 32) | _r4(p + ((n >> 3) << 2))
            b = (_r4(p + n - 4) << 32) | _r4(p + n - 4 - ((n >> 3) << 2))
        elif n > 0:
            a = (<uint64_t>p[0] << 16) | (<uint64_t>p[n >> 1] << 8) | p[n - 1]
            b = 0
        else:
            a = b = 0
    else:
        while i > 16:
            seed = _mix(_r8(p) ^ _SECRET1, _r8(p + 8) ^ seed)
            p += 16
            i -= 16
        a = _r8(p + i - 16)
        b = _r8(p + i - 8)
    r = <uint128>(a ^ _SECRET1) * (b ^ seed)
    lo = <uint64_t>r
    hi = <uint64_t>(r >> 64)
    return _mix(lo ^ _SECRET0 ^ <uint64_t>n, hi ^ _SECRET1)


cdef inline uint32_t _hash(const StrTable* t, const unsigned char* p, Py_ssize_t n) noexcept:
    if t.sip:
        return <uint32_t>_Py_HashBytes(p, n)
    return <uint32_t>_wyhash(p, n, _SEED)


cdef inline bint _same(const unsigned char* a, const unsigned char* b, Py_ssize_t n) noexcept nogil:
    """a[:n] == b[:n]. Inline, since most values are short: (possibly overlapping) word compares."""
    if n >= 8:
        if n > 16:
            return memcmp(a, b, n) == 0
        return _r8(a) == _r8(b) and _r8(a + n - 8) == _r8(b + n - 8)
    if n >= 4:
        return _r4(a) == _r4(b) and _r4(a + n - 4) == _r4(b + n - 4)
    return n == 0 or (a[0] == b[0] and a[n >> 1] == b[n >> 1] and a[n - 1] == b[n - 1])


cdef inline int32_t _find(const StrTable* t, const unsigned char* p, Py_ssize_t n, uint32_t h) noexcept nogil:
    """The code of bytes p[:n] (hashing to h), or EMPTY."""
    cdef Py_ssize_t i = h & t.mask, at
    cdef int32_t code
    while True:
        code = t.entries[i].code
        if code == EMPTY:
            return EMPTY
        if t.entries[i].hash == h:
            at = t.offs[code]
            if t.offs[code + 1] - at == n and _same(t.arena + at, p, n):
                return code
        i = (i + 1) & t.mask


cdef int _grow(void** buf, Py_ssize_t* cap, Py_ssize_t need, Py_ssize_t item) except -1:
    """Realloc *buf (of *cap items) to hold at least need items, doubling."""
    cdef Py_ssize_t new_cap = cap[0] if cap[0] else 16
    cdef void* grown
    if need <= cap[0]:
        return 0
    while new_cap < need:
        new_cap *= 2
    grown = PyMem_Realloc(buf[0], new_cap * item)
    if grown == NULL:
        raise MemoryError()
    buf[0] = grown
    cap[0] = new_cap
    return 0


cdef int _rehash(StrTable* t, Py_ssize_t size, bint sip) except -1:
    """Rebuild the entries at a new size (a power of two), rehashing the bytes when switching to SipHash."""
    cdef Entry* entries = <Entry*>PyMem_Malloc(size * sizeof(Entry))
    cdef Entry* old = t.entries
    cdef Py_ssize_t i, j, mask = size - 1, old_size = t.mask + 1 if old != NULL else 0
    cdef int32_t code
    cdef uint32_t h
    if entries == NULL:
        raise MemoryError()
    memset(entries, 0xFF, size * sizeof(Entry))  # code EMPTY
    t.entries, t.mask = entries, mask
    if sip and not t.sip:
        t.sip = True
        old_size = 0
        for code in range(t.count):
            h = _hash(t, t.arena + t.offs[code], t.offs[code + 1] - t.offs[code])
            i = h & mask
            while entries[i].code != EMPTY:
                i = (i + 1) & mask
            entries[i].hash, entries[i].code = h, code
    for j in range(old_size):  # the stored 32 hash bits still place each entry
        if old[j].code != EMPTY:
            i = old[j].hash & mask
            while entries[i].code != EMPTY:
                i = (i + 1) & mask
            entries[i] = old[j]
    PyMem_Free(old)
    return 0


cdef int32_t _insert(StrTable* t, const unsigned char* p, Py_ssize_t n, uint32_t h) except -1:
    """Give bytes p[:n], not in the table and hashing to h, the next code. Allocations come first, so
    running out of memory leaves the table's contents as they were."""
    cdef Py_ssize_t i, probes = 0
    cdef int32_t code = t.count
    if code == 0x7FFFFFFF:
        raise OverflowError("too many distinct values in a chunk")
    if 2 * (<Py_ssize_t>code + 1) > t.mask + 1:
        _rehash(t, 2 * (t.mask + 1), False)
    _grow(<void**>&t.offs, &t.offs_cap, code + 2, sizeof(Py_ssize_t))
    _grow(<void**>&t.arena, &t.arena_cap, t.offs[code] + n, 1)
    i = h & t.mask
    while t.entries[i].code != EMPTY:
        i = (i + 1) & t.mask
        probes += 1
        if probes > PROBE_LIMIT and not t.sip:  # flooded: rehash everything with SipHash, then retry
            _rehash(t, t.mask + 1, True)
            h = _hash(t, p, n)
            i = h & t.mask
            probes = 0
    memcpy(t.arena + t.offs[code], p, n)
    t.offs[code + 1] = t.offs[code] + n
    t.entries[i].hash, t.entries[i].code = h, code
    t.count = code + 1
    return code


cdef int _clear(StrTable* t) except -1:
    """Empty the table and give "" code 0. Its memory is kept for the next chunk unless it grew large."""
    if t.entries != NULL and t.mask + 1 > TABLE_KEEP:
        _free(t)
    if t.entries == NULL:
        _rehash(t, TABLE_START, False)
    else:
        memset(t.entries, 0xFF, (t.mask + 1) * sizeof(Entry))
    t.count = 0
    t.sip = False
    _grow(<void**>&t.offs, &t.offs_cap, TABLE_START, sizeof(Py_ssize_t))
    _grow(<void**>&t.arena, &t.arena_cap, 16 * TABLE_START, 1)
    t.offs[0] = 0
    _insert(t, <const unsigned char*>"", 0, _hash(t, <const unsigned char*>"", 0))
    return 0


cdef void _free(StrTable* t) noexcept:
    PyMem_Free(t.entries)
    PyMem_Free(t.arena)
    PyMem_Free(t.offs)
    memset(t, 0, sizeof(StrTable))


cdef int32_t _intern(StrTable* t, const unsigned char* p, Py_ssize_t n, uint32_t h) except -1:
    """The code of (valid UTF-8) bytes p[:n] hashing to h, added if new."""
    cdef int32_t code = _find(t, p, n, h)
    return code if code != EMPTY else _insert(t, p, n, h)


cdef list _decoded(const StrTable* t):
    """The table's values in code order, as str (they were checked to be UTF-8 on insert)."""
    cdef int32_t code
    cdef list out = []
    for code in range(t.count):
        out.append(PyUnicode_DecodeUTF8(<const char*>t.arena + t.offs[code], t.offs[code + 1] - t.offs[code],
                                        "strict"))
    return out


cdef struct ValueRef:  # one value of a record's StringColumn, between parsing and committing the record
    Py_ssize_t off  # into the record
    Py_ssize_t n
    uint32_t hash
    int32_t code  # chunk-global code, or EMPTY when new to the chunk


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
    cdef list _names
    cdef StrTable _tables[MAX_SLOTS]  # per string column: the chunk's dictionary, values' bytes <-> code
    # The record being added: its string values, column by column (slot's at _vstart[slot], _vcount[slot]).
    cdef ValueRef* _refs
    cdef Py_ssize_t _refs_cap
    cdef Py_ssize_t _vstart[MAX_SLOTS]
    cdef Py_ssize_t _vcount[MAX_SLOTS]

    def __cinit__(self):  # (the object's memory starts zeroed: no tables, no refs)
        memset(self._tables, 0, sizeof(self._tables))

    def __dealloc__(self):
        cdef int i
        for i in range(MAX_SLOTS):
            _free(&self._tables[i])
        PyMem_Free(self._refs)

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
        _grow(<void**>&self._refs, &self._refs_cap, 1024, sizeof(ValueRef))
        self._reset()

    @property
    def compiled(self):
        return True

    def _reset(self):
        cdef int i
        self.n = 0
        self._pending = 0
        # The buffers are reused: take() copies what it returns, and every add() writes each column's
        # whole pending region (zeros for an absent column), so stale contents are never read.
        if self._arrays is None:
            self._arrays = [np.zeros(self._capacity, self._dtype(self._kind[i])) for i in range(self._nslots)]
        for i in range(self._nslots):
            if self._kind[i] == STRING:
                _clear(&self._tables[i])
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

    cdef int _string_column(self, int slot, const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end) except -1:
        """Parse a record's StringColumn: codes into the chunk buffer, values looked up in the column's
        table. Nothing is committed: a value new to the chunk is only checked to be UTF-8 (raising
        UnicodeDecodeError, so the record falls back, as protobuf would reject it); a known one was
        valid when it was added."""
        cdef StrTable* t = &self._tables[slot]
        cdef uint64_t tag, length
        cdef Py_ssize_t k = self._vstart[slot]
        cdef ValueRef* ref
        while pos < end:
            tag = _varint(buf, &pos, end)
            if tag == ((1 << 3) | 2):  # a value
                length = _varint(buf, &pos, end)
                if length > <uint64_t>(end - pos):
                    raise Unsupported("truncated value")
                if k >= self._refs_cap:
                    _grow(<void**>&self._refs, &self._refs_cap, k + 1, sizeof(ValueRef))
                ref = &self._refs[k]
                ref.off, ref.n = pos, <Py_ssize_t>length
                ref.hash = _hash(t, buf + pos, ref.n)
                ref.code = _find(t, buf + pos, ref.n, ref.hash)
                if ref.code == EMPTY:
                    _check_utf8(buf + pos, ref.n)
                k += 1
                pos += ref.n
            elif tag == ((2 << 3) | 2):  # packed codes
                length = _varint(buf, &pos, end)
                if length > <uint64_t>(end - pos):
                    raise Unsupported("truncated codes")
                self._packed(slot, buf, pos, pos + <Py_ssize_t>length)
                pos += <Py_ssize_t>length
            elif tag == ((2 << 3) | 0):  # an unpacked code
                self._put_scalar(slot, _varint(buf, &pos, end))
            else:
                pos = _skip(buf, pos, end, tag)
        self._vcount[slot] = k - self._vstart[slot]
        return 0

    cdef tuple _add_fast(self, bytes value):
        cdef const unsigned char* buf = value
        cdef Py_ssize_t end = len(value)
        cdef Py_ssize_t pos = 0, sub_end
        cdef uint64_t tag, length
        cdef int64_t count = 0
        cdef int fnum, wire, slot, i, kind, header_seen = 0
        cdef Py_ssize_t j, m, nvals, nrefs = 0
        cdef int32_t* codes
        cdef ValueRef* refs
        cdef StrTable* t
        call_id = ""
        for i in range(self._nslots):
            self._len[i] = 0
            self._vstart[i] = self._vcount[i] = 0
            self._string_seen[i] = 0
        # 1. Parse: numbers and string codes go straight into the pending region of the chunk's
        # buffers, string values are looked up (ValueRef). Unsupported or UnicodeDecodeError here
        # leave the record to the reference, with nothing committed.
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
                self._vstart[slot] = nrefs
                self._string_column(slot, buf, pos, sub_end)
                nrefs += self._vcount[slot]
                pos = sub_end
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
        # 2. Check the record is consistent (PoisonRecord), still without committing anything.
        if count < 0 or count > MAX_EVENTS_PER_RECORD:
            raise PoisonRecord(f"event count {count} out of range")
        self._ensure(self.n + count)
        for slot in range(self._nslots):
            m = self._len[slot]
            if self._kind[slot] == STRING:
                nvals = self._vcount[slot]
                if m == 0 and nvals == 0:
                    continue
                codes = (<int32_t*>self._ptr[slot]) + self.n
                for j in range(m):
                    if codes[j] >= nvals:
                        raise PoisonRecord(f"column {self._names[slot]} has a code beyond its {nvals} values")
            elif m == 0:
                continue
            if m != count:
                raise PoisonRecord(f"column {self._names[slot]} has {m} entries, the batch has {count}")
        # 3. Commit: values new to the chunk join its dictionaries (even if the record is then not
        # accepted: harmless, nothing refers to them); local codes become chunk-global ones.
        for slot in range(self._nslots):
            kind = self._kind[slot]
            m = self._len[slot]
            if m == 0:  # an absent column: zeros ("" for strings)
                memset((<char*>self._ptr[slot]) + self._width(kind) * self.n, 0, self._width(kind) * count)
                if kind != STRING:
                    continue
            if kind == STRING:
                refs = self._refs + self._vstart[slot]
                t = &self._tables[slot]
                for j in range(self._vcount[slot]):
                    if refs[j].code == EMPTY:  # looked up again: the record may carry a value twice
                        if t.sip:  # the table switched hash function since the parse
                            refs[j].hash = _hash(t, buf + refs[j].off, refs[j].n)
                        refs[j].code = _intern(t, buf + refs[j].off, refs[j].n, refs[j].hash)
                codes = (<int32_t*>self._ptr[slot]) + self.n
                for j in range(m):
                    codes[j] = refs[codes[j]].code
        self._pending = count
        return count, call_id

    def _put(self, Py_ssize_t count, dict columns):
        """Write a record decoded by the reference (message_columns), interning through the same tables."""
        cdef int slot
        cdef bytes raw
        cdef StrTable* t
        self._ensure(self.n + count)
        lo, hi = self.n, self.n + count
        for slot in range(self._nslots):
            values = columns.get(self._names[slot])
            arr = self._arrays[slot]
            if self._kind[slot] == STRING and values:
                known = {}  # this record's distinct values -> code, so each is interned once
                out = []
                t = &self._tables[slot]
                for v in values:
                    code = known.get(v)
                    if code is None:
                        raw = (<str>v).encode("utf-8")  # protobuf gave valid UTF-8
                        code = known[v] = _intern(t, raw, len(raw), _hash(t, raw, len(raw)))
                    out.append(code)
                arr[lo:hi] = out
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
                strings[name] = (arr, _decoded(&self._tables[slot]))
            elif self._kind[slot] == BOOL:
                numbers[name] = arr.view(np.bool_)
            else:
                numbers[name] = arr
        self._reset()
        return Chunk(n=n, numbers=numbers, strings=strings)
