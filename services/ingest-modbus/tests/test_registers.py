"""Register maps: decoding of every type and order, read merging, and config errors."""

from __future__ import annotations

import pytest
from otbus_ingest_modbus.config import ModbusSource
from otbus_ingest_modbus.registers import RegisterEntry, decode, plan_reads, points
from otbus_ot_simulator.modbus import STATIC
from pydantic import ValidationError

from otbus_core.sources import SourceStore


def _point(**kw: object):  # type: ignore[no-untyped-def]
    return points([RegisterEntry.model_validate({"address": 0, **kw})], unit_id=1)[0]


@pytest.mark.parametrize(
    ("address", "spec", "want"),
    [
        (3000, {"data_type": "int16"}, -1234),
        (3001, {"data_type": "uint16"}, 54321),
        (3002, {"data_type": "int32"}, -123456789),
        (3004, {"data_type": "uint32"}, 3_000_000_000),
        (3006, {"data_type": "int64"}, -1234567890123),
        (3010, {"data_type": "float32"}, 3.5),
        (3012, {"data_type": "float64"}, -2.25e10),
        (3016, {"data_type": "string", "length": 5}, "OTBUS-SIM"),
        (3021, {"data_type": "float32", "word_order": "little"}, 1.5),
        (3023, {"data_type": "uint16", "byte_order": "little"}, 0x1234),
        (3001, {"data_type": "uint16", "scale": 0.01, "offset": -500}, 54321 * 0.01 - 500),
    ],
)
def test_values_decode_as_the_simulator_documents_them(address: int, spec: dict[str, object], want: object) -> None:
    p = _point(**spec)
    value = decode(p, words=STATIC[address][: p.width])
    assert value == pytest.approx(want) if isinstance(want, float) else value == want


def test_contiguous_reads_merge_up_to_the_protocol_limit() -> None:
    entries = [
        RegisterEntry(address=0, data_type="float32", count=100),  # 200 registers: two reads
        RegisterEntry(address=200, data_type="uint16"),  # contiguous with the above
        RegisterEntry(address=300, data_type="uint16"),  # a gap: its own read
        RegisterEntry(address=0, type="coil", data_type="bool", count=16),
        RegisterEntry(address=0, data_type="uint16", unit_id=2),  # another unit: its own read
    ]
    reads = plan_reads(points(entries, unit_id=1))
    spans = sorted((r.unit_id, r.table.value, r.address, r.count) for r in reads)
    assert spans == [
        (1, "coil", 0, 16),
        (1, "holding", 0, 124),
        (1, "holding", 124, 77),
        (1, "holding", 300, 1),
        (2, "holding", 0, 1),
    ]
    assert sum(len(r.points) for r in reads) == 100 + 1 + 1 + 16 + 1
    assert all(p.address + p.width <= r.address + r.count for r in reads for p in r.points)


def test_names_count_and_aliases() -> None:
    pts = points(
        [RegisterEntry.model_validate({"address": 10, "type": "holding_registers", "data_type": "float", "count": 2})],
        1,
    )
    assert [(p.tag, p.address, p.width) for p in pts] == [("holding_10_0", 10, 2), ("holding_10_1", 12, 2)]


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"address": 0, "type": "coil", "data_type": "int16"}, "holds bits"),
        ({"address": 0, "data_type": "bool"}, "coils or discrete"),
        ({"address": 65535, "data_type": "int32"}, "past address 65535"),
        ({"address": 0, "data_type": "complex"}, "data_type"),
        ({"address": -1}, "address"),
    ],
)
def test_bad_register_entries_name_the_problem(doc: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        RegisterEntry.model_validate(doc)


def test_a_sources_file_error_names_the_source_and_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "sources.yaml"
    f.write_text(
        """
sources:
  - {name: plc_ok, protocol: modbus, endpoint: "modbus://127.0.0.1:502", registers: [{address: 0}]}
  - {name: plc_bad, protocol: modbus, endpoint: "modbus://127.0.0.1:502", registers: [{address: 0, data_type: nope}]}
  - {name: an_opcua_server, protocol: opcua, endpoint: "opc.tcp://x:4840"}
"""
    )
    with pytest.raises(Exception, match=r"sources\[1\] \('plc_bad'\)\.registers\.0\.data_type"):
        SourceStore(ModbusSource, ["modbus"], f, tmp_path / "state")


def test_seed_style_source_is_accepted_and_api_changes_persist(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "sources.yaml"
    f.write_text(
        """
sources:
  - name: "plant_modbus_plc"
    protocol: "modbus"
    endpoint: "modbus://192.168.1.102:502"
    enabled: true
    slave_id: 1
    registers:
      - address: 0
        count: 100
        type: "holding"
        data_type: "float"
"""
    )
    store = SourceStore(ModbusSource, ["modbus"], f, tmp_path / "state")
    (src,) = store.all()
    assert src.unit_id == 1 and len(points(src.registers, 1)) == 100
    store.add(
        {"name": "plc2", "protocol": "modbus", "endpoint": "modbus://10.0.0.2:502", "registers": [{"address": 1}]}
    )
    store.remove("plant_modbus_plc")
    again = SourceStore(ModbusSource, ["modbus"], f, tmp_path / "state")
    assert again.names() == ["plc2"]
    with pytest.raises(Exception, match="exists already"):
        again.add(
            {"name": "plc2", "protocol": "modbus", "endpoint": "modbus://10.0.0.2:502", "registers": [{"address": 1}]}
        )
    with pytest.raises(Exception, match="endpoint"):
        again.add({"name": "plc3", "protocol": "modbus", "endpoint": "http://x", "registers": [{"address": 1}]})
