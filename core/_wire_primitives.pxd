# cython: language_level=3
"""Protobuf wire-format primitives shared by the compiled decoders (cimported, inlined into each).

collector/_wire.pyx and pipeline/_columns.pyx both ``from core._wire_primitives
cimport ...``; setup.py puts the repository root on Cython's include path. On
input these do not handle exactly they raise core.wire.WireUnsupported, which
the decoders' callers catch to decode with the protobuf runtime instead.
"""

from libc.stdint cimport uint64_t


cdef inline int _unsupported(str reason) except -1:
    """Raise WireUnsupported(reason). Imported here, on the (rare) fallback path: a name used in a
    .pxd inline function would otherwise be looked up in the globals of the module that cimports it."""
    from core.wire import WireUnsupported
    raise WireUnsupported(reason)


cdef inline uint64_t _varint(const unsigned char* buf, Py_ssize_t* pos, Py_ssize_t end) except? 0xFFFFFFFFFFFFFFFF:
    """The base-128 varint at ``pos[0]`` (at most 10 bytes, none past ``end``); advances ``pos[0]``."""
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if pos[0] >= end or shift > 63:
            _unsupported("truncated varint")
        b = buf[pos[0]]
        pos[0] += 1
        result |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            return result
        shift += 7


cdef inline Py_ssize_t _skip(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end, uint64_t tag) except -1:
    """The position after the value of the field whose ``tag`` was just read; field number 0, numbers
    past 2^29 - 1, groups and unknown wire types are left to the protobuf runtime."""
    cdef uint64_t n
    cdef int wire = <int>(tag & 7)
    if (tag >> 3) == 0 or (tag >> 3) > 536870911:
        _unsupported("field number out of range")
    if wire == 0:
        _varint(buf, &pos, end)
    elif wire == 1:
        pos += 8
    elif wire == 2:
        n = _varint(buf, &pos, end)
        if n > <uint64_t>(end - pos):
            _unsupported("truncated field")
        pos += <Py_ssize_t>n
    elif wire == 5:
        pos += 4
    else:
        _unsupported("group or bad wire type")
    if pos > end:
        _unsupported("truncated field")
    return pos
