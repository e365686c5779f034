"""ISA-95 tag records ({tenant}.ot.tags.v1) as Delta rows (schemas/proto/otbus_tag_row.proto)."""

from __future__ import annotations

from typing import Any

from otbus_zerobus_sink._generated.otbus_tag_row_pb2 import TagRow

__all__ = ["TagRow", "tag_row"]

_EXACT_IN_DOUBLE = 2**53


def tag_row(rec: dict[str, Any]) -> bytes:
    """One serialized TagRow from a decoded TagRecord."""
    value = rec["value"]
    row = TagRow(
        tag_path=rec["path"],
        quality=rec["quality"],
        event_time=rec["source_time"],
        source_system_id=rec["source_id"],
        site=rec["site"],
        area=rec["area"],
        line=rec["line"],
        equipment=rec["equipment"],
        signal_type=rec["signal_type"],
        tag_name=rec["tag_name"],
        data_type=rec["data_type"],
        ingest_time=rec["ingest_time"],
        event_id=rec["event_id"],
        tenant=rec["tenant"],
        protocol=rec["protocol"],
        source_tag=rec["source_tag"],
    )
    if rec.get("quality_code") is not None:
        row.quality_code = rec["quality_code"]
    if rec.get("unit") is not None:
        row.unit = rec["unit"]
    if value is None:
        pass
    elif value is True or value is False:
        row.boolean_value = value
        row.numeric_value = 1.0 if value else 0.0
    elif isinstance(value, int):
        row.numeric_value = float(value)
        if not -_EXACT_IN_DOUBLE <= value <= _EXACT_IN_DOUBLE:
            row.string_value = str(value)
    elif isinstance(value, float):
        row.numeric_value = value
    else:
        row.string_value = str(value)
    return row.SerializeToString()
