"""One mapping between a row message and its Delta table, used by the DDL helper and the emulator.

Zerobus writes protobuf rows into Delta columns of the same name: string -> STRING,
double -> DOUBLE, float -> FLOAT, int64 -> BIGINT, int32 -> INT, bool -> BOOLEAN,
bytes -> BINARY, and an int64 named `*_time` -> TIMESTAMP (microseconds since the
epoch, UTC). Nested, repeated and map fields are not used by otbus rows and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from google.protobuf import descriptor_pb2

__all__ = [
    "Column",
    "RowSchemaError",
    "arrow_type",
    "columns",
    "columns_from_proto",
    "create_table_request",
    "ddl",
    "sql_type",
]

_F = descriptor_pb2.FieldDescriptorProto
_TIMESTAMP_SUFFIX = "_time"

# proto field type -> (Delta SQL type, Arrow type)
_SCALARS: dict[int, tuple[str, pa.DataType]] = {
    _F.TYPE_STRING: ("STRING", pa.string()),
    _F.TYPE_DOUBLE: ("DOUBLE", pa.float64()),
    _F.TYPE_FLOAT: ("FLOAT", pa.float32()),
    _F.TYPE_INT64: ("BIGINT", pa.int64()),
    _F.TYPE_SINT64: ("BIGINT", pa.int64()),
    _F.TYPE_SFIXED64: ("BIGINT", pa.int64()),
    _F.TYPE_UINT32: ("BIGINT", pa.int64()),
    _F.TYPE_INT32: ("INT", pa.int32()),
    _F.TYPE_SINT32: ("INT", pa.int32()),
    _F.TYPE_SFIXED32: ("INT", pa.int32()),
    _F.TYPE_BOOL: ("BOOLEAN", pa.bool_()),
    _F.TYPE_BYTES: ("BINARY", pa.binary()),
}
_TIMESTAMP = ("TIMESTAMP", pa.timestamp("us", tz="UTC"))
# every SQL type name a row column can have, with its Arrow type
_ARROW: dict[str, pa.DataType] = {**dict(_SCALARS.values()), _TIMESTAMP[0]: _TIMESTAMP[1]}
# other spellings of the same types (Unity Catalog's type_name, deltalake's schema)
_ALIASES = {"LONG": "BIGINT", "INTEGER": "INT"}


def sql_type(name: str) -> str:
    """A type name as Delta, Unity Catalog or deltalake spell it, in the DDL's spelling (LONG -> BIGINT)."""
    upper = name.upper()
    return _ALIASES.get(upper, upper)


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type of a SQL type name; ValueError for a type rows never have."""
    arrow = _ARROW.get(sql_type(name))
    if arrow is None:
        raise ValueError(f"type {name} is not a row column type")
    return arrow


class RowSchemaError(ValueError):
    """The row message cannot be a Delta row (the field is named)."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    delta_type: str
    arrow_type: pa.DataType


def columns_from_proto(message: descriptor_pb2.DescriptorProto) -> list[Column]:
    """The Delta columns of a row message, in field-number order."""
    out: list[Column] = []
    for f in sorted(message.field, key=lambda f: f.number):
        if f.label == _F.LABEL_REPEATED:
            raise RowSchemaError(f"{message.name}.{f.name}: repeated fields are not supported")
        if f.type == _F.TYPE_ENUM:
            out.append(Column(f.name, "STRING", pa.string()))
            continue
        if f.type in (_F.TYPE_INT64, _F.TYPE_SINT64, _F.TYPE_SFIXED64) and f.name.endswith(_TIMESTAMP_SUFFIX):
            out.append(Column(f.name, *_TIMESTAMP))
            continue
        if f.type not in _SCALARS:
            kind = _F.Type.Name(f.type)
            raise RowSchemaError(f"{message.name}.{f.name}: {kind} fields are not supported (use a scalar type)")
        out.append(Column(f.name, *_SCALARS[f.type]))
    if not out:
        raise RowSchemaError(f"{message.name}: a row message needs at least one field")
    return out


def columns(descriptor: Any) -> list[Column]:
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)
    return columns_from_proto(proto)


def ddl(table: str, descriptor: Any) -> str:
    """`CREATE TABLE` for a Delta table that a stream of `descriptor` rows can write into."""
    cols = columns(descriptor)
    width = max(len(c.name) for c in cols)
    body = ",\n".join(f"  {c.name.ljust(width)} {c.delta_type}" for c in cols)
    return f"CREATE TABLE IF NOT EXISTS {table} (\n{body}\n) USING DELTA;\n"


def create_table_request(table: str, descriptor: Any) -> dict[str, Any]:
    """The body of Unity Catalog's create-table call for a table of `descriptor` rows."""
    catalog, schema, name = table.split(".")
    return {
        "catalog_name": catalog,
        "schema_name": schema,
        "name": name,
        "columns": [{"name": c.name, "type_name": c.delta_type} for c in columns(descriptor)],
    }
