# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled decoder for metric.HandleMetricRequest: the collector's hot path.

Parsing a Mixer call with the protobuf runtime builds one Python object per
Value and per map entry, which costs more than everything else the collector
does (about 1 us per dimension). This decoder walks the wire format once and
returns plain Python values, in the same neutral form as the pure-Python
decoder in collector/decode.py, which stays the reference: on any input this
decoder does not handle exactly (a malformed message, a field repeated where
the runtime would merge, a group, a map entry with an unknown field), it
raises ``Unsupported`` and the caller decodes with the protobuf runtime
instead, so both paths accept and reject the same inputs.
tests/unit/test_decode.py checks the two agree, with hypothesis.

Field numbers follow docs/mixer-wire.md sections 2 and 3; strings are validated as UTF-8 as
proto3 requires.
"""

from libc.stdint cimport uint64_t, int64_t, uint32_t, int32_t
from libc.string cimport memcpy
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.bytes cimport PyBytes_FromStringAndSize

from core._wire_primitives cimport _skip, _varint
from core.wire import WireUnsupported as Unsupported


cdef enum:
    NAME_FIELD = 72295727


cdef inline Py_ssize_t _len(const unsigned char* buf, Py_ssize_t* pos, Py_ssize_t end) except -1:
    cdef uint64_t n = _varint(buf, pos, end)
    if n > <uint64_t>(end - pos[0]):
        raise Unsupported("truncated length-delimited field")
    return <Py_ssize_t>n


cdef inline str _utf8(const unsigned char* buf, Py_ssize_t start, Py_ssize_t n):
    try:
        return PyUnicode_DecodeUTF8(<const char*>(buf + start), n, "strict")
    except UnicodeDecodeError:
        raise Unsupported("invalid UTF-8")


cdef object _string_wrapper(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end):
    """DNSName/EmailAddress/Uri {1: string}: the last field 1 wins."""
    cdef object out = ""
    cdef uint64_t tag
    cdef Py_ssize_t n
    while pos < end:
        tag = _varint(buf, &pos, end)
        if tag == 0x0A:
            n = _len(buf, &pos, end)
            out = _utf8(buf, pos, n)
            pos += n
        else:
            pos = _skip(buf, pos, end, tag)
    return out


cdef tuple _seconds_nanos(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end):
    """google.protobuf.Timestamp/Duration {1: int64 seconds, 2: int32 nanos}."""
    cdef int64_t seconds = 0
    cdef int32_t nanos = 0
    cdef uint64_t tag
    while pos < end:
        tag = _varint(buf, &pos, end)
        if tag == 0x08:
            seconds = <int64_t>_varint(buf, &pos, end)
        elif tag == 0x10:
            nanos = <int32_t><int64_t>_varint(buf, &pos, end)
        else:
            pos = _skip(buf, pos, end, tag)
    return (seconds, nanos)


cdef tuple _wrapped_seconds_nanos(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end):
    """TimeStamp/Duration {1: google.protobuf.Timestamp/Duration}; repeated field 1 would merge."""
    cdef uint64_t tag
    cdef Py_ssize_t n
    cdef object out = (0, 0)
    cdef bint seen = False
    while pos < end:
        tag = _varint(buf, &pos, end)
        if tag == 0x0A:
            if seen:
                raise Unsupported("repeated sub-message merges")
            seen = True
            n = _len(buf, &pos, end)
            out = _seconds_nanos(buf, pos, pos + n)
            pos += n
        else:
            pos = _skip(buf, pos, end, tag)
    return out


cdef dict _string_map(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end):
    """StringMap {1: map<string, string>}; an entry with an unknown field goes to the runtime (see _entry_into)."""
    cdef dict out = {}
    cdef uint64_t tag, etag
    cdef Py_ssize_t n, epos, eend, m
    cdef object key, value
    while pos < end:
        tag = _varint(buf, &pos, end)
        if tag == 0x0A:
            n = _len(buf, &pos, end)
            epos = pos
            eend = pos + n
            key = ""
            value = ""
            while epos < eend:
                etag = _varint(buf, &epos, eend)
                if etag == 0x0A or etag == 0x12:
                    m = _len(buf, &epos, eend)
                    if etag == 0x0A:
                        key = _utf8(buf, epos, m)
                    else:
                        value = _utf8(buf, epos, m)
                    epos += m
                else:
                    raise Unsupported("map entry with an unknown field")
            out[key] = value
            pos = eend
        else:
            pos = _skip(buf, pos, end, tag)
    return out


cdef object _ip_bytes(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end):
    cdef object out = b""
    cdef uint64_t tag
    cdef Py_ssize_t n
    while pos < end:
        tag = _varint(buf, &pos, end)
        if tag == 0x0A:
            n = _len(buf, &pos, end)
            out = PyBytes_FromStringAndSize(<const char*>(buf + pos), n)
            pos += n
        else:
            pos = _skip(buf, pos, end, tag)
    return out


cdef object _value(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end):
    """istio.policy.v1beta1.Value -> the neutral form (see collector/decode.py)."""
    cdef object out = None
    cdef uint64_t tag, raw
    cdef int field
    cdef Py_ssize_t n
    cdef double d
    cdef int64_t seconds
    cdef int32_t nanos
    cdef bint message_seen = False
    while pos < end:
        tag = _varint(buf, &pos, end)
        field = <int>(tag >> 3)
        if tag == 0x0A:  # string_value
            n = _len(buf, &pos, end)
            out = _utf8(buf, pos, n)
            pos += n
        elif tag == 0x10:  # int64_value
            out = <int64_t>_varint(buf, &pos, end)
        elif tag == 0x19:  # double_value
            if end - pos < 8:
                raise Unsupported("truncated double")
            memcpy(&d, buf + pos, 8)
            pos += 8
            out = d
        elif tag == 0x20:  # bool_value
            out = _varint(buf, &pos, end) != 0
        elif 5 <= field <= 11 and (tag & 7) == 2:
            # A message member seen twice would be merged by the runtime.
            if message_seen:
                raise Unsupported("repeated message member merges")
            message_seen = True
            n = _len(buf, &pos, end)
            if field == 5:
                out = ("ip", _ip_bytes(buf, pos, pos + n))
            elif field == 6:
                seconds, nanos = _wrapped_seconds_nanos(buf, pos, pos + n)
                # Python integer arithmetic: the same floor division as the reference decoder.
                out = ("ts", (<object>seconds) * 1000 + (<object>nanos) // 1000000)
            elif field == 7:
                seconds, nanos = _wrapped_seconds_nanos(buf, pos, pos + n)
                out = ("dur", seconds * 1000.0 + nanos / 1000000.0)
            elif field == 11:
                out = ("map", _string_map(buf, pos, pos + n))
            else:  # 8 email, 9 DNS name, 10 URI
                out = _string_wrapper(buf, pos, pos + n)
            pos += n
        elif 1 <= field <= 11:
            raise Unsupported("member with an unexpected wire type")
        else:
            pos = _skip(buf, pos, end, tag)
    return out


cdef dict _entry_into(dict target, const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end):
    """One map<string, Value> entry {1: key, 2: Value} into ``target`` (last key wins).

    A missing key reads as '' and a missing value as an empty Value, as in the
    runtime. An entry holding anything else (an unknown field number, or key or
    value with the wrong wire type, which the runtime also files as unknown) is
    not decoded here: upb, the default runtime, then leaves the whole entry out
    of the map (it keeps it among the parent's unknown fields,
    _upb_Decoder_DecodeToMap), while the pure-Python runtime inserts it, so
    only the runtime itself knows which answer is the reference.
    """
    cdef uint64_t tag
    cdef Py_ssize_t n
    cdef object key = ""
    cdef object value = None
    cdef bint value_seen = False
    while pos < end:
        tag = _varint(buf, &pos, end)
        if tag == 0x0A:
            n = _len(buf, &pos, end)
            key = _utf8(buf, pos, n)
            pos += n
        elif tag == 0x12:
            if value_seen:
                raise Unsupported("repeated map value merges")
            value_seen = True
            n = _len(buf, &pos, end)
            value = _value(buf, pos, pos + n)
            pos += n
        else:
            raise Unsupported("map entry with an unknown field")
    target[key] = value
    return target


cdef tuple _instance(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end):
    cdef uint64_t tag
    cdef Py_ssize_t n
    cdef object name = ""
    cdef object value = None
    cdef bint value_seen = False
    cdef dict dims = {}
    cdef dict ignored = {}
    cdef Py_ssize_t start = pos
    while pos < end:
        tag = _varint(buf, &pos, end)
        if tag == 0x12:  # dimensions
            n = _len(buf, &pos, end)
            _entry_into(dims, buf, pos, pos + n)
            pos += n
        elif tag == <uint64_t>((NAME_FIELD << 3) | 2):
            n = _len(buf, &pos, end)
            name = _utf8(buf, pos, n)
            pos += n
        elif tag == 0x0A:  # value
            if value_seen:
                raise Unsupported("repeated value merges")
            value_seen = True
            n = _len(buf, &pos, end)
            value = _value(buf, pos, pos + n)
            pos += n
        elif tag == 0x1A:  # monitored_resource_type: validated, not used
            n = _len(buf, &pos, end)
            _utf8(buf, pos, n)
            pos += n
        elif tag == 0x22:  # monitored_resource_dimensions: validated, not used
            n = _len(buf, &pos, end)
            _entry_into(ignored, buf, pos, pos + n)
            pos += n
        elif (tag >> 3) in (0, 1, 2, 3, 4, NAME_FIELD):
            raise Unsupported("field with an unexpected wire type")
        else:
            pos = _skip(buf, pos, end, tag)
    return (name, value, dims, start, end)


cdef int _check_any(const unsigned char* buf, Py_ssize_t pos, Py_ssize_t end) except -1:
    """google.protobuf.Any {1: type_url string, 2: value bytes}: validated as the runtime would."""
    cdef uint64_t tag
    cdef Py_ssize_t n
    while pos < end:
        tag = _varint(buf, &pos, end)
        if tag == 0x0A or tag == 0x12:
            n = _len(buf, &pos, end)
            if tag == 0x0A:
                _utf8(buf, pos, n)
            pos += n
        elif (tag >> 3) in (1, 2):
            raise Unsupported("field with an unexpected wire type")
        else:
            pos = _skip(buf, pos, end, tag)
    return 0


def decode_call(const unsigned char[::1] raw not None):
    """``raw`` (an encoded HandleMetricRequest) -> (dedup_id, adapter_config bytes or None, instances).

    Each instance is ``(name, value, dimensions, start, end)``, where
    ``raw[start:end]`` is the instance's own encoding.

    Raises:
        Unsupported: decode with the protobuf runtime instead.
    """
    cdef const unsigned char* buf = &raw[0] if raw.shape[0] else NULL
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t end = raw.shape[0]
    cdef uint64_t tag
    cdef Py_ssize_t n
    cdef list instances = []
    cdef object dedup_id = ""
    cdef object adapter_config = None
    while pos < end:
        tag = _varint(buf, &pos, end)
        if tag == 0x0A:
            n = _len(buf, &pos, end)
            instances.append(_instance(buf, pos, pos + n))
            pos += n
        elif tag == 0x12:
            if adapter_config is not None:
                raise Unsupported("repeated adapter_config merges")
            n = _len(buf, &pos, end)
            _check_any(buf, pos, pos + n)
            adapter_config = PyBytes_FromStringAndSize(<const char*>(buf + pos), n)
            pos += n
        elif tag == 0x1A:
            n = _len(buf, &pos, end)
            dedup_id = _utf8(buf, pos, n)
            pos += n
        elif (tag >> 3) in (1, 2, 3):
            raise Unsupported("field with an unexpected wire type")
        elif (tag >> 3) == 0:
            raise Unsupported("field number 0")
        else:
            pos = _skip(buf, pos, end, tag)
    return dedup_id, adapter_config, instances
