from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TagRow(_message.Message):
    __slots__ = ("tag_path", "numeric_value", "string_value", "quality", "event_time", "source_system_id", "site", "area", "line", "equipment", "signal_type", "tag_name", "quality_code", "data_type", "unit", "ingest_time", "event_id", "tenant", "protocol", "source_tag", "boolean_value")
    TAG_PATH_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SYSTEM_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    EQUIPMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_TYPE_FIELD_NUMBER: _ClassVar[int]
    TAG_NAME_FIELD_NUMBER: _ClassVar[int]
    QUALITY_CODE_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    INGEST_TIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TAG_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_VALUE_FIELD_NUMBER: _ClassVar[int]
    tag_path: str
    numeric_value: float
    string_value: str
    quality: str
    event_time: int
    source_system_id: str
    site: str
    area: str
    line: str
    equipment: str
    signal_type: str
    tag_name: str
    quality_code: int
    data_type: str
    unit: str
    ingest_time: int
    event_id: str
    tenant: str
    protocol: str
    source_tag: str
    boolean_value: bool
    def __init__(self, tag_path: _Optional[str] = ..., numeric_value: _Optional[float] = ..., string_value: _Optional[str] = ..., quality: _Optional[str] = ..., event_time: _Optional[int] = ..., source_system_id: _Optional[str] = ..., site: _Optional[str] = ..., area: _Optional[str] = ..., line: _Optional[str] = ..., equipment: _Optional[str] = ..., signal_type: _Optional[str] = ..., tag_name: _Optional[str] = ..., quality_code: _Optional[int] = ..., data_type: _Optional[str] = ..., unit: _Optional[str] = ..., ingest_time: _Optional[int] = ..., event_id: _Optional[str] = ..., tenant: _Optional[str] = ..., protocol: _Optional[str] = ..., source_tag: _Optional[str] = ..., boolean_value: _Optional[bool] = ...) -> None: ...
