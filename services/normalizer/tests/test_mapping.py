from __future__ import annotations

import pytest

from otbus_core.exceptions import ConfigError, PoisonRecord
from otbus_core.ids import uuid7, uuid7_block, uuid7_seq
from otbus_core.raw import NONE, pack_values
from otbus_normalizer.mapping import (
    PathTemplate,
    Reading,
    TagMapper,
    coerce_value,
    columns,
    signal_type_of,
    split_tag,
)
from otbus_normalizer.quality import map_quality


@pytest.mark.parametrize(
    ("protocol", "text", "code", "want"),
    [
        ("http", None, 192, "GOOD"),  # Ignition Good
        ("http", "GOOD", 192, "GOOD"),
        ("http", None, 0, "GOOD"),  # Ignition 8 Good_Unspecified
        ("http", None, 1073742081, "UNCERTAIN"),  # Uncertain_LastKnownValue
        ("http", None, 257, "UNCERTAIN"),  # bare subcode
        ("http", None, -2147483132, "BAD"),  # Bad_Stale
        ("http", None, 516, "BAD"),
        ("http", None, -1073741048, "BAD"),  # Error_Exception
        ("http", "Bad_NotConnected", None, "BAD"),
        ("http", "Uncertain", None, "UNCERTAIN"),
        ("http", "whatever", None, "UNCERTAIN"),
        ("http", None, None, "GOOD"),
        ("opcua", None, 0, "GOOD"),
        ("opcua", None, 0x40000000, "UNCERTAIN"),
        ("opcua", None, 0x80340000, "BAD"),  # BadNodeIdUnknown
        ("modbus", None, 0, "GOOD"),
        ("modbus", None, 2, "BAD"),  # illegal data address
        ("mqtt", None, 192, "GOOD"),
        ("mqtt", None, 64, "UNCERTAIN"),
        ("mqtt", None, 0, "BAD"),
        ("sparkplug", None, 192, "GOOD"),
        ("sparkplug", None, 500, "BAD"),
        ("sparkplug", None, 0, "BAD"),
        ("sparkplug", None, 1073742081, "UNCERTAIN"),
        ("http", "Bad_Stale", 192, "BAD"),  # the script's default code does not hide a bad text
        ("http", "Good", -2147483132, "BAD"),
        ("opcua", "Uncertain", 0, "UNCERTAIN"),
    ],
)
def test_quality_mapping(protocol: str, text: str | None, code: int | None, want: str) -> None:
    assert map_quality(protocol, text, code) == want


@pytest.mark.parametrize(
    ("value", "declared", "want", "want_type"),
    [
        (1, None, 1, "INT64"),
        (1.5, None, 1.5, "DOUBLE"),
        (True, None, True, "BOOLEAN"),
        ("x", None, "x", "STRING"),
        (None, None, None, "NULL"),
        (3.0, "int", 3, "INT64"),
        ("42", "Int4", 42, "INT64"),
        (7, "float", 7.0, "DOUBLE"),
        ("2.5", "Float8", 2.5, "DOUBLE"),
        (1, "bool", True, "BOOLEAN"),
        ("false", "Boolean", False, "BOOLEAN"),
        (12, "str", "12", "STRING"),
        (5, "SomethingElse", 5, "INT64"),
        (None, "float", None, "DOUBLE"),
    ],
)
def test_coercion(value: object, declared: str | None, want: object, want_type: str) -> None:
    got, t = coerce_value(value, declared)
    assert got == want and type(got) is type(want) and t == want_type


@pytest.mark.parametrize(("value", "declared"), [(3.5, "int"), ("abc", "float"), (7, "bool"), ("maybe", "bool")])
def test_coercion_refuses(value: object, declared: str) -> None:
    with pytest.raises(PoisonRecord, match="does not fit"):
        coerce_value(value, declared)


@pytest.mark.parametrize("value", [1e20, "99999999999999999999", 2**63, -(2**63) - 1])
def test_an_int64_out_of_range_is_poison(value: object) -> None:
    with pytest.raises(PoisonRecord, match="outside the range of INT64"):
        coerce_value(value, "Int64")
    assert coerce_value(2**63 - 1, "int") == (2**63 - 1, "INT64")


def test_split_and_signal_type() -> None:
    assert split_tag("[default]Sample_Tags/Ramp/Ramp0") == ["Sample_Tags", "Ramp", "Ramp0"]
    assert split_tag("ns=2;s=Line1.Reactor.Temp") == ["Line1", "Reactor", "Temp"]
    assert signal_type_of(["Reactor_Temp"], None) == "temperature"
    assert signal_type_of(["Sample_Tags", "Ramp", "Ramp0"], None) == "ramp"
    assert signal_type_of(["x"], None) == "value"
    assert signal_type_of(["x"], "Flow Rate") == "flow_rate"


def test_template_validation() -> None:
    with pytest.raises(ConfigError, match=r"OTBUS_PATH_TEMPLATE.*bogus"):
        PathTemplate("{site}/{bogus}/{tag_name}")
    with pytest.raises(ConfigError, match="tag_name"):
        PathTemplate("{site}/{area}")


def _reading(**kw: object) -> Reading:
    base = {
        "id": uuid7(),
        "tag": "[default]Line1/Reactor_Temp",
        "value": 21.5,
        "data_type": "float",
        "quality": "GOOD",
        "quality_code": 192,
        "source_time": 1767225600000000,
        "received_time": 1767225601000000,
    }
    base.update(kw)
    return Reading(**base)  # type: ignore[arg-type]


def test_tag_record_with_context_layers() -> None:
    mapper = TagMapper(
        PathTemplate("{site}/{area}/{line}/{equipment}/{signal_type}/{tag_name}"),
        {"site": "plant1", "area": "production", "line": "line1", "equipment": "default"},
        {"ignition": {"equipment": "plc 7"}},
    )
    ctx = mapper.context_for("ignition", {"line": "line2"})
    r = _reading()
    rec = mapper.to_tag("acme", "ignition", "http", ctx, r)
    assert rec["path"] == "plant1/production/line2/plc_7/temperature/Reactor_Temp"
    assert rec["quality"] == "GOOD" and rec["data_type"] == "DOUBLE" and rec["value"] == 21.5
    assert rec["source_time"] == 1767225600000000 and rec["ingest_time"] == 1767225601000000
    assert rec["raw_event_id"] == r.id and rec["event_id"] != r.id
    assert mapper.to_tag("acme", "ignition", "http", ctx, r)["event_id"] == rec["event_id"]  # deterministic


def test_nan_becomes_null_bad_and_missing_source_time_uses_receive_time() -> None:
    mapper = TagMapper(PathTemplate("{site}/{tag_name}"), {"site": "s"}, {})
    r = _reading(value=float("nan"), quality_code=0, source_time=None)
    rec = mapper.to_tag("acme", "x", "opcua", mapper.context_for("x", {}), r)
    assert rec["value"] is None and rec["quality"] == "BAD"
    assert rec["source_time"] == rec["ingest_time"]
    assert rec["path"] == "s/Reactor_Temp"


def test_columns_give_readings_with_consecutive_ids() -> None:
    first = uuid7_block(3)
    batch = {
        "source_id": "s",
        "protocol": "http",
        "context": {},
        "first_id": first,
        "received_time": 5,
        "tags": ["a", "b", "c"],
        **pack_values([1, 2.5, None]),
        "data_types": ["", "float", ""],
        "qualities": ["", "", "Bad"],
        "quality_codes": [NONE, 192, NONE],
        "source_times": [NONE, 7, NONE],
        "units": [],
        "attributes": [],
    }
    rs = columns(batch)
    assert [r.id for r in rs] == uuid7_seq(first, 3) and rs[0].id == first
    assert [r.tag for r in rs] == ["a", "b", "c"] and rs[1].data_type == "float" and rs[1].source_time == 7
    assert rs[2].unit == "" and rs[2].attributes == {}
    assert [r.value for r in rs] == [1, 2.5, None] and rs[0].quality_code is None and rs[0].source_time is None
    with pytest.raises(PoisonRecord, match="different lengths"):
        columns({**batch, "qualities": [""]})
    with pytest.raises(PoisonRecord, match="longs"):
        columns({**batch, "longs": []})
    with pytest.raises(PoisonRecord, match="kind other than"):
        columns({**batch, "value_kinds": b"\x02\x03\x09"})
