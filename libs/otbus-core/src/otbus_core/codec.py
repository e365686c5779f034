"""Avro value codecs.

Without a schema registry, values use Avro single-object encoding: `C3 01`, the
8-byte little-endian CRC-64-AVRO fingerprint of the writer schema, then the Avro
binary body. With `schema_registry_url` set, values use the Confluent wire format:
`00`, the 4-byte big-endian schema id, then the body; the schema is registered
under the subject `<topic>-value`. Decoding accepts both, whatever this process
writes, so a consumer keeps working while producers switch.
"""

from __future__ import annotations

import io
import json
import operator
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from otbus_core.exceptions import DecodeError, TransientError
from otbus_core.schemas import AvroSchema, SchemaCatalog, catalog, strip_logical_types

__all__ = ["AVRO_CONTENT_TYPE", "AvroCodec", "SplitEncoder"]

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
            made = (_SINGLE_OBJECT_MAGIC + schema.fingerprint, schema.uri)
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
    """Encodes records of one schema run by run, reusing the bytes of runs that repeat.

    Avro's binary encoding of a record is the concatenation of its fields' encodings, so a
    record can be written as consecutive runs of fields. The runs named in `cached` (each a
    list of consecutive field names) are encoded by fastavro once per distinct set of
    values and then reused: a tag's path parts and source, say, are the same in every
    reading of that tag. The other runs are encoded by fastavro each time (a lone string
    field directly: its length as a zigzag varint, then its UTF-8 bytes). The result is
    byte for byte what encoding the whole record gives; a test holds it to that.
    """

    _MAX_CACHED = 200_000

    def __init__(self, schema: AvroSchema, cached: Sequence[Sequence[str]]) -> None:
        doc = strip_logical_types(json.loads(schema.source))
        fields = doc["fields"]
        names = [f["name"] for f in fields]
        starts = {g[0]: list(g) for g in cached}
        self._runs: list[tuple[str, Any, tuple[str, ...]]] = []  # (kind, schema or None, field names)
        self._caches: list[dict[Any, bytes]] = []
        self._keys: list[Callable[[dict[str, Any]], Any]] = []
        i = 0
        while i < len(fields):
            group = starts.get(names[i])
            if group is not None:
                if names[i : i + len(group)] != group:
                    raise ValueError(f"cached run {group} is not a run of consecutive fields of {schema.full_name}")
                self._runs.append(("cached", self._sub(doc, fields[i : i + len(group)], i), tuple(group)))
                self._caches.append({})
                self._keys.append(operator.itemgetter(*group))
                i += len(group)
                continue
            j = i
            while j < len(fields) and names[j] not in starts:
                j += 1
            run = fields[i:j]
            if len(run) == 1 and run[0]["type"] == "string":
                self._runs.append(("string", None, (run[0]["name"],)))
            else:
                self._runs.append(("fields", self._sub(doc, run, i), tuple(f["name"] for f in run)))
            i = j

    @staticmethod
    def _sub(doc: dict[str, Any], fields: list[Any], at: int) -> Any:
        return parse_schema(
            {"type": "record", "name": f"{doc['name']}Run{at}", "namespace": doc.get("namespace"), "fields": fields}
        )

    def encode(self, record: dict[str, Any]) -> bytes:
        parts: list[bytes] = []
        cache_no = 0
        for kind, schema, names in self._runs:
            if kind == "string":
                parts.append(_avro_string(record[names[0]]))
            elif kind == "fields":
                buf = io.BytesIO()
                schemaless_writer(buf, schema, record)
                parts.append(buf.getvalue())
            else:
                cache = self._caches[cache_no]
                key = self._keys[cache_no](record)
                cache_no += 1
                b = cache.get(key)
                if b is None:
                    buf = io.BytesIO()
                    schemaless_writer(buf, schema, record)
                    b = buf.getvalue()
                    if len(cache) >= self._MAX_CACHED:
                        cache.clear()
                    cache[key] = b
                parts.append(b)
        return b"".join(parts)


def _avro_string(s: str) -> bytes:
    data = s.encode()
    n = len(data) << 1  # zigzag of a non-negative length
    head = bytearray()
    while n > 0x7F:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + data
