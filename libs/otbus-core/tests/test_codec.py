"""Codecs: a stranger holding only schemas/avro and fastavro can decode what we write."""

from __future__ import annotations

import io
import itertools
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

from otbus_core.codec import AvroCodec
from otbus_core.exceptions import DecodeError
from otbus_core.ids import uuid7
from otbus_core.schemas import schemas_root

TAG = {
    "event_id": uuid7(),
    "tenant": "acme",
    "path": "plant1/production/line1/plc1/temperature/reactor_temp",
    "site": "plant1",
    "area": "production",
    "line": "line1",
    "equipment": "plc1",
    "signal_type": "temperature",
    "tag_name": "reactor_temp",
    "value": 21,
    "data_type": "INT64",
    "unit": "degC",
    "quality": "GOOD",
    "quality_code": 192,
    "source_time": 1_763_000_000_123_456,
    "ingest_time": 1_763_000_000_223_456,
    "source_id": "ignition",
    "protocol": "http",
    "source_tag": "[default]Line1/reactor_temp",
    "raw_event_id": uuid7(),
}


def stranger_decode(data: bytes) -> dict:
    """Decode with nothing but the .avsc files and fastavro: find the writer by fingerprint."""
    assert data[:2] == b"\xc3\x01"
    for avsc in (Path(schemas_root()) / "avro").glob("*/v*.avsc"):
        doc = json.loads(avsc.read_text())
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(doc), "CRC-64-AVRO"))
        if fp == data[2:10]:
            return fastavro.schemaless_reader(io.BytesIO(data[10:]), fastavro.parse_schema(doc))
    raise AssertionError("no schema in schemas/avro has this fingerprint")


@pytest.mark.parametrize("value", [True, 21, -(2**63), 2.5, "running", None])
def test_single_object_roundtrip_and_stranger_decode(value: object) -> None:
    codec = AvroCodec()
    rec = {**TAG, "value": value}
    data = codec.encode("tag_record", rec, "acme.ot.tags.v1")
    assert data[:2] == b"\xc3\x01"
    ours = codec.decode(data, "tag_record")
    theirs = stranger_decode(data)
    assert ours["value"] == value and type(ours["value"]) is type(value)
    assert theirs["value"] == value and type(theirs["value"]) is type(value)
    assert str(theirs["event_id"]) == TAG["event_id"]
    assert theirs["path"] == TAG["path"]


def test_int_stays_int_not_double() -> None:
    codec = AvroCodec()
    out = codec.decode(codec.encode("tag_record", {**TAG, "value": 3}, "t.ot.tags.v1"), "tag_record")
    assert isinstance(out["value"], int) and not isinstance(out["value"], bool)


def test_wrong_schema_and_garbage_are_decode_errors() -> None:
    codec = AvroCodec()
    data = codec.encode("tag_record", TAG, "acme.ot.tags.v1")
    with pytest.raises(DecodeError, match="expected"):
        codec.decode(data, "raw_reading_batch")
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        codec.decode(b"\xc3\x01" + b"\x00" * 8 + b"\x02", "tag_record")
    with pytest.raises(DecodeError, match="unknown value encoding"):
        codec.decode(b'{"json": true}', "tag_record")
    with pytest.raises(DecodeError):
        codec.decode(data[:20], "tag_record")
    with pytest.raises(DecodeError, match="trailing"):
        codec.decode(data + b"\x00", "tag_record")


def test_confluent_wire_format_without_registry_is_a_clear_error() -> None:
    codec = AvroCodec()
    with pytest.raises(DecodeError, match="no schema_registry_url"):
        codec.decode(struct.pack(">bI", 0, 7) + b"\x00", "tag_record")


def test_dataschema_uri_names_schema_and_version() -> None:
    _, uri = AvroCodec().header("tag_record", "acme.ot.tags.v1")
    assert uri == "urn:otbus:avro:otbus.ot.tags.TagRecord:v1"


def test_every_schema_version_reads_data_of_the_previous_version() -> None:
    """Backward compatibility: each vN reads what vN-1 wrote (schema resolution by fastavro)."""
    codec = AvroCodec()
    for key in codec.schemas.names():
        versions = codec.schemas.versions(key)
        assert versions and versions[0].version == 1, f"{key} must start at v1"
        assert [v.version for v in versions] == list(range(1, len(versions) + 1)), f"{key}: gap in versions"
        for old, new in itertools.pairwise(versions):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, old.parsed, _minimal(old.parsed))
            buf.seek(0)
            fastavro.schemaless_reader(buf, old.parsed, new.parsed)  # raises if new cannot read old
        # every field added in a version must have a default, or data written before cannot be read
        for old, new in itertools.pairwise(versions):
            before = {f["name"] for f in old.parsed["fields"]}
            for f in new.parsed["fields"]:
                assert f["name"] in before or "default" in f, (
                    f"{key} v{new.version}: new field {f['name']} needs a default"
                )


def test_published_schema_versions_never_change() -> None:
    """schemas/avro/fingerprints.json pins every published version: edit a version in place and this fails.

    A new version is added to the file on purpose (print the fingerprints with
    `python -m otbus_core.schemas`); a published one is never removed or changed.
    """
    codec = AvroCodec()
    pinned = json.loads((schemas_root() / "avro" / "fingerprints.json").read_text())
    assert codec.schemas.fingerprints() == pinned


def _minimal(schema: dict) -> dict:
    out: dict = {}
    for f in schema["fields"]:
        t = f["type"]
        if "default" in f:
            out[f["name"]] = f["default"]
        elif t == "string" or (isinstance(t, dict) and t.get("type") == "string"):
            out[f["name"]] = "00000000-0000-7000-8000-000000000000"
        elif t in ("long", "int") or (isinstance(t, dict) and t.get("type") in ("long", "int")):
            out[f["name"]] = 0
        elif isinstance(t, dict) and t.get("type") == "array":
            out[f["name"]] = []
        elif isinstance(t, dict) and t.get("type") == "map":
            out[f["name"]] = {}
        else:
            out[f["name"]] = None
    return out


def test_fast_encoding_is_byte_identical_and_strangers_get_logical_types() -> None:
    """We write without logical-type conversions; the bytes are what the published schema writes."""
    import datetime
    import uuid

    codec = AvroCodec()
    schema = codec.schemas.latest("tag_record")
    ours = codec.encode("tag_record", TAG, "acme.ot.tags.v1")
    as_published = {
        **TAG,
        "event_id": uuid.UUID(TAG["event_id"]),
        "raw_event_id": uuid.UUID(TAG["raw_event_id"]),
        "source_time": datetime.datetime.fromtimestamp(TAG["source_time"] / 1e6, tz=datetime.UTC),
        "ingest_time": datetime.datetime.fromtimestamp(TAG["ingest_time"] / 1e6, tz=datetime.UTC),
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, as_published)
    assert ours[10:] == buf.getvalue()
    theirs = stranger_decode(ours)
    assert isinstance(theirs["source_time"], datetime.datetime) and theirs["source_time"].tzinfo is not None
    assert theirs["source_time"].timestamp() * 1_000_000 == pytest.approx(TAG["source_time"])
    back = codec.decode(ours, "tag_record")
    assert back["source_time"] == TAG["source_time"] and back["event_id"] == TAG["event_id"]


def test_split_encoder_writes_exactly_what_fastavro_writes() -> None:
    import random

    from otbus_core.codec import SplitEncoder

    codec = AvroCodec()
    schema = codec.schemas.latest("tag_record")
    parts = ("tenant", "path", "site", "area", "line", "equipment", "signal_type", "tag_name")
    enc = SplitEncoder(schema, [parts, ("source_id", "protocol", "source_tag")], ["data_type", "ingest_time"])
    rng = random.Random(3)
    values = [None, True, False, 0, -1, 4095, 4096, 2**63 - 1, -(2**63), 1.5, float("inf"), "", "ü€𝄞" * 50, "x" * 5000]
    for i in range(500):
        rec = {
            **TAG,
            "event_id": uuid7(),
            "path": f"p/{rng.randrange(20)}/{'é' * rng.randrange(70)}",
            "source_tag": f"[default]{rng.randrange(20)}",
            "value": rng.choice(values),
            "unit": rng.choice([None, "°C", ""]),
            "quality_code": rng.choice([None, 192, -2147483132]),
            "source_time": rng.choice([rng.randrange(-(2**62), 2**62), rng.randrange(2**47, 2**56), 2**48, 2**55 - 1]),
            "ingest_time": rng.choice([1_795_513_791_375_000, 2**48 - 1, 2**55, -(2**63)]),
            "data_type": rng.choice(["DOUBLE", "STRING", "ü"]),
            "raw_event_id": uuid7(),
        }
        full = io.BytesIO()
        fastavro.schemaless_writer(full, schema.fast, rec)
        assert enc.encode(rec) == full.getvalue(), i
    with pytest.raises(ValueError, match="consecutive"):
        SplitEncoder(schema, [("tenant", "site")])


def _raw_batch(rng: Any, n: int) -> dict[str, Any]:
    from otbus_core.raw import NONE, pack_values

    wide = [0, 2**48 - 1, 2**48, 2**55 - 1, 2**55, NONE, -1, 1_795_513_791_375_000]
    times = rng.choice(
        [
            [1_795_513_791_375_000 + rng.randrange(10**9) for _ in range(n)],  # the 8-byte fast path
            [rng.choice(wide) for _ in range(n)],  # mixed: fastavro writes them
        ]
    )
    kinds = [None, True, False, 0, -5, 2**63 - 1, -(2**63), 0.1, -1e300, "", "ü€𝄞" * 30]
    values = [rng.choice(kinds) for _ in range(n)]
    units = [rng.choice(["", "°C", "x" * 70]) for _ in range(n)]
    return {
        "source_id": "src-ü",
        "protocol": "http",
        "context": rng.choice([{}, {"site": "plant1", "line": "l1"}]),
        "first_id": uuid7(),
        "received_time": rng.randrange(2**62),
        "tags": [f"[default]Line1/M{rng.randrange(30)}/{'é' * rng.randrange(80)}" for _ in range(n)],
        **pack_values(values),
        "data_types": [rng.choice(["float", "int", "", "Float8"]) for _ in range(n)],
        "qualities": rng.choice([["GOOD"] * n, [rng.choice(["GOOD", "Bad_NotConnected", ""]) for _ in range(n)]]),
        "quality_codes": [rng.choice([NONE, 192, 0, -2147483132, 2**63 - 1]) for _ in range(n)],
        "source_times": times,
        **({"units": units} if rng.random() < 0.5 else {}),  # absent: the schema's default []
        **({"attributes": [{"k": "v"} for _ in range(n)]} if rng.random() < 0.3 else {}),
    }


def test_column_encoder_writes_exactly_what_fastavro_writes() -> None:
    import random

    from otbus_core.codec import ColumnEncoder
    from otbus_core.raw import REPEATING_COLUMNS

    schema = AvroCodec().schemas.latest("raw_reading_batch")
    enc = ColumnEncoder(schema, REPEATING_COLUMNS, max_cached=50)  # small: the caches are cleared often
    rng = random.Random(7)
    fast_path = 0
    for i in range(400):
        rec = _raw_batch(rng, rng.choice([0, 1, 2, 63, 64, 65, 300]))
        times = rec["source_times"]
        fast_path += bool(times) and min(times) >= 2**48 and max(times) < 2**55
        full = io.BytesIO()
        fastavro.schemaless_writer(full, schema.fast, rec)
        assert enc.encode(rec) == full.getvalue(), i
    assert fast_path > 50  # the 8-byte varint path was taken, and held to fastavro's bytes


@pytest.mark.parametrize(
    ("field", "bad", "error", "fastavro_refuses"),
    [
        ("tags", [None], TypeError, True),
        ("qualities", [1], TypeError, True),
        ("quality_codes", [2**63], TypeError, True),
        ("source_times", [2**50, "x"], TypeError, True),
        ("doubles", ["x"], TypeError, True),
        ("value_kinds", "abc", TypeError, True),
        ("tags", None, ValueError, True),
        ("received_time", 2**63, TypeError, True),
        ("source_id", None, ValueError, True),
        ("source_id", 5, TypeError, True),
        ("context", {"k": 1}, TypeError, True),
        # fastavro writes these (the float truncated, 1 as true); a column of the wrong type is a bug: refuse
        ("quality_codes", [1.5], TypeError, False),
        ("source_times", [2**50, 1.5], TypeError, False),
        ("booleans", [1], TypeError, False),
    ],
)
def test_column_encoder_refuses_wrong_types(
    field: str, bad: Any, error: type[Exception], fastavro_refuses: bool
) -> None:
    import random

    from otbus_core.codec import ColumnEncoder
    from otbus_core.raw import REPEATING_COLUMNS

    schema = AvroCodec().schemas.latest("raw_reading_batch")
    rec = {**_raw_batch(random.Random(1), 3), field: bad}
    with pytest.raises(error):
        ColumnEncoder(schema, REPEATING_COLUMNS).encode(rec)
    if fastavro_refuses:
        with pytest.raises((TypeError, ValueError, AttributeError, OverflowError)):
            fastavro.schemaless_writer(io.BytesIO(), schema.fast, rec)


def test_column_encoder_checks_its_fields() -> None:
    from otbus_core.codec import ColumnEncoder

    schema = AvroCodec().schemas.latest("raw_reading_batch")
    with pytest.raises(ValueError, match="does not have"):
        ColumnEncoder(schema, ["nope"])
    with pytest.raises(ValueError, match="an array of strings or longs"):
        ColumnEncoder(schema, ["attributes"])


@pytest.mark.parametrize(
    "union",
    [
        ["null", "boolean", "long", "double", "string"],
        ["null", "double", "long"],  # fastavro writes an int in the first branch that takes it
        ["long", "boolean", "null"],  # and a bool as a long here
        ["string", "null", "double"],
    ],
)
def test_split_encoder_picks_the_union_branch_fastavro_picks(union: list[str]) -> None:
    from fastavro import parse_schema

    from otbus_core.codec import SplitEncoder
    from otbus_core.schemas import AvroSchema

    doc = {
        "type": "record",
        "name": "U",
        "namespace": "t",
        "fields": [{"name": "a", "type": "string"}, {"name": "v", "type": union}, {"name": "n", "type": "long"}],
    }
    parsed = parse_schema(doc)
    schema = AvroSchema("u", 1, "t.U", json.dumps(doc), parsed, parsed, b"")
    enc = SplitEncoder(schema, [])
    for v in [None, True, False, 0, 5, -(2**63), 2**63 - 1, 2**63, -(2**70), 1.5, float("nan"), "", "x"]:
        rec = {"a": "k", "v": v, "n": 7}
        full = io.BytesIO()
        try:
            fastavro.schemaless_writer(full, parsed, rec)
        except (TypeError, ValueError, OverflowError):
            with pytest.raises((TypeError, ValueError, OverflowError)):
                enc.encode(rec)
            continue
        assert enc.encode(rec) == full.getvalue(), (union, v)


def test_string_caches_are_bounded() -> None:
    from otbus_core.codec import _avro_string, _StringCache

    cache = _StringCache(limit=3)
    long_one = "p" * 129
    assert cache[long_one] == _avro_string(long_one) and long_one not in cache  # long strings are not kept
    for s in ("a", "b", "c", "d"):
        assert cache[s] == _avro_string(s)
    assert len(cache) <= 3
