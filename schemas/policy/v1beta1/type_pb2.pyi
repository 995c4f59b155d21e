from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Value(_message.Message):
    __slots__ = ("string_value", "int64_value", "double_value", "bool_value", "ip_address_value", "timestamp_value", "duration_value", "email_address_value", "dns_name_value", "uri_value", "string_map_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    DURATION_VALUE_FIELD_NUMBER: _ClassVar[int]
    EMAIL_ADDRESS_VALUE_FIELD_NUMBER: _ClassVar[int]
    DNS_NAME_VALUE_FIELD_NUMBER: _ClassVar[int]
    URI_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_MAP_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    int64_value: int
    double_value: float
    bool_value: bool
    ip_address_value: IPAddress
    timestamp_value: TimeStamp
    duration_value: Duration
    email_address_value: EmailAddress
    dns_name_value: DNSName
    uri_value: Uri
    string_map_value: StringMap
    def __init__(self, string_value: _Optional[str] = ..., int64_value: _Optional[int] = ..., double_value: _Optional[float] = ..., bool_value: bool = ..., ip_address_value: _Optional[_Union[IPAddress, _Mapping]] = ..., timestamp_value: _Optional[_Union[TimeStamp, _Mapping]] = ..., duration_value: _Optional[_Union[Duration, _Mapping]] = ..., email_address_value: _Optional[_Union[EmailAddress, _Mapping]] = ..., dns_name_value: _Optional[_Union[DNSName, _Mapping]] = ..., uri_value: _Optional[_Union[Uri, _Mapping]] = ..., string_map_value: _Optional[_Union[StringMap, _Mapping]] = ...) -> None: ...

class IPAddress(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    def __init__(self, value: _Optional[bytes] = ...) -> None: ...

class Duration(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: _duration_pb2.Duration
    def __init__(self, value: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TimeStamp(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: _timestamp_pb2.Timestamp
    def __init__(self, value: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DNSName(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: str
    def __init__(self, value: _Optional[str] = ...) -> None: ...

class StringMap(_message.Message):
    __slots__ = ("value",)
    class ValueEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: _containers.ScalarMap[str, str]
    def __init__(self, value: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EmailAddress(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: str
    def __init__(self, value: _Optional[str] = ...) -> None: ...

class Uri(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: str
    def __init__(self, value: _Optional[str] = ...) -> None: ...
