"""Decoding Mixer calls: every Value kind, and the compiled decoder agreeing with
the protobuf-runtime reference on valid, odd and malformed input."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import _wire, decode, values
from core.wire import WireUnsupported
from schemas.mixer.template.metric import template_handler_service_pb2 as m
from schemas.policy.v1beta1 import type_pb2 as t


def _v(**kw) -> t.Value:
    return t.Value(**kw)


KINDS = [
    (_v(string_value="GET"), "GET"),
    (_v(int64_value=-42), -42),
    (_v(double_value=2.5), 2.5),
    (_v(bool_value=True), True),
    (_v(ip_address_value=t.IPAddress(value=bytes([10, 1, 2, 3]))), ("ip", bytes([10, 1, 2, 3]))),
    (_v(timestamp_value=t.TimeStamp(value=timestamp_pb2.Timestamp(seconds=1700000000, nanos=123456789))),
     ("ts", 1700000000123)),
    (_v(duration_value=t.Duration(value=duration_pb2.Duration(seconds=1, nanos=500_000_000))), ("dur", 1500.0)),
    (_v(email_address_value=t.EmailAddress(value="a@b.c")), "a@b.c"),
    (_v(dns_name_value=t.DNSName(value="svc.cluster.local")), "svc.cluster.local"),
    (_v(uri_value=t.Uri(value="https://x/y")), "https://x/y"),
    (_v(string_map_value=t.StringMap(value={"k": "v"})), ("map", {"k": "v"})),
    (_v(), None),
]
IDS = ["string", "int64", "double", "bool", "ip", "timestamp", "duration", "email", "dns", "uri", "map", "unset"]


def _call(value: t.Value) -> bytes:
    req = m.HandleMetricRequest(dedup_id="1")
    inst = req.instances.add(name="x.instance.ns")
    inst.dimensions["d"].CopyFrom(value)
    inst.value.CopyFrom(value)
    return req.SerializeToString()


@pytest.mark.parametrize(("value", "expected"), KINDS, ids=IDS)
def test_every_kind_decodes_the_same_both_ways(value: t.Value, expected: object) -> None:
    assert decode.value_to_native(value) == expected
    raw = _call(value)
    for decoded in (decode.decode_reference(raw), decode.decode_call(raw)):
        assert decoded[0] == "1"
        (inst,) = decoded[2]
        assert inst[0] == "x.instance.ns"
        assert inst[2] == {"d": expected}


def test_the_compiled_decoder_is_built() -> None:
    """The fast path is what production runs; the install must have built it."""
    assert decode._wire.__file__.endswith(".so")


def test_both_compiled_decoders_give_up_with_the_one_shared_error() -> None:
    """collector._wire and pipeline._columns share core/_wire_primitives.pxd and its WireUnsupported."""
    from pipeline import _columns
    assert _wire.Unsupported is _columns.Unsupported is WireUnsupported
    with pytest.raises(WireUnsupported, match="truncated varint"):
        _wire.decode_call(b"\x0a")  # tag of field 1 (length-delimited), then nothing: the length is missing


def test_empty_submessages_are_accepted() -> None:
    """gogo nullable=false senders emit empty sub-messages; they read as zero values."""
    v = t.Value()
    v.timestamp_value.SetInParent()
    (inst,) = decode.decode_call(_call(v))[2]
    assert inst[2]["d"] == ("ts", 0)


def test_malformed_bytes_are_rejected_with_a_reason() -> None:
    with pytest.raises(decode.MalformedCall, match="malformed HandleMetricRequest"):
        decode.decode_call(b"\x0a\x05abc")
    bad_utf8 = _call(_v(string_value="é")).replace("é".encode(), b"\xff\xfe")
    with pytest.raises(decode.MalformedCall):
        decode.decode_call(bad_utf8)


def test_instance_span_round_trips() -> None:
    raw = _call(_v(string_value="GET"))
    decoded = decode.decode_call(raw)
    msg = decode.instance_message(raw, decoded[2][0], 0)
    assert msg.name == "x.instance.ns" and msg.dimensions["d"].string_value == "GET"


_text = st.text(max_size=12)
_values = st.one_of(
    _text.map(lambda s: _v(string_value=s)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: _v(int64_value=i)),
    st.floats(allow_nan=False).map(lambda f: _v(double_value=f)),
    st.booleans().map(lambda b: _v(bool_value=b)),
    st.binary(max_size=17).map(lambda b: _v(ip_address_value=t.IPAddress(value=b))),
    st.tuples(st.integers(-(2**40), 2**40), st.integers(-(10**9), 10**9)).map(
        lambda p: _v(timestamp_value=t.TimeStamp(value=timestamp_pb2.Timestamp(seconds=p[0], nanos=p[1])))),
    st.tuples(st.integers(-(2**40), 2**40), st.integers(-(10**9), 10**9)).map(
        lambda p: _v(duration_value=t.Duration(value=duration_pb2.Duration(seconds=p[0], nanos=p[1])))),
    _text.map(lambda s: _v(dns_name_value=t.DNSName(value=s))),
    st.dictionaries(_text, _text, max_size=3).map(lambda d: _v(string_map_value=t.StringMap(value=d))),
    st.just(_v()),
)
_instances = st.builds(
    lambda name, value, dims, mrt: m.InstanceMsg(name=name, value=value, dimensions=dims,
                                                 monitored_resource_type=mrt),
    _text, _values, st.dictionaries(_text, _values, max_size=5), _text)
_requests = st.builds(
    lambda insts, dedup, cfg: m.HandleMetricRequest(
        instances=insts, dedup_id=dedup,
        adapter_config=any_pb2.Any(type_url=cfg, value=b"\x0a\x01x") if cfg else None),
    st.lists(_instances, max_size=4), _text, st.one_of(st.just(""), _text))


def _normal(decoded: decode.Decoded) -> tuple:
    dedup_id, config, instances = decoded
    return dedup_id, config is not None, [(i[0], i[1], i[2]) for i in instances]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests)
def test_compiled_and_reference_agree_on_valid_calls(req: m.HandleMetricRequest) -> None:
    raw = req.SerializeToString()
    assert _normal(decode.decode_call(raw)) == _normal(decode.decode_reference(raw))


def _varint(n: int) -> bytes:
    """A base-128 varint (n >= 0), so the odd inputs below are built without the stubs."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, body: bytes) -> bytes:
    """A length-delimited field, encoded by hand (not by the stubs)."""
    return _varint(field << 3 | 2) + _varint(len(body)) + body


def _agree(raw: bytes) -> None:
    """Both decoders reject ``raw``, or both accept it with the same result."""
    try:
        expected = _normal(decode.decode_reference(raw))
    except decode.MalformedCall:
        with pytest.raises(decode.MalformedCall):
            decode.decode_call(raw)
        return
    assert _normal(decode.decode_call(raw)) == expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests, st.data())
def test_compiled_and_reference_agree_on_corrupted_bytes(req: m.HandleMetricRequest, data: st.DataObject) -> None:
    raw = bytearray(req.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _agree(bytes(raw[: data.draw(st.integers(0, len(raw)))]))


# A map entry holding an unknown field (an unknown field number, or the key or value with the wrong wire
# type, which the runtime files as unknown too). upb, the default runtime, leaves such an entry out of the
# map and keeps it among the parent's unknown fields; the pure-Python runtime inserts it. _wire.pyx used to
# skip the field and insert the entry, so it read a dimension (often the '' key) that the reference had not.
_UNKNOWN_FIELD_IN_MAP_ENTRY = [
    # request{1: instance{2: entry{3: varint 1}}}: the smallest input of the kind the corrupted-bytes
    # property found (an entry whose value tag a flipped byte had turned into an unknown fixed32 field 423);
    # this entry has no key (reads as '') and no value, only an unknown varint field 3: the extra '' key.
    bytes.fromhex("0a0412021801"),
    # entry{1: varint 1}: the key's field number with wire type 0 instead of 2.
    bytes.fromhex("0a0412020801"),
    # entry{1: "a", 2: varint 1}: a keyed entry whose value has wire type 0 instead of 2.
    _ld(1, _ld(2, _ld(1, b"a") + b"\x10\x01")),
    # entry{1: "a", 5: fixed32 0} after entry{1: "a", 2: Value{string "x"}}: upb keeps the first value.
    _ld(1, _ld(2, _ld(1, b"a") + _ld(2, _ld(1, b"x"))) + _ld(2, _ld(1, b"a") + b"\x2d\x00\x00\x00\x00")),
    # The same rule one level down: dimension "a" is a StringMap whose entry {1: "k", 2: "v"} also holds
    # an unknown varint field 3.
    _ld(1, _ld(2, _ld(1, b"a") + _ld(2, _ld(11, _ld(1, _ld(1, b"k") + _ld(2, b"v") + b"\x18\x01"))))),
]


@pytest.mark.parametrize("raw", _UNKNOWN_FIELD_IN_MAP_ENTRY,
                         ids=["no-key-unknown-varint", "key-wire-type", "value-wire-type", "second-entry-fixed32",
                              "string-map-entry"])
def test_map_entry_with_an_unknown_field_decodes_as_the_runtime_does(raw: bytes) -> None:
    """What the runtime does with such an entry depends on its backend, so the compiled decoder declines it."""
    decode.decode_reference(raw)  # the runtime accepts every one of these
    _agree(raw)
    with pytest.raises(WireUnsupported, match="map entry with an unknown field"):
        _wire.decode_call(raw)


_entry_field = st.one_of(
    st.builds(lambda f, n: _varint(f << 3) + _varint(n), st.sampled_from([1, 2, 3, 16]), st.integers(0, 2**64 - 1)),
    st.builds(lambda f, b: _varint(f << 3 | 1) + b, st.sampled_from([1, 2, 3]), st.binary(min_size=8, max_size=8)),
    st.builds(lambda f, b: _varint(f << 3 | 5) + b, st.sampled_from([1, 2, 3]), st.binary(min_size=4, max_size=4)),
    st.builds(_ld, st.sampled_from([1, 2, 3, 16]),
              st.one_of(_text.map(str.encode), _values.map(lambda v: v.SerializeToString()), st.binary(max_size=6))),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_entry_field, max_size=4).map(b"".join), max_size=4))
def test_compiled_and_reference_agree_on_odd_map_entries(entries: list[bytes]) -> None:
    """Entries with missing, repeated, unknown or mistyped fields: rare in random corruption, so built directly."""
    _agree(_ld(1, b"".join(_ld(2, entry) for entry in entries)))


@pytest.mark.parametrize(
    ("fn", "value", "message"),
    [
        (values.as_int, "abc", "not an integer"),
        (values.as_int, True, "bool"),
        (values.as_int, float("nan"), "finite"),
        (values.as_timestamp_ms, "yesterday", "cannot be used as a timestamp"),
        (values.as_text, ("map", {"a": "b"}), "string_map"),
        (values.as_duration_ms, ("ts", 5), "timestamp cannot be used as a duration"),
        (values.as_text, ("ip", b"\x01\x02\x03"), "4 or 16 bytes"),
    ],
)
def test_wrong_kind_is_named(fn, value, message: str) -> None:
    with pytest.raises(values.ValueKindError, match=message):
        fn(value)


def test_readings() -> None:
    assert values.as_text(("ip", bytes(10) + b"\xff\xff" + bytes([192, 168, 0, 9]))) == "192.168.0.9"
    assert values.as_text(("ip", bytes(15) + b"\x01")) == "::1"
    assert values.as_int("1") == 1
    assert values.as_duration_ms(("dur", 12.5)) == 12.5
    assert values.as_timestamp_ms(1_700_000_000_000) == 1_700_000_000_000
    assert values.as_bool("true") is True
