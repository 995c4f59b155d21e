from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_SOURCE_UNSPECIFIED: _ClassVar[EventSource]
    MIXER_METRIC_ADAPTER: _ClassVar[EventSource]
    ENVOY_ACCESS_LOG: _ClassVar[EventSource]
    API_GATEWAY: _ClassVar[EventSource]

class KeyType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_TYPE_UNSPECIFIED: _ClassVar[KeyType]
    PRODUCTION: _ClassVar[KeyType]
    SANDBOX: _ClassVar[KeyType]

class CredentialKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREDENTIAL_KIND_UNSPECIFIED: _ClassVar[CredentialKind]
    NONE: _ClassVar[CredentialKind]
    JWT: _ClassVar[CredentialKind]
    OPAQUE_TOKEN: _ClassVar[CredentialKind]
    API_KEY: _ClassVar[CredentialKind]
    UNRESOLVED: _ClassVar[CredentialKind]
EVENT_SOURCE_UNSPECIFIED: EventSource
MIXER_METRIC_ADAPTER: EventSource
ENVOY_ACCESS_LOG: EventSource
API_GATEWAY: EventSource
KEY_TYPE_UNSPECIFIED: KeyType
PRODUCTION: KeyType
SANDBOX: KeyType
CREDENTIAL_KIND_UNSPECIFIED: CredentialKind
NONE: CredentialKind
JWT: CredentialKind
OPAQUE_TOKEN: CredentialKind
API_KEY: CredentialKind
UNRESOLVED: CredentialKind

class UsageEvent(_message.Message):
    __slots__ = ("event_id", "source", "source_instance", "request_timestamp_ms", "response_timestamp_ms", "collected_timestamp_ms", "correlation_id", "api_name", "api_version", "api_context", "api_resource_template", "api_resource_path", "api_method", "api_creator", "api_creator_tenant_domain", "api_hostname", "api_id", "application_id", "application_name", "application_owner", "consumer_key", "key_type", "subscription_tier", "application_tier", "credential_kind", "credential_hash", "user_name", "user_tenant_domain", "user_ip", "user_agent", "response_code", "target_response_code", "throttled_out", "throttled_out_reason", "fault", "error_code", "error_message", "error_type", "response_cache_hit", "response_latency_ms", "backend_latency_ms", "security_latency_ms", "throttling_latency_ms", "request_mediation_latency_ms", "response_mediation_latency_ms", "request_size_bytes", "response_size_bytes", "destination", "protocol", "gateway_type", "region_id", "source_workload", "source_namespace", "source_principal", "destination_workload", "destination_namespace", "destination_service", "destination_principal", "reporter", "properties")
    class PropertiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    API_NAME_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    API_RESOURCE_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    API_RESOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    API_METHOD_FIELD_NUMBER: _ClassVar[int]
    API_CREATOR_FIELD_NUMBER: _ClassVar[int]
    API_CREATOR_TENANT_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    API_HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    API_ID_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_NAME_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_OWNER_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_TIER_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_TIER_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_KIND_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_HASH_FIELD_NUMBER: _ClassVar[int]
    USER_NAME_FIELD_NUMBER: _ClassVar[int]
    USER_TENANT_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    USER_IP_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    TARGET_RESPONSE_CODE_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_OUT_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_OUT_REASON_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SECURITY_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    THROTTLING_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_MEDIATION_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_MEDIATION_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_TYPE_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    REPORTER_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    source: EventSource
    source_instance: str
    request_timestamp_ms: int
    response_timestamp_ms: int
    collected_timestamp_ms: int
    correlation_id: str
    api_name: str
    api_version: str
    api_context: str
    api_resource_template: str
    api_resource_path: str
    api_method: str
    api_creator: str
    api_creator_tenant_domain: str
    api_hostname: str
    api_id: str
    application_id: str
    application_name: str
    application_owner: str
    consumer_key: str
    key_type: KeyType
    subscription_tier: str
    application_tier: str
    credential_kind: CredentialKind
    credential_hash: str
    user_name: str
    user_tenant_domain: str
    user_ip: str
    user_agent: str
    response_code: int
    target_response_code: int
    throttled_out: bool
    throttled_out_reason: str
    fault: bool
    error_code: int
    error_message: str
    error_type: str
    response_cache_hit: bool
    response_latency_ms: float
    backend_latency_ms: float
    security_latency_ms: float
    throttling_latency_ms: float
    request_mediation_latency_ms: float
    response_mediation_latency_ms: float
    request_size_bytes: int
    response_size_bytes: int
    destination: str
    protocol: str
    gateway_type: str
    region_id: str
    source_workload: str
    source_namespace: str
    source_principal: str
    destination_workload: str
    destination_namespace: str
    destination_service: str
    destination_principal: str
    reporter: str
    properties: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., source: _Optional[_Union[EventSource, str]] = ..., source_instance: _Optional[str] = ..., request_timestamp_ms: _Optional[int] = ..., response_timestamp_ms: _Optional[int] = ..., collected_timestamp_ms: _Optional[int] = ..., correlation_id: _Optional[str] = ..., api_name: _Optional[str] = ..., api_version: _Optional[str] = ..., api_context: _Optional[str] = ..., api_resource_template: _Optional[str] = ..., api_resource_path: _Optional[str] = ..., api_method: _Optional[str] = ..., api_creator: _Optional[str] = ..., api_creator_tenant_domain: _Optional[str] = ..., api_hostname: _Optional[str] = ..., api_id: _Optional[str] = ..., application_id: _Optional[str] = ..., application_name: _Optional[str] = ..., application_owner: _Optional[str] = ..., consumer_key: _Optional[str] = ..., key_type: _Optional[_Union[KeyType, str]] = ..., subscription_tier: _Optional[str] = ..., application_tier: _Optional[str] = ..., credential_kind: _Optional[_Union[CredentialKind, str]] = ..., credential_hash: _Optional[str] = ..., user_name: _Optional[str] = ..., user_tenant_domain: _Optional[str] = ..., user_ip: _Optional[str] = ..., user_agent: _Optional[str] = ..., response_code: _Optional[int] = ..., target_response_code: _Optional[int] = ..., throttled_out: bool = ..., throttled_out_reason: _Optional[str] = ..., fault: bool = ..., error_code: _Optional[int] = ..., error_message: _Optional[str] = ..., error_type: _Optional[str] = ..., response_cache_hit: bool = ..., response_latency_ms: _Optional[float] = ..., backend_latency_ms: _Optional[float] = ..., security_latency_ms: _Optional[float] = ..., throttling_latency_ms: _Optional[float] = ..., request_mediation_latency_ms: _Optional[float] = ..., response_mediation_latency_ms: _Optional[float] = ..., request_size_bytes: _Optional[int] = ..., response_size_bytes: _Optional[int] = ..., destination: _Optional[str] = ..., protocol: _Optional[str] = ..., gateway_type: _Optional[str] = ..., region_id: _Optional[str] = ..., source_workload: _Optional[str] = ..., source_namespace: _Optional[str] = ..., source_principal: _Optional[str] = ..., destination_workload: _Optional[str] = ..., destination_namespace: _Optional[str] = ..., destination_service: _Optional[str] = ..., destination_principal: _Optional[str] = ..., reporter: _Optional[str] = ..., properties: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BatchHeader(_message.Message):
    __slots__ = ("producer_id", "produced_timestamp_ms", "call_id")
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCED_TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    producer_id: str
    produced_timestamp_ms: int
    call_id: str
    def __init__(self, producer_id: _Optional[str] = ..., produced_timestamp_ms: _Optional[int] = ..., call_id: _Optional[str] = ...) -> None: ...
