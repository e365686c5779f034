"""ingest-modbus settings and the Modbus source model."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from otbus_core.adapter import AdapterSettings
from otbus_core.sources import SourceConfig
from otbus_ingest_modbus.registers import MAX_BITS, MAX_REGISTERS, RegisterEntry

__all__ = ["ModbusSettings", "ModbusSource", "PollGroup"]

_SCHEMES = {"modbus": "tcp", "modbus+tcp": "tcp", "modbus+rtu-tcp": "rtu-tcp", "modbus+rtu": "rtu"}


class ModbusSettings(AdapterSettings):
    service_name: str = "ingest-modbus"
    port: int = 8093


class PollGroup(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    interval_ms: int = Field(ge=10, le=86_400_000)
    registers: list[RegisterEntry] = Field(min_length=1)


class ModbusSource(SourceConfig):
    """A Modbus device (or gateway): `modbus://host:502` (TCP), `modbus+rtu-tcp://host:port`
    (RTU framing over TCP, e.g. a serial gateway) or `modbus+rtu:///dev/ttyUSB0` (serial RTU)."""

    protocol: Literal["modbus"] = "modbus"
    unit_id: int = Field(1, ge=0, le=255, validation_alias=AliasChoices("unit_id", "slave_id"))
    """Unit (slave) id of entries that do not give their own."""
    timeout_s: float = Field(3.0, gt=0, le=60)
    polling_interval_ms: int = Field(1000, ge=10, le=86_400_000)
    """Interval of `registers`; poll groups have their own."""
    registers: list[RegisterEntry] = []
    poll_groups: list[PollGroup] = []
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    max_read_registers: int = Field(MAX_REGISTERS, ge=1, le=MAX_REGISTERS)
    max_read_bits: int = Field(MAX_BITS, ge=1, le=MAX_BITS)
    baudrate: int = Field(19200, ge=300)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in _SCHEMES:
            raise ValueError(f"scheme must be one of {sorted(_SCHEMES)} (e.g. modbus://host:502)")
        if _SCHEMES[u.scheme] == "rtu":
            if not u.path:
                raise ValueError("modbus+rtu:// needs a serial device path, e.g. modbus+rtu:///dev/ttyUSB0")
        elif not u.hostname:
            raise ValueError("needs a host, e.g. modbus://192.168.1.10:502")
        else:
            _ = u.port  # raises ValueError on a bad port
        return v

    @model_validator(mode="after")
    def _something_to_read(self) -> ModbusSource:
        if not self.registers and not self.poll_groups:
            raise ValueError("give registers or poll_groups: there is nothing to read")
        names = [g.name for g in self.poll_groups]
        if len(set(names)) != len(names):
            raise ValueError("poll_groups: names must be unique")
        return self

    @property
    def transport(self) -> str:
        return _SCHEMES[urlsplit(self.endpoint).scheme]

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""

    @property
    def tcp_port(self) -> int:
        return urlsplit(self.endpoint).port or 502

    @property
    def device(self) -> str:
        return urlsplit(self.endpoint).path

    def groups(self) -> list[tuple[str, float, list[RegisterEntry]]]:
        out = [("default", self.polling_interval_ms / 1000, list(self.registers))] if self.registers else []
        out += [(g.name, g.interval_ms / 1000, list(g.registers)) for g in self.poll_groups]
        return out
