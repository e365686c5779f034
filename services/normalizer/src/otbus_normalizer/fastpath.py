"""Tag records of a whole raw batch, written straight to Avro bytes: the normalizer's fast path.

Most readings a plant sends are alike: a tag seen before, a value of its declared type, a
quality seen before. Avro's encoding of a record is its fields' encodings one after the
other, so the tag record of such a reading is a join of pieces worked out once (the tag's
path parts and its source, per tag; the data type, per declared type and value class; the
quality and its code, per protocol) and of the reading's own: its ids, value and times.

Every other reading (NaN or infinity, a value that must be converted, attributes, a source
time out of range, an empty tag, anything not seen before that is not plain) goes the
general way, `TagMapper.to_tag` and `SplitEncoder`, in its place in the batch, so the
readings of one tag keep their order. The records are byte for byte what encoding
`to_tag`'s record with fastavro gives, with the same headers; tests hold it to that.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from otbus_core.codec import avro_long, avro_string, union_branches, wide_longs
from otbus_core.envelope import micros_to_rfc3339
from otbus_core.memo import BoundedDict
from otbus_core.raw import NONE
from otbus_core.records import OutRecord
from otbus_core.schemas import TAG_RECORD_LAYOUT, AvroSchema, require_layout
from otbus_normalizer.mapping import _MAX_TIME, _MIN_TIME, _PATH_CACHE, _TYPES, RawColumns, TagMapper
from otbus_normalizer.quality import map_quality

__all__ = ["FastTags"]

_UUID = avro_string("0" * 36)[:1]  # the length of a canonical UUID string
_pack_double = struct.Struct("<d").pack


# A tag's pieces: its path, the encodings of its path parts (tenant, path, site, area, line,
# equipment, signal_type, tag_name) and of its source (source_id, protocol, source_tag), and its
# ce_subject header. A plain tuple of strings and bytes: the garbage collector stops tracking it.
_Tag = tuple[str, bytes, bytes, tuple[str, str]]
_Spec = tuple[Callable[[Any], bytes | None], bytes]  # a value's writer, the encoded data type


class FastTags:
    """Writes the tag records of a batch's plain readings; hands the others to `slow`."""

    def __init__(self, mapper: TagMapper, schema: AvroSchema) -> None:
        require_layout(schema, TAG_RECORD_LAYOUT, "the normalizer's fast path")
        self._mapper = mapper
        values = union_branches(TAG_RECORD_LAYOUT[9][1])
        null = values[type(None)][0]
        self._null = null
        self._double = values[float][0]
        self._long = values[int][0]
        self._true = values[bool][0] + b"\x01"
        self._false = values[bool][0] + b"\x00"
        self._string = values[str][0]
        self._some_unit = union_branches(TAG_RECORD_LAYOUT[11][1])[str][0]
        self._some_code = union_branches(TAG_RECORD_LAYOUT[13][1])[int][0]
        # (tenant, source, protocol, context) -> tag -> its pieces; entries are counted over all
        self._tables: dict[tuple[str, ...], dict[str, _Tag]] = {}
        self._cached = 0
        # (declared data type, value class) -> (value writer, encoded data type), or None: slow
        # (declared types are free text: bounded)
        self._specs: BoundedDict[tuple[str, type], _Spec | None] = BoundedDict(_PATH_CACHE)
        # protocol -> (quality text, quality code or NONE) -> encoded quality and code
        self._qualities: BoundedDict[str, BoundedDict[tuple[str, int], bytes]] = BoundedDict(_QUALITIES)
        self._units: BoundedDict[str, bytes] = BoundedDict(_QUALITIES)

    def write(
        self,
        tenant: str,
        source_id: str,
        protocol: str,
        ctx: Mapping[str, str],
        cols: RawColumns,
        topic: str,
        prefix: bytes,
        same: list[tuple[str, str]],
        outputs: list[OutRecord],
        slow: Callable[[int], None],
    ) -> None:
        """Append the tag record of every reading of `cols` to `outputs`; `slow(i)` does reading i."""
        table = self._table(tenant, source_id, protocol, ctx)
        specs = self._specs
        qualities = self._qualities.get(protocol)
        if qualities is None:
            qualities = self._qualities.put(protocol, BoundedDict(_QUALITIES))
        units = self._units
        tags, values, data_types, quals, codes, times = (
            cols.tags,
            cols.values,
            cols.data_types,
            cols.qualities,
            cols.codes,
            cols.times,
        )
        unit_col, attrs, ids, tag_ids = cols.units, cols.attributes, cols.ids, cols.tag_ids
        received = cols.received
        ingest = avro_long(received)
        whens = [received if t == NONE else t for t in times]  # no source time: the receive time
        wide = wide_longs(whens)  # their encodings at once, when all are 8 bytes (1978-3111)
        null = self._null
        append = outputs.append
        for i in range(len(tags)):
            if attrs and attrs[i]:
                slow(i)  # attributes may name a unit or signal type
                continue
            tag = tags[i]
            t = table.get(tag)
            if t is None:
                t = self._tag(table, tenant, source_id, protocol, ctx, tag)
                if t is None:
                    slow(i)
                    continue
            value = values[i]
            spec = specs.get((data_types[i], value.__class__), _UNKNOWN)
            if spec is _UNKNOWN:
                spec = self._spec(data_types[i], value.__class__)
            if spec is None:
                slow(i)
                continue
            write_value, data_type = spec
            encoded = write_value(value)
            if encoded is None:
                slow(i)
                continue
            when = whens[i]
            if wide is not None:
                j = i << 3
                encoded_when = wide[j : j + 8]
            elif _MIN_TIME <= when <= _MAX_TIME:
                encoded_when = avro_long(when)
            else:
                slow(i)
                continue
            qkey = (quals[i], codes[i])
            quality = qualities.get(qkey)
            if quality is None:
                quality = self._quality(qualities, protocol, qkey)
            unit = (units.get(unit_col[i]) or self._unit(unit_col[i])) if unit_col else null
            path, parts, source, subject = t
            tag_id, raw_id = tag_ids[i], ids[i]
            pieces = (prefix, _UUID, tag_id, parts, encoded, data_type, unit, quality, encoded_when, ingest, source)
            headers: list[tuple[str, str | bytes]] = [
                *same,
                ("ce_id", tag_id),
                ("ce_time", micros_to_rfc3339(when)),
                subject,
                ("ce_causationid", raw_id),
            ]
            append(OutRecord(topic, b"".join((*pieces, _UUID, raw_id)), path, headers))

    def _table(self, tenant: str, source_id: str, protocol: str, ctx: Mapping[str, str]) -> dict[str, _Tag]:
        key = (tenant, source_id, protocol, *ctx.values())
        table = self._tables.get(key)
        if table is None:
            if len(self._tables) >= _TABLES:  # sources and contexts are the adapters' to name
                self._forget()
            table = self._tables[key] = {}
        return table

    def _tag(
        self, table: dict[str, _Tag], tenant: str, source_id: str, protocol: str, ctx: Mapping[str, str], tag: str
    ) -> _Tag | None:
        if not tag or not tag.strip():
            return None  # poison: the general path says so
        if self._cached >= _PATH_CACHE:  # bounded over all tables: start over
            table.clear()  # may be in use by the batch at hand, which goes on with it
            self._forget()
        path, signal_type, tag_name = self._mapper.naming(source_id, protocol, ctx, tag, None)
        strings = (tenant, path, ctx["site"], ctx["area"], ctx["line"], ctx["equipment"], signal_type, tag_name)
        parts = b"".join(map(avro_string, strings))
        source = b"".join(map(avro_string, (source_id, protocol, tag)))
        self._cached += 1
        pieces: _Tag = (path, parts, source, ("ce_subject", path))
        table[tag] = pieces
        return pieces

    def _forget(self) -> None:
        self._tables.clear()
        self._cached = 0

    def _spec(self, declared: str, cls: type) -> _Spec | None:
        """How a value of class `cls` declared `declared` is written, when it is written as it
        is (as `coerce_value` leaves it); None when it is converted or refused: the slow path."""
        want = _TYPES.get(declared.strip().lower()) if declared else None
        inferred = {type(None): "NULL", bool: "BOOLEAN", int: "INT64", float: "DOUBLE", str: "STRING"}.get(cls)
        writer: Callable[[Any], bytes | None] | None = None
        if cls is type(None) and inferred is not None:
            writer, data_type = self._write_null, want or inferred
        elif want == "DOUBLE" and cls is int:
            writer, data_type = self._write_int_as_double, want  # a whole number sent for a float
        elif want is None or want == inferred:
            data_type = inferred or ""
            writers: dict[type, Callable[[Any], bytes | None]] = {
                bool: self._write_bool,
                int: self._write_long,
                float: self._write_double,
                str: self._write_string,
            }
            writer = writers.get(cls)
        return self._specs.put((declared, cls), None if writer is None else (writer, avro_string(data_type)))

    def _quality(self, qualities: BoundedDict[tuple[str, int], bytes], protocol: str, key: tuple[str, int]) -> bytes:
        text, code = key
        quality = map_quality(protocol, text or None, None if code == NONE else code)
        return qualities.put(
            key, avro_string(quality) + (self._null if code == NONE else self._some_code + avro_long(code))
        )

    def _unit(self, unit: str) -> bytes:
        """The encoding of a reading's unit: null for none (""), remembered when short."""
        encoded = self._some_unit + avro_string(unit) if unit else self._null
        return self._units.put(unit, encoded) if len(unit) <= 128 else encoded

    def _write_null(self, value: None) -> bytes:
        return self._null

    def _write_bool(self, value: bool) -> bytes:
        return self._true if value else self._false

    def _write_long(self, value: int) -> bytes | None:
        if not -(2**63) <= value < 2**63:
            return None  # the general path dead-letters it
        return self._long + avro_long(value)

    def _write_double(self, value: float) -> bytes | None:
        if value - value != 0.0:  # NaN or infinity: no value and BAD quality, the general way
            return None
        return self._double + _pack_double(value)

    def _write_int_as_double(self, value: int) -> bytes | None:
        try:
            return self._double + _pack_double(float(value))
        except OverflowError:
            return None  # the general path dead-letters it

    def _write_string(self, value: str) -> bytes:
        return self._string + avro_string(value)


_UNKNOWN: Any = object()
_QUALITIES = 10_000
_TABLES = 10_000  # (tenant, source, protocol, context) tables
