"""Register maps: what to read from a Modbus device, how reads are merged, how values decode.

A map entry names a table (coil, discrete, holding, input), an address, a data type with
byte and word order, and optionally `count` (that many consecutive values, named
`<name>_<i>`), scale and offset. Reads of one unit id and table are merged into one
request while the addresses are contiguous and the protocol limit (125 registers, 2000
bits) holds.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MAX_BITS",
    "MAX_REGISTERS",
    "DataType",
    "Point",
    "Read",
    "RegisterEntry",
    "Table",
    "decode",
    "plan_reads",
]

MAX_REGISTERS = 125  # registers per read (function codes 3 and 4)
MAX_BITS = 2000  # coils or discrete inputs per read (function codes 1 and 2)


class Table(StrEnum):
    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def bits(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE)


_TABLE_ALIASES = {
    "coils": "coil",
    "discrete_input": "discrete",
    "discrete_inputs": "discrete",
    "holding_register": "holding",
    "holding_registers": "holding",
    "input_register": "input",
    "input_registers": "input",
}


class DataType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


_TYPE_ALIASES = {
    "float": "float32",
    "real": "float32",
    "double": "float64",
    "int": "int16",
    "short": "int16",
    "uint": "uint16",
    "word": "uint16",
    "dint": "int32",
    "dword": "uint32",
    "long": "int32",
    "boolean": "bool",
    "bit": "bool",
    "str": "string",
}

_WIDTH = {  # registers per value
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
}
_FORMAT = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.FLOAT32: "f",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT64: "d",
}
# the type the normalizer sees (declared type, in our words)
_DECLARED = {
    DataType.BOOL: "Boolean",
    DataType.FLOAT32: "Float",
    DataType.FLOAT64: "Double",
    DataType.STRING: "String",
}


class RegisterEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: int = Field(ge=0, le=65535)
    type: Table = Table.HOLDING
    data_type: DataType = DataType.UINT16
    name: str | None = Field(None, pattern=r"^[^/\s][^/]{0,127}$")
    """Tag name (the source's address for it); `<type>_<address>` when not given."""
    count: int = Field(1, ge=1, le=65536)
    """How many consecutive values of this type (named `<name>_<i>` when more than one)."""
    length: int = Field(1, ge=1, le=125)
    """Registers a string takes."""
    unit_id: int | None = Field(None, ge=0, le=255)
    byte_order: Literal["big", "little"] | None = None
    word_order: Literal["big", "little"] | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    signal_type: str | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _table_alias(cls, v: object) -> object:
        return _TABLE_ALIASES.get(v.lower(), v.lower()) if isinstance(v, str) else v

    @field_validator("data_type", mode="before")
    @classmethod
    def _type_alias(cls, v: object) -> object:
        return _TYPE_ALIASES.get(v.lower(), v.lower()) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _fits(self) -> RegisterEntry:
        if self.type.bits and self.data_type is not DataType.BOOL:
            raise ValueError(f"a {self.type.value} holds bits: data_type must be bool, not {self.data_type.value}")
        if not self.type.bits and self.data_type is DataType.BOOL:
            raise ValueError("bool is read from coils or discrete inputs (type: coil or discrete)")
        if self.address + self.width * self.count > 65536:
            raise ValueError("the values run past address 65535")
        if (self.scale != 1.0 or self.offset != 0.0) and self.data_type in (DataType.BOOL, DataType.STRING):
            raise ValueError(f"scale and offset apply to numbers, not {self.data_type.value}")
        return self

    @property
    def width(self) -> int:
        """Addresses one value takes."""
        if self.data_type is DataType.STRING:
            return self.length
        return _WIDTH.get(self.data_type, 1)


@dataclass(frozen=True, slots=True)
class Point:
    """One value to read: a tag of the source."""

    tag: str
    unit_id: int
    table: Table
    address: int
    width: int
    data_type: DataType
    byte_order: str
    word_order: str
    scale: float
    offset: float
    unit: str
    signal_type: str | None

    @property
    def declared_type(self) -> str:
        if self.scale != 1.0 or self.offset != 0.0:
            return "Double"
        return _DECLARED.get(self.data_type, "Int64")


def points(
    entries: Iterable[RegisterEntry], unit_id: int, byte_order: str = "big", word_order: str = "big"
) -> list[Point]:
    out: list[Point] = []
    for e in entries:
        base = e.name or f"{e.type.value}_{e.address}"
        for i in range(e.count):
            out.append(
                Point(
                    tag=base if e.count == 1 else f"{base}_{i}",
                    unit_id=e.unit_id if e.unit_id is not None else unit_id,
                    table=e.type,
                    address=e.address + i * e.width,
                    width=e.width,
                    data_type=e.data_type,
                    byte_order=e.byte_order or byte_order,
                    word_order=e.word_order or word_order,
                    scale=e.scale,
                    offset=e.offset,
                    unit=e.unit,
                    signal_type=e.signal_type,
                )
            )
    return out


@dataclass(frozen=True, slots=True)
class Read:
    """One request: a run of addresses of one unit id and table, and the points in it."""

    unit_id: int
    table: Table
    address: int
    count: int
    points: tuple[Point, ...]


def plan_reads(pts: Sequence[Point], max_registers: int = MAX_REGISTERS, max_bits: int = MAX_BITS) -> list[Read]:
    """Merge points into as few requests as contiguous addresses and the protocol limits allow."""
    reads: list[Read] = []
    key = lambda p: (p.unit_id, p.table.value, p.address)  # noqa: E731
    run: list[Point] = []
    for p in sorted(pts, key=key):
        limit = max_bits if p.table.bits else max_registers
        if p.width > limit:
            raise ValueError(f"{p.tag}: {p.width} registers is more than one read can take ({limit})")
        if run:
            first = run[0]
            end = max(q.address + q.width for q in run)
            contiguous = (first.unit_id, first.table) == (p.unit_id, p.table) and p.address <= end
            if contiguous and max(end, p.address + p.width) - first.address <= limit:
                run.append(p)
                continue
            reads.append(_read(run))
            run = []
        run.append(p)
    if run:
        reads.append(_read(run))
    return reads


def _read(run: list[Point]) -> Read:
    start = run[0].address
    end = max(p.address + p.width for p in run)
    return Read(run[0].unit_id, run[0].table, start, end - start, tuple(run))


def decode(
    p: Point, words: Sequence[int] | None = None, bits: Sequence[bool] | None = None
) -> bool | int | float | str:
    """The value of `p` from the registers (or bits) of its own addresses."""
    if p.data_type is DataType.BOOL:
        if not bits:
            raise ValueError("no bit for a bool point")
        return bool(bits[0])
    if words is None or len(words) != p.width:
        raise ValueError(f"{p.width} registers expected, got {0 if words is None else len(words)}")
    regs = list(words)
    if p.word_order == "little":
        regs.reverse()
    raw = b"".join(w.to_bytes(2, "big") if p.byte_order == "big" else w.to_bytes(2, "little") for w in regs)
    if p.data_type is DataType.STRING:
        return raw.split(b"\x00", 1)[0].decode("latin-1").rstrip()
    (value,) = struct.unpack(">" + _FORMAT[p.data_type], raw)
    if p.scale != 1.0 or p.offset != 0.0:
        return float(value) * p.scale + p.offset
    return value  # type: ignore[no-any-return]
