from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DeadLetter(_message.Message):
    __slots__ = ("reason", "reason_code", "stage", "rejected_timestamp_ms", "dedup_id", "instance_index", "instance_name", "instance", "topic", "partition", "offset", "record_value")
    REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    DEDUP_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RECORD_VALUE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    reason_code: str
    stage: str
    rejected_timestamp_ms: int
    dedup_id: str
    instance_index: int
    instance_name: str
    instance: bytes
    topic: str
    partition: int
    offset: int
    record_value: bytes
    def __init__(self, reason: _Optional[str] = ..., reason_code: _Optional[str] = ..., stage: _Optional[str] = ..., rejected_timestamp_ms: _Optional[int] = ..., dedup_id: _Optional[str] = ..., instance_index: _Optional[int] = ..., instance_name: _Optional[str] = ..., instance: _Optional[bytes] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., record_value: _Optional[bytes] = ...) -> None: ...
