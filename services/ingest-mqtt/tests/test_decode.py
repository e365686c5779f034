"""MQTT payload decoders: JSON mapping, bare values, and the Sparkplug B host state machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from otbus_ingest_mqtt.config import JsonMapping
from otbus_ingest_mqtt.decode import STALE, JsonDecoder, Rejected, SparkplugDecoder, ValueDecoder, rebirth_command

from otbus_core.publisher import Reading
from otbus_core.sparkplug import DT, encode_payload, pb

T0 = 1_767_225_600_000  # ms


def test_json_mapping_with_nested_paths_and_arrays() -> None:
    d = JsonDecoder(JsonMapping(value="data.v", timestamp="ts", quality="q", tag="name", unit="u"))
    body = json.dumps(
        [{"name": "a/b", "data": {"v": 1.5}, "ts": T0, "q": 192, "u": "bar"}, {"name": "c", "data": {"v": True}}]
    )
    a, b = d("plant/x", body.encode())
    assert (a.tag, a.value, a.source_time, a.quality_code, a.unit) == ("a/b", 1.5, T0 * 1000, 192, "bar")
    assert (b.tag, b.value, b.quality_code) == ("c", True, None)


def test_json_defaults_take_the_topic_as_tag_and_iso_times() -> None:
    (r,) = JsonDecoder(JsonMapping())(
        "sensors/line1/temp", b'{"value": 21, "timestamp": "2026-01-01T00:00:00Z", "quality": "GOOD"}'
    )
    assert (r.tag, r.value, r.source_time, r.quality) == ("sensors/line1/temp", 21, T0 * 1000, "GOOD")


@pytest.mark.parametrize(
    ("body", "kind", "match"),
    [
        (b"{not json", "InvalidJson", "not JSON"),
        (b'{"val": 1}', "MissingField", "'value' is missing"),
        (b'{"value": {"a": 1}}', "WrongType", "not dict"),
        (b'{"value": 1, "timestamp": "yesterday"}', "WrongType", "not ISO 8601"),
        (b'{"value": 1, "timestamp": "2026-01-01T00:00:00"}', "WrongType", "no time zone"),
        (b'[{"value": 1}, 7]', "WrongType", "item 1"),
    ],
)
def test_bad_json_is_rejected_with_the_reason(body: bytes, kind: str, match: str) -> None:
    with pytest.raises(Rejected, match=match) as e:
        JsonDecoder(JsonMapping())("t", body)
    assert e.value.error_type == kind


def test_bare_values() -> None:
    d = ValueDecoder()
    assert [r.value for r in d("t", b"21.5") + d("t", b"true") + d("t", b"running")] == [21.5, True, "running"]


def _birth(seq: int = 0, bd: int = 0) -> bytes:
    return encode_payload(
        [
            {"name": "bdSeq", "datatype": DT.Int64, "value": bd},
            {"name": "Node Control/Rebirth", "datatype": DT.Boolean, "value": False},
            {"name": "Temperature", "alias": 1, "datatype": DT.Float, "value": 20.5},
            {"name": "Count", "alias": 2, "datatype": DT.Int32, "value": -5},
            {"name": "Running", "alias": 3, "datatype": DT.Boolean, "value": True, "quality": 192},
        ],
        seq,
        T0,
    )


def test_sparkplug_birth_then_data_by_alias() -> None:
    asked: list[tuple[str, str]] = []
    d = SparkplugDecoder(lambda g, e: asked.append((g, e)), rebirth_every_s=0)
    born = d("spBv1.0/plant/NBIRTH/edge1", _birth())
    assert {r.tag: r.value for r in born} == {
        "plant/edge1/Temperature": 20.5,
        "plant/edge1/Count": -5,
        "plant/edge1/Running": True,
    }
    assert next(r for r in born if r.tag.endswith("Running")).quality_code == 192
    data = encode_payload(
        [{"alias": 1, "datatype": DT.Float, "value": 21.0}, {"alias": 2, "datatype": DT.Int32, "value": 7}],
        1,
        T0 + 1000,
    )
    (t, c) = d("spBv1.0/plant/NDATA/edge1", data)
    assert (t.tag, t.value, t.data_type, t.source_time) == (
        "plant/edge1/Temperature",
        21.0,
        "Float",
        (T0 + 1000) * 1000,
    )
    assert (c.tag, c.value, c.data_type) == ("plant/edge1/Count", 7, "Int32")
    # readings are built with tuple.__new__ (fast): each is a whole Reading, fields in place
    assert t == Reading(tag="plant/edge1/Temperature", value=21.0, source_time=(T0 + 1000) * 1000, data_type="Float")
    assert type(t) is Reading and (t.unit, t.attributes, t.quality) == ("", None, "")
    assert asked == []


def test_sparkplug_seq_gap_requests_a_rebirth_and_still_reads() -> None:
    asked: list[tuple[str, str]] = []
    d = SparkplugDecoder(lambda g, e: asked.append((g, e)), rebirth_every_s=0)
    d("spBv1.0/plant/NBIRTH/edge1", _birth())
    got = d("spBv1.0/plant/NDATA/edge1", encode_payload([{"alias": 1, "datatype": DT.Float, "value": 1.0}], 5, T0))
    assert [r.value for r in got] == [1.0]
    assert asked == [("plant", "edge1")] and d.stats.seq_gaps == 1
    d("spBv1.0/plant/NDATA/edge1", encode_payload([{"alias": 1, "datatype": DT.Float, "value": 2.0}], 6, T0))
    assert d.stats.seq_gaps == 1  # back in step


def test_sparkplug_aliases_are_remembered_until_the_next_birth() -> None:
    d = SparkplugDecoder(None, rebirth_every_s=0)
    birth = [{"name": "Zero", "alias": 0, "datatype": DT.Double, "value": 1.0}]
    d("spBv1.0/plant/NBIRTH/edge1", encode_payload(birth, 0, T0))
    data = encode_payload([{"alias": 0, "datatype": DT.Double, "value": 2.0}], 1, T0)
    assert [(r.tag, r.value) for r in d("spBv1.0/plant/NDATA/edge1", data)] == [("plant/edge1/Zero", 2.0)]
    nameless = encode_payload([{"datatype": DT.Double, "value": 3.0}], 2, T0)  # no name, no alias
    with pytest.raises(Rejected) as e:
        d("spBv1.0/plant/NDATA/edge1", nameless)
    assert e.value.error_type == "UnknownAlias"
    # a new birth gives alias 0 to another metric: data reads as that one
    reborn = [{"name": "Other", "alias": 0, "datatype": DT.Int32, "value": 1}]
    d("spBv1.0/plant/NBIRTH/edge1", encode_payload(reborn, 0, T0))
    data = encode_payload([{"alias": 0, "datatype": DT.Int32, "value": 5}], 1, T0)
    assert [(r.tag, r.value, r.data_type) for r in d("spBv1.0/plant/NDATA/edge1", data)] == [
        ("plant/edge1/Other", 5, "Int32")
    ]


def test_sparkplug_data_without_birth_is_rejected_and_asks_for_one() -> None:
    asked: list[tuple[str, str]] = []
    d = SparkplugDecoder(lambda g, e: asked.append((g, e)), rebirth_every_s=0)
    with pytest.raises(Rejected, match="before the NBIRTH") as e:
        d("spBv1.0/plant/NDATA/edge9", encode_payload([{"alias": 1, "datatype": DT.Float, "value": 1.0}], 3, T0))
    assert e.value.error_type == "MissingBirth" and asked == [("plant", "edge9")]
    with pytest.raises(Rejected, match="not a Sparkplug B payload"):
        d("spBv1.0/plant/NDATA/edge1", b"\xff\xff\xff garbage")


def test_sparkplug_deaths_mark_every_metric_bad() -> None:
    d = SparkplugDecoder()
    d("spBv1.0/plant/NBIRTH/edge1", _birth(bd=3))
    dev = encode_payload([{"name": "Speed", "alias": 10, "datatype": DT.Double, "value": 3.0}], 1, T0)
    assert [r.tag for r in d("spBv1.0/plant/DBIRTH/edge1/motor", dev)] == ["plant/edge1/motor/Speed"]
    (gone,) = d("spBv1.0/plant/DDEATH/edge1/motor", encode_payload([], 2, T0))
    assert (gone.tag, gone.value, gone.quality_code) == ("plant/edge1/motor/Speed", None, STALE)
    # an NDEATH of an older session (other bdSeq) is ignored; the right one kills every metric
    assert (
        d("spBv1.0/plant/NDEATH/edge1", encode_payload([{"name": "bdSeq", "datatype": DT.Int64, "value": 2}], None, T0))
        == []
    )
    dead = d(
        "spBv1.0/plant/NDEATH/edge1", encode_payload([{"name": "bdSeq", "datatype": DT.Int64, "value": 3}], None, T0)
    )
    assert {r.tag for r in dead} == {"plant/edge1/Temperature", "plant/edge1/Count", "plant/edge1/Running"}
    assert all(r.quality_code == STALE and r.value is None for r in dead)


def test_rebirth_command_is_the_node_control_metric() -> None:
    p = pb.Payload()
    p.ParseFromString(rebirth_command(T0))
    (m,) = p.metrics
    assert (m.name, m.datatype, m.boolean_value) == ("Node Control/Rebirth", DT.Boolean, True)


def test_birth_tables_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "spb.json"
    d = SparkplugDecoder(state_path=state, save_delay_s=0.2)
    d("spBv1.0/plant/NBIRTH/edge1", _birth())
    assert not state.exists()  # written a moment later, once for a burst of BIRTHs
    deadline = time.monotonic() + 5
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.exists()  # by the timer, with no further message
    again = SparkplugDecoder(state_path=state, save_delay_s=60)  # a restarted adapter: no BIRTH seen since
    (r,) = again("spBv1.0/plant/NDATA/edge1", encode_payload([{"alias": 1, "datatype": DT.Float, "value": 9.0}], 7, T0))
    assert (r.tag, r.value) == ("plant/edge1/Temperature", 9.0)
    again("spBv1.0/plant/NDEATH/edge1", encode_payload([{"name": "bdSeq", "datatype": DT.Int64, "value": 0}], None, T0))
    again.flush()  # what the source does when it stops: the death is written now
    with pytest.raises(Rejected, match="before the NBIRTH"):
        SparkplugDecoder(state_path=state)("spBv1.0/plant/NDATA/edge1", encode_payload([], 8, T0))
