from __future__ import annotations

import json

import pytest

from otbus_ingest_http.validation import EventValidator, timestamp_micros

V = EventValidator(max_path=64, max_str=32, max_items=100)
SEED = {
    "tagPath": "[default]Sample_Tags/Ramp/Ramp0",
    "tagProvider": "default",
    "value": 42.5,
    "quality": "GOOD",
    "qualityCode": 192,
    "timestamp": 1767225600000,
    "dataType": "float",
}


def test_the_seed_payload_takes_the_fast_path() -> None:
    good, bad = V.decode_batch(json.dumps([SEED, {**SEED, "value": True}, {"tagPath": "x"}]).encode())
    assert bad == [] and len(good) == 3
    assert good[0].tagPath == SEED["tagPath"] and good[0].value == 42.5 and good[1].value is True
    assert good[2].value is None and good[2].timestamp is None


def test_events_wrapper_object_is_accepted() -> None:
    good, bad = V.decode_batch(json.dumps({"events": [SEED, {"value": 1}]}).encode())
    assert len(good) == 1 and [b[2].field for b in bad] == ["tagPath"]


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"value": 1}, "tagPath"),
        ({"tagPath": ""}, "tagPath"),
        ({"tagPath": "x" * 65}, "tagPath"),
        ({"tagPath": 5}, "tagPath"),
        ({"tagPath": "a", "timestamp": "yesterday"}, "timestamp"),
        ({"tagPath": "a", "timestamp": -1}, "timestamp"),
        ({"tagPath": "a", "timestamp": 1e20}, "timestamp"),
        ({"tagPath": "a", "value": "y" * 33}, "value"),
        ({"tagPath": "a", "value": {"nested": 1}}, "value"),
        ({"tagPath": "a", "value": [1, 2]}, "value"),
        ({"tagPath": "a", "value": 2**64}, "value"),
        ({"tagPath": "a", "qualityCode": "good"}, "qualityCode"),
        ({"tagPath": "a", "dataType": 7}, "dataType"),
    ],
)
def test_invalid_items_name_the_field_and_valid_ones_pass(item: dict, field: str) -> None:
    good, bad = V.decode_batch(json.dumps([SEED, item, SEED]).encode())
    assert len(good) == 2
    assert len(bad) == 1 and bad[0][0] == 1 and bad[0][1] == item and bad[0][2].field == field


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_by_name(token: str) -> None:
    body = f'[{{"tagPath": "a", "value": {token}}}, {{"tagPath": "b", "value": 1}}]'.encode()
    good, bad = V.decode_batch(body)
    assert [g.tagPath for g in good] == ["b"]
    assert bad[0][2].field == "value" and "not allowed" in bad[0][2].message


def test_not_json_or_not_a_list_raises_value_error() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        V.decode_batch(b"[{")
    with pytest.raises(ValueError, match="array"):
        V.decode_batch(b'"just a string"')
    with pytest.raises(ValueError, match="object"):
        V.decode_one(b"[1]")


def test_too_many_items_is_an_overflow() -> None:
    with pytest.raises(OverflowError, match="limit of 100"):
        V.decode_batch(json.dumps([SEED] * 101).encode())
    with pytest.raises(OverflowError):
        V.decode_batch(json.dumps([SEED] * 100 + [{"value": 1}]).encode())


def test_single_event() -> None:
    ev, item, err = V.decode_one(json.dumps(SEED).encode())
    assert ev is not None and item is None and err is None
    ev, item, err = V.decode_one(b'{"tagPath": "a", "value": NaN}')
    assert ev is None and item["tagPath"] == "a" and err is not None and err.field == "value"


def test_timestamps_milliseconds_or_seconds() -> None:
    assert timestamp_micros(1767225600000) == 1767225600000000
    assert timestamp_micros(1767225600.5) == 1767225600500000  # seconds
    assert timestamp_micros(1767225600000.25) == 1767225600000250
