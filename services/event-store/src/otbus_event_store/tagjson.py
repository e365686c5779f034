"""The JSON payload of a tag record, read straight from its Avro bytes: the store's fast path.

Decoding a record with fastavro and encoding the dict with msgspec costs about 30 µs here,
most of it fastavro's set-up per call. A tag record is mostly runs of strings that repeat
from reading to reading: a tag's path parts and its source; its data type, unit, quality and
quality code. Each run is found by its length prefixes and its JSON made once per distinct
run of bytes. The reading's own fields (ids, value, times) are read one by one. The result is
byte for byte `msgspec.json.encode(codec.decode_any(value))`; tests hold it to that.

Only the layout `TAG_RECORD_LAYOUT`, written without a schema registry (single-object encoding), is read
here. Anything else (another schema, a registry id, a value not read here exactly as fastavro
reads it: an unknown union branch, a boolean byte other than 0 or 1, ids that are not UUID
text, bad UTF-8, trailing bytes) gives None and takes the general way, which also gives the
precise error.
"""

from __future__ import annotations

import struct

import msgspec

from otbus_core.memo import BoundedDict
from otbus_core.schemas import TAG_RECORD_LAYOUT, AvroSchema, require_layout

__all__ = ["TagJson"]

_PARTS = [name for name, _ in TAG_RECORD_LAYOUT[1:9]]
_SOURCE = [name for name, _ in TAG_RECORD_LAYOUT[16:19]]
_encode = msgspec.json.Encoder().encode
_unpack_double = struct.Struct("<d").unpack_from
_UUID_CHARS = b"0123456789abcdefABCDEF-"  # UUID text: JSON as it is
_LONGEST_CACHED = 512  # bytes of a run


class TagJson:
    """`json(value)`: the JSON of a tag record's Avro value, or None when it is not plain."""

    def __init__(self, schema: AvroSchema, prefix: bytes, max_cached: int = 200_000) -> None:
        require_layout(schema, TAG_RECORD_LAYOUT, "the event store's tag-record reader")
        self.prefix = prefix
        self._start = len(prefix)
        # run bytes -> ,"k":"v"...: a tag's path parts, and its source
        self._parts: BoundedDict[bytes, bytes] = BoundedDict(max_cached)
        self._sources: BoundedDict[bytes, bytes] = BoundedDict(max_cached)
        self._middles: BoundedDict[bytes, bytes] = BoundedDict(10_000)  # data type .. quality code
        self._longs: BoundedDict[bytes, bytes] = BoundedDict(10_000)  # 8-byte varint -> its text

    def json(self, data: bytes) -> bytes | None:
        try:
            return self._json(data)
        except (IndexError, UnicodeDecodeError, struct.error):
            return None  # cut short or not plain: the general way says what is wrong

    def _json(self, data: bytes) -> bytes | None:
        p = self._start
        if data[:p] != self.prefix:
            return None
        event_id = data[p + 1 : p + 37]
        if data[p] != 72 or len(event_id) != 36 or event_id.translate(None, _UUID_CHARS):  # 72: 36 chars
            return None
        p += 37
        start = p
        for _ in range(8):  # tenant .. tag_name
            b = data[p]
            p = p + 1 + (b >> 1) if b < 0x80 and not b & 1 else _string(data, p)[1]
        raw = data[start:p]
        parts = self._parts.get(raw) or self._run(raw, _PARTS, self._parts)
        branch = data[p]
        if branch == 6:
            value = _encode(_unpack_double(data, p + 1)[0])
            p += 9
        elif branch == 4:
            n, p = _long(data, p + 1)
            value = b"%d" % n
        elif branch == 0:
            value = b"null"
            p += 1
        elif branch == 8:
            start, p = _string(data, p + 1)
            value = _encode(data[start:p].decode())
        elif branch == 2 and data[p + 1] < 2:
            value = b"true" if data[p + 1] else b"false"
            p += 2
        else:
            return None
        # data_type, unit (null or a string), quality, quality_code (null or a long): one run
        start = p
        b = data[p]
        p = p + 1 + (b >> 1) if b < 0x80 and not b & 1 else _string(data, p)[1]
        if data[p] == 2:
            b = data[p + 1]
            p = p + 2 + (b >> 1) if b < 0x80 and not b & 1 else _string(data, p + 1)[1]
        elif data[p] == 0:
            p += 1
        else:
            return None
        b = data[p]
        p = p + 1 + (b >> 1) if b < 0x80 and not b & 1 else _string(data, p)[1]
        if data[p] == 2:
            p += 1
            while data[p] >= 0x80:
                p += 1
            p += 1
        elif data[p] == 0:
            p += 1
        else:
            return None
        raw = data[start:p]
        middle = self._middles.get(raw) or self._middle(raw)
        # source_time, ingest_time: mostly 8-byte varints that repeat (a raw batch's readings
        # share their ingest time, a scan its source time): their text by their bytes
        longs = self._longs
        key = data[p : p + 8]
        source_time = longs.get(key)
        if source_time is None:
            source_time, p = self._long_text(data, p, key)
        else:
            p += 8
        key = data[p : p + 8]
        ingest_time = longs.get(key)
        if ingest_time is None:
            ingest_time, p = self._long_text(data, p, key)
        else:
            p += 8
        start = p
        for _ in range(3):  # source_id, protocol, source_tag
            b = data[p]
            p = p + 1 + (b >> 1) if b < 0x80 and not b & 1 else _string(data, p)[1]
        raw = data[start:p]
        source = self._sources.get(raw) or self._run(raw, _SOURCE, self._sources)
        raw_id = data[p + 1 : p + 37]
        if data[p] != 72 or p + 37 != len(data) or raw_id.translate(None, _UUID_CHARS):
            return None  # not UUID text, or trailing bytes
        return b"".join(
            (
                b'{"event_id":"',
                event_id,
                b'"',
                parts,
                b',"value":',
                value,
                middle,
                b',"source_time":',
                source_time,
                b',"ingest_time":',
                ingest_time,
                source,
                b',"raw_event_id":"',
                raw_id,
                b'"}',
            )
        )

    def _long_text(self, data: bytes, p: int, key: bytes) -> tuple[bytes, int]:
        """The decimal text of the long at `p` and the position after it; remembered by its
        bytes when it is an 8-byte varint (`key` is the 8 bytes at `p`)."""
        n, end = _long(data, p)
        text = b"%d" % n
        if end == p + 8:
            self._longs.put(key, text)
        return text, end

    def _run(self, raw: bytes, names: list[str], cache: BoundedDict[bytes, bytes]) -> bytes:
        """`,"name":"value"` for each string of a run of Avro strings, remembered by its bytes
        when it is not long (so a cache full of long paths stays a few hundred MB at most)."""
        p, pieces = 0, list[bytes]()
        for name in names:
            start, p = _string(raw, p)
            pieces += (b',"', name.encode(), b'":', _encode(raw[start:p].decode()))
        if p != len(raw):
            raise IndexError("a run longer than its strings")
        made = b"".join(pieces)
        return cache.put(raw, made) if len(raw) <= _LONGEST_CACHED else made

    def _middle(self, raw: bytes) -> bytes:
        """`,"data_type":..,"unit":..,"quality":..,"quality_code":..` from their bytes,
        remembered when short."""
        start, p = _string(raw, 0)
        data_type = _encode(raw[start:p].decode())
        if raw[p] == 0:
            unit, p = b"null", p + 1
        else:
            start, p = _string(raw, p + 1)
            unit = _encode(raw[start:p].decode())
        start, p = _string(raw, p)
        quality = _encode(raw[start:p].decode())
        if raw[p] == 0:
            code, p = b"null", p + 1
        else:
            n, p = _long(raw, p + 1)
            code = b"%d" % n
        if p != len(raw):
            raise IndexError("a varint longer than its bytes")
        made = b"".join(
            (b',"data_type":', data_type, b',"unit":', unit, b',"quality":', quality, b',"quality_code":', code)
        )
        if len(raw) <= 256:
            self._middles.put(raw, made)
        return made


def _string(data: bytes, p: int) -> tuple[int, int]:
    """(start, end) of the Avro string at `p`; IndexError when it is not all there."""
    b = data[p]
    if b < 0x80:
        start, n = p + 1, (b >> 1) ^ -(b & 1)
    else:
        n, start = _long(data, p)
    if n < 0:
        raise IndexError("negative string length")
    end = start + n
    if end > len(data):
        raise IndexError("string past the end")
    return start, end


def _long(data: bytes, p: int) -> tuple[int, int]:
    """The zigzag varint long at `p` and the position after it."""
    x = int.from_bytes(data[p : p + 8], "little")
    if x & 0x8080_8080_8080_8080 == 0x0080_8080_8080_8080:  # 8 bytes (timestamps in µs)
        # the 7-bit groups put together pairwise: into 14-bit, 28-bit, then 56-bit lanes
        x = (x & 0x007F_007F_007F_007F) | (x >> 1 & 0x3F80_3F80_3F80_3F80)
        x = (x & 0x0000_3FFF_0000_3FFF) | (x >> 2 & 0x0FFF_C000_0FFF_C000)
        z = (x & 0x0FFF_FFFF) | (x >> 4 & 0x00FF_FFFF_F000_0000)
        if p + 8 > len(data):
            raise IndexError("varint past the end")
        return (z >> 1) ^ -(z & 1), p + 8
    z = shift = 0
    while True:
        b = data[p]
        p += 1
        z |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise IndexError("varint longer than 10 bytes")
    if z >> 64:
        raise IndexError("varint beyond 64 bits")
    return (z >> 1) ^ -(z & 1), p
