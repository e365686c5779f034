"""The store's own reading of tag records gives exactly what fastavro and msgspec give."""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
import pytest

from otbus_core.codec import AvroCodec, single_object_prefix
from otbus_core.exceptions import DecodeError
from otbus_core.schemas import RAW_READING_BATCH, TAG_RECORD
from otbus_event_store.tagjson import TagJson

CODEC = AvroCodec()
SCHEMA = CODEC.schemas.latest(TAG_RECORD)
TOPIC = "acme.ot.tags.v1"
STRINGS = ["", "a", "Temp_0", "Zähler/Ölstand", 'quote " back \\ tab \t nl \n', "x" * 63, "y" * 64, "z" * 300, "€" * 50]
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    1.5,
    -0.0,
    1e300,
    1e-300,
    math.nan,
    math.inf,
    "s",
    "",
]
TIMES = [0, 1, -1, 1_763_900_000_000_000, 2**48, 2**55 - 1, 2**55, 2**63 - 1, -(2**63), -1_000_000_000_000_000]


def _record(rng: random.Random) -> dict[str, Any]:
    ids = [
        "01a20d95-bc87-7000-a32e-81eeede38a5a",
        "01A20D95-BC87-7000-A32E-81EEEDE38A5A",
        "not-a-uuid-but-36-characters-long!!!",
        "short",
    ]
    rec: dict[str, Any] = {name: rng.choice(STRINGS) for name in ("tenant", "path", "site", "area", "line")}
    rec.update(
        equipment=rng.choice(STRINGS),
        signal_type=rng.choice(STRINGS),
        tag_name=rng.choice(STRINGS),
        event_id=rng.choice(ids),
        raw_event_id=rng.choice(ids),
        value=rng.choice(VALUES),
        data_type=rng.choice(["DOUBLE", "INT64", "", "x" * 70]),
        unit=rng.choice([None, "degC", "", "µm" * 40]),
        quality=rng.choice(["GOOD", "BAD", "UNCERTAIN", "q" * 100]),
        quality_code=rng.choice([None, 0, 192, -5, 2**40, 2**63 - 1]),
        source_time=rng.choice(TIMES),
        ingest_time=rng.choice(TIMES),
        source_id=rng.choice(STRINGS),
        protocol=rng.choice(["http", "opcua", "sparkplug"]),
        source_tag=rng.choice(STRINGS),
    )
    return rec


def _reference(value: bytes) -> bytes:
    return msgspec.json.encode(CODEC.decode_any(value))


def test_random_records_equal_fastavro_and_msgspec() -> None:
    tags = TagJson(SCHEMA, single_object_prefix(SCHEMA), max_cached=50)  # small caches: they start over too
    rng = random.Random(11)
    read_here = 0
    for _ in range(3000):
        value = CODEC.encode(TAG_RECORD, _record(rng), TOPIC)
        made = tags.json(value)
        if made is not None:
            read_here += 1
            assert made == _reference(value), value
    assert read_here > 500  # a quarter have UUID text in both ids: those are read here


def test_what_is_not_plain_goes_the_general_way() -> None:
    tags = TagJson(SCHEMA, single_object_prefix(SCHEMA))
    rng = random.Random(3)
    rec = _record(rng)
    rec.update(event_id="01a20d95-bc87-7000-a32e-81eeede38a5a", raw_event_id="01a20d95-bc87-7000-a32e-81eeede38a5b")
    value = CODEC.encode(TAG_RECORD, rec, TOPIC)
    assert tags.json(value) == _reference(value)
    body = len(single_object_prefix(SCHEMA))
    cases = {
        "trailing byte": value + b"\x00",
        "cut short": value[:-5],
        "cut in the middle": value[: body + 60],
        "no body": value[:body],
        "another schema": CODEC.encode(RAW_READING_BATCH, _raw(), "acme.ot.raw.http.v1"),
        "registry framing": b"\x00\x00\x00\x00\x01" + value[body:],
    }
    for name, bad in cases.items():
        assert tags.json(bad) is None, name
    for name in ("trailing byte", "cut short", "cut in the middle"):
        with pytest.raises(DecodeError):
            CODEC.decode_any(cases[name])


def test_a_bad_union_branch_or_bad_utf8_is_left_to_fastavro() -> None:
    tags = TagJson(SCHEMA, single_object_prefix(SCHEMA))
    rec = _record(random.Random(5))
    rec.update(
        event_id="01a20d95-bc87-7000-a32e-81eeede38a5a",
        raw_event_id="01a20d95-bc87-7000-a32e-81eeede38a5b",
        tenant="t",
        path="p",
        site="s",
        area="a",
        line="l",
        equipment="e",
        signal_type="g",
        tag_name="n",
        value=True,
    )
    value = CODEC.encode(TAG_RECORD, rec, TOPIC)
    at = value.index(b"\x02\x01", len(single_object_prefix(SCHEMA)) + 37 + 16)  # the value: boolean true
    assert tags.json(value) == _reference(value)
    assert tags.json(value[:at] + b"\x0c" + value[at + 1 :]) is None  # branch 6 of 5
    assert tags.json(value[:at] + b"\x02\x07" + value[at + 2 :]) is None  # a boolean byte of 7
    utf8 = value.index(b"\x02n") + 1  # tag_name "n"
    assert tags.json(value[:utf8] + b"\xff" + value[utf8 + 1 :]) is None


def test_a_changed_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="layout"):
        TagJson(CODEC.schemas.latest(RAW_READING_BATCH), b"")


def _raw() -> dict[str, Any]:
    return {
        "source_id": "s",
        "protocol": "http",
        "context": {},
        "first_id": "01a20d95-bc87-7000-a32e-81eeede38a5a",
        "received_time": 1,
        "tags": [],
        "value_kinds": b"",
        "data_types": [],
        "qualities": [],
        "quality_codes": [],
        "source_times": [],
    }
