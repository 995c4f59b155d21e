from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class ValueType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VALUE_TYPE_UNSPECIFIED: _ClassVar[ValueType]
    STRING: _ClassVar[ValueType]
    INT64: _ClassVar[ValueType]
    DOUBLE: _ClassVar[ValueType]
    BOOL: _ClassVar[ValueType]
    TIMESTAMP: _ClassVar[ValueType]
    IP_ADDRESS: _ClassVar[ValueType]
    EMAIL_ADDRESS: _ClassVar[ValueType]
    URI: _ClassVar[ValueType]
    DNS_NAME: _ClassVar[ValueType]
    DURATION: _ClassVar[ValueType]
    STRING_MAP: _ClassVar[ValueType]
VALUE_TYPE_UNSPECIFIED: ValueType
STRING: ValueType
INT64: ValueType
DOUBLE: ValueType
BOOL: ValueType
TIMESTAMP: ValueType
IP_ADDRESS: ValueType
EMAIL_ADDRESS: ValueType
URI: ValueType
DNS_NAME: ValueType
DURATION: ValueType
STRING_MAP: ValueType
