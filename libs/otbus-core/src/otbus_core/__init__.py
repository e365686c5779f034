"""otbus-core: the pieces every otbus service shares."""

from otbus_core.codec import AVRO_CONTENT_TYPE, AvroCodec
from otbus_core.envelope import Envelope
from otbus_core.exceptions import (
    ConfigError,
    DecodeError,
    InvalidTenant,
    OtbusError,
    PoisonRecord,
    TransientError,
)
from otbus_core.records import DeadLetter, Outcome, OutRecord
from otbus_core.settings import DatabaseSettings, OtbusSettings, load_settings

__all__ = [
    "AVRO_CONTENT_TYPE",
    "AvroCodec",
    "ConfigError",
    "DatabaseSettings",
    "DeadLetter",
    "DecodeError",
    "Envelope",
    "InvalidTenant",
    "OtbusError",
    "OtbusSettings",
    "OutRecord",
    "Outcome",
    "PoisonRecord",
    "TransientError",
    "load_settings",
]
