"""Sparkplug B: topic names, payload decoding and metric values (schemas/proto/sparkplug_b.proto)."""

from __future__ import annotations

from typing import Any, NamedTuple

from google.protobuf.message import DecodeError as _ProtoDecodeError

from otbus_core._generated import sparkplug_b_pb2 as pb
from otbus_core.exceptions import DecodeError

__all__ = [
    "NAMESPACE",
    "REBIRTH_METRIC",
    "SparkplugTopic",
    "decode_payload",
    "encode_payload",
    "metric_quality",
    "metric_value",
    "parse_topic",
    "pb",
    "type_name",
]

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
MESSAGE_TYPES = frozenset({"NBIRTH", "NDEATH", "NDATA", "NCMD", "DBIRTH", "DDEATH", "DDATA", "DCMD"})

DT = pb.DataType
_TYPE_NAMES = {v: k for k, v in pb.DataType.items()}
_SIGNED32: dict[int, int] = {int(DT.Int8): 8, int(DT.Int16): 16, int(DT.Int32): 32}
_INT64 = int(DT.Int64)


class SparkplugTopic(NamedTuple):
    group: str
    message_type: str
    edge_node: str
    device: str | None

    @property
    def node_key(self) -> tuple[str, str]:
        return self.group, self.edge_node


def parse_topic(topic: str) -> SparkplugTopic | None:
    """The parts of a Sparkplug B topic; None for other topics (STATE, or not Sparkplug)."""
    parts = topic.split("/")
    if len(parts) not in (4, 5) or parts[0] != NAMESPACE or parts[2] not in MESSAGE_TYPES:
        return None
    return SparkplugTopic(parts[1], parts[2], parts[3], parts[4] if len(parts) == 5 else None)


def decode_payload(data: bytes) -> Any:
    p = pb.Payload()
    try:
        p.ParseFromString(data)
    except _ProtoDecodeError as e:
        raise DecodeError(f"not a Sparkplug B payload: {e}") from None
    return p


def type_name(datatype: int) -> str:
    return _TYPE_NAMES.get(datatype, f"Unknown({datatype})")


def metric_value(m: Any, datatype: int) -> bool | int | float | str | None:
    """The metric's value as Python; DecodeError for types a reading cannot hold (DataSet, Template, arrays)."""
    if m.is_null:
        return None
    field = m.WhichOneof("value")
    if field is None:
        return None
    v = getattr(m, field)
    if datatype in _SIGNED32 and field == "int_value":
        bits = _SIGNED32[datatype]
        v &= (1 << bits) - 1
        return v - (1 << bits) if v >> (bits - 1) else v  # type: ignore[no-any-return]
    if datatype == _INT64 and field == "long_value":
        return v - (1 << 64) if v >> 63 else v  # type: ignore[no-any-return]
    if field in ("int_value", "long_value", "float_value", "double_value", "boolean_value", "string_value"):
        return v  # type: ignore[no-any-return]
    raise DecodeError(f"metric {m.name or m.alias!r}: {type_name(datatype)} values are not supported as readings")


def metric_quality(m: Any) -> int | None:
    """The metric's `Quality` property (Ignition: 192 good, 0 bad, 500 stale), if any."""
    if not m.HasField("properties"):
        return None
    props = m.properties
    for k, pv in zip(props.keys, props.values, strict=False):
        if k.lower() == "quality" and pv.WhichOneof("value") in ("int_value", "long_value"):
            return int(getattr(pv, pv.WhichOneof("value")))
    return None


def encode_payload(
    metrics: list[dict[str, Any]],
    seq: int | None,
    timestamp_ms: int,
) -> bytes:
    """A payload from plain dicts (name, alias, datatype, value, timestamp, quality): for simulators and tests."""
    p = pb.Payload(timestamp=timestamp_ms)
    if seq is not None:
        p.seq = seq
    for d in metrics:
        m = p.metrics.add()
        if d.get("name") is not None:
            m.name = d["name"]
        if d.get("alias") is not None:
            m.alias = d["alias"]
        m.timestamp = d.get("timestamp", timestamp_ms)
        dt = d["datatype"]
        m.datatype = dt
        value = d.get("value")
        if value is None:
            m.is_null = True
        elif dt in (DT.Int8, DT.Int16, DT.Int32, DT.UInt8, DT.UInt16, DT.UInt32):
            m.int_value = value & 0xFFFFFFFF
        elif dt in (DT.Int64, DT.UInt64, DT.DateTime):
            m.long_value = value & 0xFFFFFFFFFFFFFFFF
        elif dt == DT.Float:
            m.float_value = value
        elif dt == DT.Double:
            m.double_value = value
        elif dt == DT.Boolean:
            m.boolean_value = value
        elif dt in (DT.String, DT.Text, DT.UUID):
            m.string_value = value
        elif dt == DT.Bytes:
            m.bytes_value = value
        else:
            raise ValueError(f"datatype {dt} is not supported here")
        if d.get("quality") is not None:
            m.properties.keys.append("Quality")
            pv = m.properties.values.add()
            pv.type = DT.Int32
            pv.int_value = d["quality"]
    return bytes(p.SerializeToString())
