"""Every --kafka-compression value the collector accepts is listed in its help and works with
kafka-python here: the codec's library is installed (pyproject's kafka-python extras) and a record
batch compressed with it reads back byte for byte."""

from __future__ import annotations

import dataclasses

import pytest
from kafka.producer.kafka import KafkaProducer
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from collector.settings import KAFKA_COMPRESSIONS, CollectorSettings


def test_help_lists_every_accepted_codec() -> None:
    field = {f.name: f for f in dataclasses.fields(CollectorSettings)}["kafka_compression"]
    help_text = field.metadata["help"]
    assert all(codec in help_text for codec in KAFKA_COMPRESSIONS), help_text


@pytest.mark.parametrize("codec", [c for c in KAFKA_COMPRESSIONS if c != "none"])
def test_codec_round_trips_through_kafka_python(codec: str) -> None:
    has_library, attrs = KafkaProducer._COMPRESSORS[codec]  # what KafkaProducer(compression_type=codec) checks
    assert has_library(), f"kafka-python cannot {codec}: its library is not installed"
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=attrs, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    values = [bytes([i % 251]) * (1000 + i) for i in range(50)]
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=1_700_000_000_000, key=b"call", value=value, headers=[])
    raw = bytes(builder.build())
    assert len(raw) < sum(map(len, values)) // 4  # it did compress
    batch = DefaultRecordBatch(raw)
    assert batch.compression_type == attrs
    assert [r.value for r in batch] == values
