"""Avro value codecs.

Without a schema registry, values use Avro single-object encoding: `C3 01`, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema, then the Avro
binary body. With `schema_registry_url` set, values use the Confluent wire format:
`00`, the 4-byte big-endian schema id, then the body; the schema is registered
under the subject `<topic>-value`. Decoding accepts both, whatever this process
writes, so a consumer keeps working while producers switch.
"""

from __future__ import annotations

import array
import io
import json
import operator
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from otbus_core.exceptions import DecodeError, TransientError
from otbus_core.memo import BoundedDict
from otbus_core.schemas import AvroSchema, SchemaCatalog, catalog, strip_logical_types

__all__ = [
    "AVRO_CONTENT_TYPE",
    "AvroCodec",
    "ColumnEncoder",
    "SplitEncoder",
    "avro_long",
    "avro_string",
    "single_object_prefix",
    "union_branches",
    "wide_longs",
]

AVRO_CONTENT_TYPE = "application/avro"
_SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_CONFLUENT_MAGIC = 0


class AvroCodec:
    """Encode and decode otbus records; one instance per process is enough (thread-safe)."""

    def __init__(
        self,
        schemas: SchemaCatalog | None = None,
        schema_registry_url: str | None = None,
        registry_config: dict[str, str] | None = None,
    ) -> None:
        self.schemas = schemas or catalog()
        self.registry_url = schema_registry_url
        self._registry: Any = None
        if schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._registry = SchemaRegistryClient({"url": schema_registry_url, **(registry_config or {})})
        self._ids: dict[tuple[str, str], int] = {}  # (subject, key) -> id
        self._headers: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._by_id: dict[int, Any] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def __enter__(self) -> AvroCodec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- encoding ---------------------------------------------------------

    def header(self, key: str, topic: str) -> tuple[bytes, str]:
        """The value prefix for records of schema `key` on `topic`, and its dataschema URI (cached)."""
        cached = self._headers.get((key, topic))
        if cached is not None:
            return cached
        schema = self.schemas.latest(key)
        if self._registry is None:
            made = (single_object_prefix(schema), schema.uri)
        else:
            schema_id = self._registered_id(schema, f"{topic}-value")
            made = (struct.pack(">bI", _CONFLUENT_MAGIC, schema_id), f"{self.registry_url}/schemas/ids/{schema_id}")
        self._headers[(key, topic)] = made
        return made

    def encode(self, key: str, record: dict[str, Any], topic: str) -> bytes:
        prefix, _ = self.header(key, topic)
        return self.encode_with(prefix, self.schemas.latest(key), record)

    @staticmethod
    def encode_with(prefix: bytes, schema: AvroSchema, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(prefix)
        schemaless_writer(buf, schema.fast, record)
        return buf.getvalue()

    def _registered_id(self, schema: AvroSchema, subject: str) -> int:
        cached = self._ids.get((subject, schema.key))
        if cached is not None:
            return cached
        from confluent_kafka.schema_registry import Schema

        with self._lock:
            schema_id = int(self._registry.register_schema(subject, Schema(schema.source, "AVRO")))
            self._ids[(subject, schema.key)] = schema_id
            return schema_id

    # -- decoding ---------------------------------------------------------

    def decode(self, data: bytes | None, key: str) -> dict[str, Any]:
        """Decode `data` and resolve it to the latest version of schema `key`."""
        if not data or len(data) < 5:
            raise DecodeError("value is empty or too short to be an Avro record")
        reader = self.schemas.latest(key)
        if data[:2] == _SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise DecodeError("single-object header is truncated")
            writer = self.schemas.by_fingerprint(data[2:10])
            if writer is None:
                raise DecodeError(f"unknown schema fingerprint {data[2:10].hex()}")
            if writer.key != key:
                raise DecodeError(f"record is a {writer.full_name}, expected {reader.full_name}")
            return self._read(data, 10, writer.fast, reader.fast if writer is not reader else None)
        if data[0] == _CONFLUENT_MAGIC:
            schema_id = struct.unpack_from(">I", data, 1)[0]
            return self._read(data, 5, self._schema_by_id(schema_id), reader.fast)
        raise DecodeError(f"unknown value encoding (first byte 0x{data[0]:02x})")

    def decode_any(self, data: bytes | None) -> dict[str, Any]:
        """Decode with the writer's own schema (for stores that keep any record as it came)."""
        if not data or len(data) < 5:
            raise DecodeError("value is empty or too short to be an Avro record")
        if data[:2] == _SINGLE_OBJECT_MAGIC:
            writer = self.schemas.by_fingerprint(data[2:10])
            if writer is None:
                raise DecodeError(f"unknown schema fingerprint {data[2:10].hex()}")
            return self._read(data, 10, writer.fast, None)
        if data[0] == _CONFLUENT_MAGIC:
            schema_id = struct.unpack_from(">I", data, 1)[0]
            return self._read(data, 5, self._schema_by_id(schema_id), None)
        raise DecodeError(f"unknown value encoding (first byte 0x{data[0]:02x})")

    @staticmethod
    def _read(data: bytes, offset: int, writer: Any, reader: Any) -> dict[str, Any]:
        buf = io.BytesIO(data)
        buf.seek(offset)
        try:
            rec = schemaless_reader(buf, writer, reader)
        except Exception as e:  # fastavro raises a range of builtin errors on bad bytes
            raise DecodeError(f"Avro body does not decode: {type(e).__name__}: {e}") from e
        if buf.tell() != len(data):
            raise DecodeError(f"{len(data) - buf.tell()} trailing bytes after the Avro record")
        if not isinstance(rec, dict):
            raise DecodeError("Avro value is not a record")
        return rec

    def _schema_by_id(self, schema_id: int) -> Any:
        parsed = self._by_id.get(schema_id)
        if parsed is not None:
            return parsed
        if self._registry is None:
            raise DecodeError(f"record uses schema registry id {schema_id} but no schema_registry_url is set")
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self._registry.get_schema(schema_id)
        except SchemaRegistryError as e:
            if e.http_status_code == 404:
                raise DecodeError(f"schema id {schema_id} is not in the registry") from e
            raise TransientError(f"schema registry lookup of id {schema_id} failed: {e}") from e
        except Exception as e:  # connection refused, timeouts: the registry is away
            raise TransientError(f"schema registry lookup of id {schema_id} failed: {e}") from e
        parsed = parse_schema(strip_logical_types(json.loads(schema.schema_str)))
        self._by_id[schema_id] = parsed
        return parsed


class SplitEncoder:
    """Encodes records of one schema field by field, reusing the bytes of runs that repeat.

    Avro's binary encoding of a record is the concatenation of its fields' encodings, so a
    record can be written as consecutive runs of fields. The runs named in `cached` (each a
    list of consecutive field names) are encoded by fastavro once per distinct set of
    values and then reused: a tag's path parts and source, say, are the same in every
    reading of that tag. Every other field that is a string, long, boolean, double or a
    union of those and null is written here (a zigzag varint, UTF-8 bytes, 8 little-endian
    bytes, a branch index), the ones named in `repeating` from a cache of their encodings
    (data types, qualities); fastavro writes the rest, and any value whose branch is not
    plain. The result is byte for byte what encoding the whole record gives; a test holds
    it to that.
    """

    _MAX_CACHED = 200_000

    def __init__(self, schema: AvroSchema, cached: Sequence[Sequence[str]], repeating: Sequence[str] = ()) -> None:
        doc = strip_logical_types(json.loads(schema.source))
        fields = doc["fields"]
        names = [f["name"] for f in fields]
        starts = {g[0]: list(g) for g in cached}
        # (kind, field name or key of a run, fastavro sub-schema, cache or union branches)
        self._runs: list[tuple[str, Any, Any, Any]] = []
        i = 0
        while i < len(fields):
            group = starts.get(names[i])
            if group is not None:
                if names[i : i + len(group)] != group:
                    raise ValueError(f"cached run {group} is not a run of consecutive fields of {schema.full_name}")
                cache: BoundedDict[Any, bytes] = BoundedDict(self._MAX_CACHED)
                run = fields[i : i + len(group)]
                sub = self._sub(doc, run, i)
                # a run of plain strings (a tag's path parts) is written here on a miss too
                strings = len(run) > 1 and all(f["type"] == "string" for f in run)  # the key is a tuple
                self._runs.append(("cached", operator.itemgetter(*group), sub, (cache, strings)))
                i += len(group)
                continue
            f = fields[i]
            t = f["type"]
            sub = self._sub(doc, [f], i)  # fastavro, for what is not written here
            if t in ("string", "long") and f["name"] in repeating:
                known: Any = _StringCache(_REPEATING_MAX) if t == "string" else _LongCache(_REPEATING_MAX)
                self._runs.append(("repeating", f["name"], sub, (_PLAIN_TYPES[t], known.__getitem__)))
            elif isinstance(t, str) and t in _PLAIN_WRITERS:
                self._runs.append(("plain", f["name"], sub, (_PLAIN_TYPES[t], _PLAIN_WRITERS[t])))
            elif isinstance(t, list) and t and all(isinstance(b, str) and b in _TAKES for b in t):
                # value class -> (branch index, writer of the value or None for null): the first
                # branch that takes the class, as fastavro picks it
                branches = {cls: (index, _PLAIN_WRITERS.get(b)) for cls, (index, b) in union_branches(t).items()}
                self._runs.append(("union", f["name"], sub, branches))
            else:
                self._runs.append(("fastavro", f["name"], sub, None))
            i += 1

    @staticmethod
    def _sub(doc: dict[str, Any], fields: list[Any], at: int) -> Any:
        return parse_schema(
            {"type": "record", "name": f"{doc['name']}Run{at}", "namespace": doc.get("namespace"), "fields": fields}
        )

    def encode(self, record: dict[str, Any]) -> bytes:
        parts: list[bytes] = []
        add = parts.append
        for kind, name, sub, extra in self._runs:
            if kind == "cached":
                key = name(record)
                cache, strings = extra
                b = cache.get(key)
                if b is None:
                    if strings and all(v.__class__ is str for v in key):
                        b = cache.put(key, b"".join(map(_avro_string, key)))
                    else:
                        b = cache.put(key, _fastavro(sub, record))
                add(b)
                continue
            value = record.get(name, _MISSING)
            if kind == "union":
                branch = extra.get(value.__class__)
                if branch is not None and (value.__class__ is not int or -(2**63) <= value < 2**63):
                    add(branch[0])
                    if branch[1] is not None:
                        add(branch[1](value))
                    continue
            elif kind != "fastavro" and value.__class__ is extra[0]:  # plain or repeating
                add(extra[1](value))
                continue
            add(_fastavro(sub, record))  # a default, another type, a value fastavro converts or refuses
        return b"".join(parts)


def _fastavro(schema: Any, datum: Any) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, schema, datum)
    return buf.getvalue()


class ColumnEncoder:
    """Encodes records of a columnar schema (arrays of readings) several times faster than fastavro.

    A record's Avro encoding is the concatenation of its fields' encodings, and an array of
    n items is the zigzag varint n, the items, then a zero (or just the zero when empty), so
    each field can be written on its own:

    - `array<double>`: the items are 8-byte little-endian IEEE doubles, so the whole array
      is one `array('d').tobytes()`; `array<boolean>` one byte per item; `bytes` a length
      and the bytes; a `string` or `long` its length or value as a varint (and the string).
    - the `array<string>` and `array<long>` fields named in `repeating` (tag paths, data
      types, qualities, quality codes: a plant's tags report again and again) join the
      cached encoding of each item, or repeat one when every item is the same; a cache is
      cleared when it reaches `max_cached` items, and strings over 128 characters are not kept.
    - any other `array<long>` whose items all have 8-byte varints (timestamps in
      microseconds) is written at once by `_wide_varints`.
    - fastavro writes every other field, and those arrays (and `array<long>`s) when the
      fast paths do not apply; an empty array or map is just the zero.

    The result is byte for byte fastavro's encoding of the whole record; a test holds it to that.
    """

    def __init__(self, schema: AvroSchema, repeating: Sequence[str] = (), max_cached: int = 200_000) -> None:
        doc = strip_logical_types(json.loads(schema.source))
        fields = doc["fields"]
        unknown = set(repeating) - {f["name"] for f in fields}
        if unknown:
            raise ValueError(f"repeating names fields {sorted(unknown)} that {schema.full_name} does not have")
        self._fields: list[tuple[str, str, Any, Any]] = []  # (kind, name, default, cache or sub-schema)
        for i, f in enumerate(fields):
            t = f["type"]
            container = t.get("type") if isinstance(t, dict) and t.get("type") in ("array", "map") else None
            items = t.get("items") if container == "array" else None
            extra: Any = None
            if items == "double":
                kind = "doubles"
            elif items == "boolean":
                kind = "booleans"
            elif t in ("bytes", "string", "long"):
                kind = t
            elif f["name"] in repeating:
                if items not in ("string", "long"):
                    raise ValueError(f"repeating field {f['name']} must be an array of strings or longs")
                kind = "cached"
                extra = _StringCache(max_cached) if items == "string" else _LongCache(max_cached)
            elif items == "long":
                kind, extra = "wide", parse_schema(t)  # fastavro for arrays that are not all 8-byte varints
            else:
                kind = "container" if container else "field"
                extra = SplitEncoder._sub(doc, [f], i)
            self._fields.append((kind, f["name"], f.get("default"), extra))

    def encode(self, record: dict[str, Any]) -> bytes:
        parts: list[bytes] = []
        add = parts.append
        for kind, name, default, extra in self._fields:
            value = record.get(name, default)
            if value is None and kind != "field":
                raise ValueError(f"no value for field {name}")
            if kind == "string":
                if value.__class__ is not str:
                    raise TypeError(f"{name}: expected a string, not {value.__class__.__name__}")
                add(_avro_string(value))
            elif kind == "long":
                if value.__class__ is not int or not -(2**63) <= value < 2**63:
                    raise TypeError(f"{name}: expected a 64-bit integer, not {value!r}")
                add(_varint(value))
            elif kind == "field" or (kind == "container" and value):
                add(_fastavro(extra, record))
            elif kind == "bytes":
                if value.__class__ is not bytes:
                    raise TypeError(f"{name}: expected bytes, not {value.__class__.__name__}")
                add(_count(len(value)))
                add(value)
            elif not value:
                add(b"\x00")  # an empty array or map
            else:
                add(_array(kind, name, value, extra))
        return b"".join(parts)


def _array(kind: str, name: str, value: Sequence[Any], extra: Any) -> bytes:
    """A non-empty array field: its count, its items, the closing zero."""
    n = len(value)
    if kind == "cached":
        first = value[0]  # often one value throughout (all GOOD, one data type): repeat its bytes
        body = extra[first] * n if value.count(first) == n else b"".join(map(extra.__getitem__, value))
    elif kind == "wide":
        wide = _wide_varints(value)
        if wide is None:
            if not all(v.__class__ is int for v in value):  # fastavro would truncate a float
                raise TypeError(f"{name}: every item must be an integer")
            return _fastavro(extra, value)
        body = wide
    elif kind == "doubles":
        packed = array.array("d", value)
        if _BIG_ENDIAN:
            packed.byteswap()
        body = packed.tobytes()
    else:  # booleans
        if not all(v.__class__ is bool for v in value):
            raise TypeError(f"{name}: every item must be a bool")
        body = bytes(value)
    return b"".join((_count(n), body, b"\x00"))


_BIG_ENDIAN = sys.byteorder == "big"
_WIDE_LO, _WIDE_HI = 2**48, 2**55  # their zigzag varints are exactly 8 bytes
_WIDE_GROUPS = [(0x7F << (7 * k)).to_bytes(8, "little") for k in range(8)]
_WIDE_MORE = bytes([0x80] * 7 + [0])
_wide_masks: BoundedDict[int, tuple[int, list[int]]] = BoundedDict(64)  # by array length


def _wide_varints(values: Sequence[int]) -> bytes | None:
    """The zigzag varints of `values` when every one is 8 bytes long (the longs in
    [2**48, 2**55): microsecond timestamps from 1978 to the year 3111), else None.

    All values at once, as lanes of one big integer: each lane's 7-bit groups move up one
    bit per group, and every byte but a lane's last gets the continuation bit.
    """
    if min(values) < _WIDE_LO or max(values) >= _WIDE_HI:
        return None
    n = len(values)
    masks = _wide_masks.get(n)
    if masks is None:
        more = int.from_bytes(_WIDE_MORE * n, "little")
        masks = _wide_masks.put(n, (more, [int.from_bytes(g * n, "little") for g in _WIDE_GROUPS]))
    out, groups = masks
    packed = array.array("q", values)
    if _BIG_ENDIAN:
        packed.byteswap()
    z = int.from_bytes(packed.tobytes(), "little") << 1  # zigzag of a non-negative long: twice it
    for k, group in enumerate(groups):
        out |= (z & group) << k
    return out.to_bytes(8 * n, "little")


class _StringCache(BoundedDict[Any, bytes]):
    """Encoded strings by value: those up to `_CACHED_CHARS` characters (tag paths, data
    types), at most `limit` of them; longer ones are encoded each time."""

    def __init__(self, limit: int = 100_000) -> None:
        super().__init__(limit)

    def __missing__(self, key: Any) -> bytes:
        if key.__class__ is not str:
            raise TypeError(f"expected a string, not {key.__class__.__name__}")
        b = _avro_string(key)
        return self.put(key, b) if len(key) <= _CACHED_CHARS else b


class _LongCache(BoundedDict[Any, bytes]):
    """Zigzag varints by value, at most `limit` of them."""

    def __init__(self, limit: int = 100_000) -> None:
        super().__init__(limit)

    def __missing__(self, key: Any) -> bytes:
        if key.__class__ is not int or not -(2**63) <= key < 2**63:
            raise TypeError(f"expected a 64-bit integer, not {key!r}")
        return self.put(key, _varint(key))


_CACHED_CHARS = 128
_REPEATING_MAX = 10_000  # data types, qualities, a batch's ingest time: few at a time


def _varint(n: int) -> bytes:
    """Avro's zigzag varint of a long."""
    if 0x1_0000_0000_0000 <= n < 0x80_0000_0000_0000:  # 8 bytes (timestamps in µs): no loop
        z = n << 1
        return (
            (z & 0x7F)
            | (z << 1 & 0x7F00)
            | (z << 2 & 0x7F_0000)
            | (z << 3 & 0x7F00_0000)
            | (z << 4 & 0x7F_0000_0000)
            | (z << 5 & 0x7F00_0000_0000)
            | (z << 6 & 0x7F_0000_0000_0000)
            | (z << 7 & 0x7F00_0000_0000_0000)
            | 0x0080_8080_8080_8080
        ).to_bytes(8, "little")
    z = (n << 1) ^ (n >> 63)
    head = bytearray()
    while z > 0x7F:
        head.append((z & 0x7F) | 0x80)
        z >>= 7
    head.append(z)
    return bytes(head)


_SMALL = [_varint(i) for i in range(4096)]


def _count(n: int) -> bytes:
    """The varint of a count or length."""
    return _SMALL[n] if n < 4096 else _varint(n)


def _avro_string(s: str) -> bytes:
    data = s.encode()
    return _count(len(data)) + data


def single_object_prefix(schema: AvroSchema) -> bytes:
    """The value prefix of records of `schema` written without a registry (single-object encoding)."""
    return _SINGLE_OBJECT_MAGIC + schema.fingerprint


def avro_string(s: str) -> bytes:
    """Avro's encoding of a string: its UTF-8 length as a varint, then the bytes."""
    return _avro_string(s)


def avro_long(n: int) -> bytes:
    """Avro's encoding of a long (a zigzag varint); OverflowError outside 64 bits."""
    return _long(n)


def wide_longs(values: Sequence[int]) -> bytes | None:
    """The Avro encodings of `values`, one after another, when every one is 8 bytes long
    (longs in [2**48, 2**55): microsecond timestamps from 1978 to 3111); else None."""
    return _wide_varints(values) if values else b""


def union_branches(branches: Sequence[str]) -> dict[type, tuple[bytes, str]]:
    """For a union of null, boolean, long, double and string: the Python classes it takes,
    each with the encoded index of the branch fastavro writes it in, and that branch's type
    (the first branch that takes the class: an int goes in a double when there is no long)."""
    out = {}
    for cls in (type(None), bool, int, float, str):
        k = next((k for k, b in enumerate(branches) if cls in _TAKES[b]), None)
        if k is not None:
            out[cls] = (_SMALL[k], branches[k])
    return out


_MISSING = object()
_pack_double = struct.Struct("<d").pack


def _long(n: int) -> bytes:
    if 0 <= n < 4096:
        return _SMALL[n]
    if not -(2**63) <= n < 2**63:
        raise OverflowError(f"{n} is out of the range of a long")
    return _varint(n)


def _boolean(v: bool) -> bytes:
    return b"\x01" if v else b"\x00"


_PLAIN_WRITERS: dict[str, Callable[[Any], bytes]] = {
    "string": _avro_string,
    "long": _long,
    "boolean": _boolean,
    "double": _pack_double,
}
_PLAIN_TYPES: dict[str, type] = {"string": str, "long": int, "boolean": bool, "double": float}
# the Python classes each union branch takes, as fastavro decides (an int goes in a double too)
_TAKES: dict[str, tuple[type, ...]] = {
    "null": (type(None),),
    "boolean": (bool,),
    "long": (int,),
    "double": (float, int),
    "string": (str,),
}
