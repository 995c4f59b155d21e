"""The pipeline's record decoders: the compiled CompiledChunkBuilder must agree with the
protobuf-runtime reference ChunkBuilder on valid, odd and malformed records."""

from __future__ import annotations

import math

import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.columns import build_columns
from pipeline import decode
from pipeline.decode import AGGREGATED_COLUMNS, STRING, ChunkBuilder, PoisonRecord
from schemas.apim.usage.v1 import usage_event_columns_pb2 as cols_pb
from schemas.apim.usage.v1 import usage_event_pb2 as pb


def fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def reference(capacity: int = 4) -> ChunkBuilder:
    return ChunkBuilder(AGGREGATED_COLUMNS, capacity)


def compiled(capacity: int = 4):
    # Imported directly: an install without the compiled module fails these tests (ImportError)
    # instead of skipping them.
    from pipeline._columns import CompiledChunkBuilder
    return CompiledChunkBuilder(AGGREGATED_COLUMNS, capacity)


def test_the_compiled_builder_is_built() -> None:
    """The fast path is what production runs; the install must have built it (setup.py requires it)."""
    from pipeline.builders import new_builder

    assert type(new_builder()).__module__ == "pipeline._columns"


BUILDERS = pytest.mark.parametrize("make", [reference, compiled], ids=["reference", "compiled"])


def materialise(chunk: decode.Chunk) -> dict:
    """Everything a chunk says, comparable with ==: numbers by dtype and exact bytes (NaN payloads too)."""
    out: dict = {"n": chunk.n}
    for name, arr in chunk.numbers.items():
        assert len(arr) == chunk.n
        out[name] = (arr.dtype.str, arr.tobytes())
    for name in chunk.strings:
        out[name] = chunk.string(name).tolist()
    return out


# --- random events ----------------------------------------------------------------------------

TEXT = st.one_of(st.sampled_from(["", "a", "GET", "/menu", "é", "日本語", "🍕", "a\x00b"]), st.text(max_size=10))
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
DOUBLE = st.one_of(st.sampled_from([0.0, -0.0, 0.0004, 1e300, -1e300, math.inf, -math.inf, math.nan]), st.floats())
ENUM = st.integers(-1, 4)


def _strategy(fd: FieldDescriptor):
    return {FieldDescriptor.TYPE_STRING: TEXT, FieldDescriptor.TYPE_INT32: INT32, FieldDescriptor.TYPE_INT64: INT64,
            FieldDescriptor.TYPE_DOUBLE: DOUBLE, FieldDescriptor.TYPE_BOOL: st.booleans(),
            FieldDescriptor.TYPE_ENUM: ENUM}[fd.type]


# Every aggregated field, and some the pipeline skips (the compiled builder must still validate them).
SKIPPED = ("source_instance", "user_agent", "error_message", "response_timestamp_ms", "target_response_code",
           "credential_kind", "security_latency_ms", "response_cache_hit")
FIELDS = {fd.name: _strategy(fd) for fd in pb.UsageEvent.DESCRIPTOR.fields
          if fd.name in {c.name for c in AGGREGATED_COLUMNS} - {"event_id"} or fd.name in SKIPPED}
FIELDS["properties"] = st.dictionaries(st.sampled_from(["k", "é", "route"]), TEXT, max_size=2)
EVENT = st.fixed_dictionaries({"call_index": INT32}, optional=FIELDS)
RICH_EVENT = st.fixed_dictionaries({"call_index": INT32, **FIELDS})  # every field present: big records


@st.composite
def records(draw, max_events: int = 6,
            rich: bool = False) -> tuple[bytes, list[dict], str]:
    events = draw(st.lists(RICH_EVENT if rich else st.one_of(EVENT, RICH_EVENT), min_size=int(rich),
                           max_size=max_events))
    call_id = draw(TEXT)
    batch = build_columns(events, call_id=call_id, producer_id=draw(TEXT), produced_ms=draw(INT64))
    if events and draw(st.booleans()):  # build_columns never writes event_id; the record format allows it
        ids = draw(st.lists(TEXT, min_size=len(events), max_size=len(events)))
        for e, i in zip(events, ids):
            e["event_id"] = i
        distinct = list(dict.fromkeys(ids))
        batch.event_id.values.extend(distinct)
        batch.event_id.codes.extend(distinct.index(i) for i in ids)
    return batch.SerializeToString(), events, call_id


def expected_column(name: str, events: list[dict]) -> list:
    fd = pb.UsageEvent.DESCRIPTOR.fields_by_name.get(name)
    default = "" if fd is None or fd.type == FieldDescriptor.TYPE_STRING else 0
    return [e.get(name, default) for e in events]


def _same_number(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# --- (a) valid records: both builders, several records, some not accepted ----------------------

@fast(80)
@given(st.lists(st.tuples(records(max_events=5), st.booleans()), min_size=1, max_size=4))
def test_builders_agree_on_valid_records_and_unaccepted_ones_leave_no_trace(batches: list) -> None:
    ref, comp, clean = reference(), compiled(), reference()
    accepted: list[dict] = []
    for (value, events, call_id), keep in batches:
        assert ref.add(value) == comp.add(value) == (len(events), call_id)
        if keep:
            ref.accept()
            comp.accept()
            clean.add(value)
            clean.accept()
            accepted.extend(events)
    assert ref.n == comp.n == len(accepted)
    got_ref, got_comp = materialise(ref.take()), materialise(comp.take())
    assert got_comp == got_ref
    assert got_ref == materialise(clean.take())
    for col in AGGREGATED_COLUMNS:  # and the values are the events' own
        want = expected_column(col.name, accepted)
        got = got_ref[col.name]
        if col.kind == STRING:
            assert got == want, col.name
        else:
            arr = np.frombuffer(got[1], np.dtype(got[0]))
            assert len(arr) == len(want)
            if col.kind == decode.DOUBLE:
                assert all(_same_number(a, b) for a, b in zip(arr.tolist(), want)), col.name
            elif col.kind == decode.BOOL:
                assert arr.tolist() == [bool(w) for w in want], col.name
            else:
                assert arr.tolist() == want, col.name
    assert ref.take().n == comp.take().n == 0  # take starts a new chunk


# --- (b) arbitrary and mutated bytes ----------------------------------------------------------

@st.composite
def mutated(draw) -> bytes:
    value = bytearray(draw(records(max_events=2, rich=True))[0])
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "append", "high", "high"]))
        at = draw(st.integers(0, max(len(value) - 1, 0)))
        high = [i for i, b in enumerate(value) if b >= 0x80]
        if kind == "high" and high:  # keeps varints whole, breaks UTF-8 (a lead byte <-> a continuation byte)
            value[high[at % len(high)]] ^= 0x40
        elif kind == "truncate":
            del value[at:]
        elif kind == "flip" and value:
            value[at] ^= draw(st.one_of(st.sampled_from([0x80, 0xC0, 0x01]), st.integers(1, 255)))
        elif kind == "insert":
            value[at:at] = draw(st.binary(min_size=1, max_size=6))
        else:
            value += draw(st.binary(min_size=1, max_size=12))
    return bytes(value)


def _outcome(builder, prefix: bytes, value: bytes):
    builder.add(prefix)
    builder.accept()
    try:
        result = builder.add(value)
    except PoisonRecord:
        result = "poison"
    else:
        builder.accept()
    return result, materialise(builder.take())


@fast(200)
@given(records(max_events=3), st.one_of(st.binary(max_size=120), mutated()))
def test_builders_agree_on_malformed_bytes(prefix, value: bytes) -> None:
    assert _outcome(compiled(), prefix[0], value) == _outcome(reference(), prefix[0], value)


def _rich_record() -> bytes:
    """Non-ASCII text in aggregated and skipped columns, the header and properties; negative varints."""
    names = ["api_name", "api_resource_path", "application_tier", "user_name", "destination",  # aggregated
             "source_instance", "user_agent", "error_message"]  # skipped
    events = [{"call_index": i, **{n: f"{n[:3]}é{i}" for n in names}, "properties": {"k": "日本"},
               "response_code": -i, "request_size_bytes": -(2**40) * i, "key_type": i, "response_latency_ms": i / 3,
               "backend_latency_ms": 1e300, "security_latency_ms": 2.5, "response_cache_hit": True,
               "response_timestamp_ms": -7, "throttled_out": bool(i)} for i in range(2)]
    return build_columns(events, call_id="cåll", producer_id="prödücer", produced_ms=-1).SerializeToString()


def test_builders_agree_on_every_single_byte_corruption() -> None:
    prefix, value = PACKED.SerializeToString(), _rich_record()
    variants = [value[:i] for i in range(len(value))]
    variants += [value[:i] + bytes([value[i] ^ m]) + value[i + 1:]
                 for i in range(len(value)) for m in (0x80, 0x40, 0x01, 0xFF)]
    outcomes = {"poison": 0, "ok": 0}
    comp, ref = compiled(), reference()  # take() starts each one afresh
    for v in variants:
        got = _outcome(comp, prefix, v)
        assert got == _outcome(ref, prefix, v), v
        outcomes["poison" if got[0] == "poison" else "ok"] += 1
    assert outcomes["poison"] + outcomes["ok"] == 5 * len(value)
    assert outcomes["ok"] >= len(value)  # many corruptions only change values: both builders accept those


# --- (c) hand-built edge cases ----------------------------------------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    if wire == 2:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire) + payload


def _poison(make, value: bytes) -> str:
    builder = make()
    with pytest.raises(PoisonRecord) as exc:
        builder.add(value)
    builder.add(b"")
    builder.accept()
    assert builder.take().n == 0
    return str(exc.value)


@BUILDERS
def test_column_shorter_than_count_names_the_column(make) -> None:
    msg = _poison(make, cols_pb.UsageEventColumns(count=3, response_code=[200, 404]).SerializeToString())
    assert msg == "column response_code has 2 entries, the batch has 3"
    batch = cols_pb.UsageEventColumns(count=3)
    batch.api_name.values.extend(["a", "b"])
    batch.api_name.codes.extend([0, 1])
    assert _poison(make, batch.SerializeToString()) == "column api_name has 2 entries, the batch has 3"


@BUILDERS
def test_string_code_beyond_values_is_poison(make) -> None:
    batch = cols_pb.UsageEventColumns(count=2)
    batch.application_id.values.append("app")
    batch.application_id.codes.extend([0, 1])
    assert _poison(make, batch.SerializeToString()) == "column application_id has a code beyond its 1 values"
    batch = cols_pb.UsageEventColumns(count=1)
    batch.user_name.codes.append(0)  # codes without any values
    assert _poison(make, batch.SerializeToString()) == "column user_name has a code beyond its 0 values"


@BUILDERS
def test_count_out_of_range_is_poison(make) -> None:
    assert _poison(make, cols_pb.UsageEventColumns(count=-1).SerializeToString()) == "event count -1 out of range"
    too_many = cols_pb.UsageEventColumns(count=decode.MAX_EVENTS_PER_RECORD + 1).SerializeToString()
    assert _poison(make, too_many) == "event count 1000001 out of range"
    assert "not a UsageEventColumns batch" in _poison(make, b"\x0a\x05ab")  # truncated field
    with pytest.raises(PoisonRecord, match="empty record"):
        make().add(None)


def _decoded(make, *values: bytes) -> tuple[list, dict]:
    builder, results = make(), []
    for v in values:
        results.append(builder.add(v))
        builder.accept()
    return results, materialise(builder.take())


PACKED = cols_pb.UsageEventColumns(count=2, response_code=[200, -1], response_latency_ms=[1.5, 0.25],
                                   throttled_out=[False, True], request_timestamp_ms=[-(2**63), 2**63 - 1])
PACKED.api_method.values.extend(["GET", "PUT"])
PACKED.api_method.codes.extend([1, 0])
PACKED.header.call_id = "call-1"


@BUILDERS
def test_unpacked_numeric_encoding_equals_packed(make) -> None:
    unpacked = b"".join([
        _field(1000, 0, _varint(2)), _field(1001, 2, _field(3, 2, b"call-1")),
        _field(40, 0, _varint(200)), _field(40, 0, _varint(-1)),
        _field(50, 1, np.float64(1.5).tobytes()), _field(50, 1, np.float64(0.25).tobytes()),
        _field(42, 0, _varint(0)), _field(42, 0, _varint(1)),
        _field(4, 0, _varint(-(2**63))), _field(4, 0, _varint(2**63 - 1)),
        _field(15, 2, _field(1, 2, b"GET") + _field(1, 2, b"PUT") + _field(2, 0, _varint(1)) + _field(2, 0, b"\0")),
    ])
    results, got = _decoded(make, unpacked)
    assert results == [(2, "call-1")]
    assert got == _decoded(make, PACKED.SerializeToString())[1]
    assert got["api_method"] == ["PUT", "GET"]
    assert np.frombuffer(got["response_code"][1], np.int64).tolist() == [200, -1]
    assert np.frombuffer(got["request_timestamp_ms"][1], np.int64).tolist() == [-(2**63), 2**63 - 1]


def test_string_column_given_twice_is_merged_like_protobuf() -> None:
    first = cols_pb.UsageEventColumns(count=3)
    first.api_name.values.extend(["a", "b"])
    first.api_name.codes.extend([0, 1])
    second = cols_pb.StringColumn(values=["c"], codes=[2])
    value = first.SerializeToString() + _field(10, 2, second.SerializeToString())
    assert list(cols_pb.UsageEventColumns.FromString(value).api_name.values) == ["a", "b", "c"]
    ref, comp = _decoded(reference, value), _decoded(compiled, value)
    assert comp == ref
    assert ref[0] == [(3, "")] and ref[1]["api_name"] == ["a", "b", "c"]
    twice_header = value + _field(1001, 2, _field(3, 2, b"late"))  # headers merge too: the last call id wins
    assert _decoded(compiled, twice_header) == _decoded(reference, twice_header)
    assert _decoded(reference, twice_header)[0] == [(3, "late")]


@BUILDERS
def test_unknown_fields_are_skipped(make) -> None:
    unknown = (_field(999, 0, _varint(7)) + _field(5000, 2, b"\xff\xfe garbage") + _field(77777, 5, b"1234")
               + _field(12345, 1, b"12345678") + _field(9, 2, b"\xff"))
    batch = cols_pb.UsageEventColumns()
    batch.CopyFrom(PACKED)
    plain = batch.SerializeToString()
    inner = _field(15, 2, batch.api_method.SerializeToString() + _field(7, 2, b"\xff") + _field(3, 0, b"\x01"))
    header = _field(1001, 2, batch.header.SerializeToString() + _field(9, 2, b"\xff"))
    batch.ClearField("api_method")
    batch.ClearField("header")
    weird = unknown + batch.SerializeToString() + inner + unknown + header
    assert _decoded(make, weird) == _decoded(make, plain)
    assert _decoded(make, weird)[0] == [(2, "call-1")]


@BUILDERS
def test_record_without_columns(make) -> None:
    batch = cols_pb.UsageEventColumns()
    batch.header.call_id = "x"
    batch.header.producer_id = "p"
    results, got = _decoded(make, b"", batch.SerializeToString(), PACKED.SerializeToString(), b"")
    assert results == [(0, ""), (0, "x"), (2, "call-1"), (0, "")]
    assert got == _decoded(make, PACKED.SerializeToString())[1]
    assert _decoded(make, b"")[1]["n"] == 0
