from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class TemplateVariety(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEMPLATE_VARIETY_CHECK: _ClassVar[TemplateVariety]
    TEMPLATE_VARIETY_REPORT: _ClassVar[TemplateVariety]
    TEMPLATE_VARIETY_QUOTA: _ClassVar[TemplateVariety]
    TEMPLATE_VARIETY_ATTRIBUTE_GENERATOR: _ClassVar[TemplateVariety]
    TEMPLATE_VARIETY_CHECK_WITH_OUTPUT: _ClassVar[TemplateVariety]
TEMPLATE_VARIETY_CHECK: TemplateVariety
TEMPLATE_VARIETY_REPORT: TemplateVariety
TEMPLATE_VARIETY_QUOTA: TemplateVariety
TEMPLATE_VARIETY_ATTRIBUTE_GENERATOR: TemplateVariety
TEMPLATE_VARIETY_CHECK_WITH_OUTPUT: TemplateVariety
TEMPLATE_VARIETY_FIELD_NUMBER: _ClassVar[int]
template_variety: _descriptor.FieldDescriptor
TEMPLATE_NAME_FIELD_NUMBER: _ClassVar[int]
template_name: _descriptor.FieldDescriptor
