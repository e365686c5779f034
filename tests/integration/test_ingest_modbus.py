"""ingest-modbus against the simulator's real pymodbus server, through real Kafka and the normalizer."""

from __future__ import annotations

import json
import select
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from otbus_core.codec import AvroCodec
from otbus_core.raw import unpack_values
from otbus_core.schemas import RAW_READING_BATCH, TAG_RECORD
from otbus_core.topics import raw_topic, tags_topic
from tests.support import (
    Infra,
    ModbusSimulator,
    Service,
    free_port,
    read_topic,
    tenant_normalizer,
    topic_records,
    wait_until,
)

pytestmark = pytest.mark.integration

CODEC = AvroCodec()

SOURCES = """
sources:
  - name: press1
    protocol: modbus
    endpoint: "modbus://127.0.0.1:{port}"
    unit_id: 1
    site: plant1
    area: pressing
    line: line4
    equipment: press1
    timeout_s: 1
    polling_interval_ms: 200
    registers:
      - {{address: 3000, data_type: int16, name: setpoint_offset, signal_type: setpoint}}
      - {{address: 3001, data_type: uint16, name: batch_size, signal_type: setpoint}}
      - {{address: 3002, data_type: int32, name: encoder_position, signal_type: position}}
      - {{address: 3004, data_type: uint32, name: cycles_total, signal_type: count}}
      - {{address: 3006, data_type: int64, name: energy_mwh, signal_type: energy}}
      - {{address: 3010, data_type: float32, name: oil_temperature, unit: degC}}
      - {{address: 3012, data_type: float64, name: line_pressure, unit: Pa}}
      - {{address: 3016, data_type: string, length: 5, name: recipe, signal_type: status}}
      - {{address: 3021, data_type: float32, word_order: little, name: gap_mm, signal_type: position}}
      - {{address: 3023, data_type: uint16, byte_order: little, name: mode_word, signal_type: status}}
      - {{address: 3950, data_type: uint16, name: faulty_register, signal_type: status}}
      - {{address: 0, type: coil, data_type: bool, count: 2, name: running, signal_type: status}}
      - {{address: 1, type: input, data_type: int16, scale: 0.1, name: motor_speed}}
      - {{address: 3001, data_type: uint16, unit_id: 2, name: batch_size, signal_type: setpoint}}
    poll_groups:
      - name: fast
        interval_ms: 50
        registers:
          - {{address: 1000, data_type: uint16, name: update_counter, signal_type: count}}
"""

EXPECTED = {  # tag_name -> value, for the registers with fixed values in the simulator's map
    "setpoint_offset": -1234,
    "batch_size": 54321,
    "encoder_position": -123456789,
    "cycles_total": 3_000_000_000,
    "energy_mwh": -1234567890123,
    "oil_temperature": 3.5,
    "line_pressure": -2.25e10,
    "recipe": "OTBUS-SIM",
    "gap_mm": 1.5,
    "mode_word": 0x1234,
}


def _tags(infra: Infra, tenant: str) -> list[dict[str, Any]]:
    return topic_records(infra, tags_topic(tenant), TAG_RECORD)


def _raw_values(infra: Infra, tenant: str) -> dict[str, Any]:
    """The latest value of each tag in the tenant's raw Modbus topic."""
    got: dict[str, Any] = {}
    for m in read_topic(infra.kafka_bootstrap, raw_topic(tenant, "modbus"), timeout=5):
        batch = CODEC.decode(m.value(), RAW_READING_BATCH)
        got.update(zip(batch["tags"], unpack_values(batch), strict=True))
    return got


def _latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["path"]: r for r in records}  # per-tag order is kept, so the last one is the latest


@pytest.fixture
def modbus_stack(infra: Infra, tenant: str, tmp_path: Path) -> Iterator[tuple[ModbusSimulator, Service, str]]:
    sim = ModbusSimulator(free_port())
    sim.start()
    sources = tmp_path / "sources.yaml"
    sources.write_text(SOURCES.format(port=sim.port))
    common = {**infra.env(), "OTBUS_METADATA_REFRESH_MS": "1000", "OTBUS_TENANTS": tenant}
    normalizer = tenant_normalizer(infra, tenant)
    adapter = Service(
        "ingest-modbus",
        "otbus_ingest_modbus",
        {
            **common,
            "OTBUS_TENANT": tenant,
            "OTBUS_SOURCES_FILE": str(sources),
            "OTBUS_STATE_DIR": str(tmp_path / "state"),
            "OTBUS_PEER_UNREACHABLE_AFTER_S": "2",
            "OTBUS_ADMIN_TOKEN": "admin-secret",
        },
        free_port(),
    )
    normalizer.start()
    adapter.start()
    try:
        yield sim, adapter, tenant
    finally:
        adapter.stop()
        normalizer.stop()
        sim.stop()


def test_every_configured_register_arrives_normalized(
    infra: Infra, modbus_stack: tuple[ModbusSimulator, Service, str]
) -> None:
    _sim, adapter, tenant = modbus_stack
    prefix = "plant1/pressing/line4/press1/"

    def complete() -> dict[str, dict[str, Any]] | None:
        latest = _latest(_tags(infra, tenant))
        names = {r["tag_name"] for r in latest.values()}
        want = set(EXPECTED) | {"faulty_register", "running_0", "running_1", "motor_speed", "update_counter"}
        return latest if want <= names and any(r["source_tag"] == "batch_size_unit2" for r in latest.values()) else None

    latest = wait_until(complete, 60, "every register in the tags topic")
    by_name = {r["tag_name"]: r for r in latest.values() if r["source_tag"] != "batch_size_unit2"}
    for name, want in EXPECTED.items():
        r = by_name[name]
        assert r["path"].startswith(prefix), r["path"]
        assert r["quality"] == "GOOD" and r["quality_code"] == 0, r
        assert r["value"] == pytest.approx(want) if isinstance(want, float) else r["value"] == want, (name, r)
    assert by_name["oil_temperature"]["unit"] == "degC" and by_name["oil_temperature"]["data_type"] == "DOUBLE"
    assert by_name["setpoint_offset"]["data_type"] == "INT64" and by_name["recipe"]["data_type"] == "STRING"
    assert by_name["oil_temperature"]["path"] == prefix + "temperature/oil_temperature"
    assert by_name["batch_size"]["path"] == prefix + "setpoint/batch_size"
    assert isinstance(by_name["running_0"]["value"], bool) and by_name["running_0"]["data_type"] == "BOOLEAN"
    assert isinstance(by_name["motor_speed"]["value"], float)
    # an exception response: BAD with the Modbus exception code, and the rest keeps flowing
    faulty = by_name["faulty_register"]
    assert faulty["quality"] == "BAD" and faulty["quality_code"] == 4 and faulty["value"] is None
    unit2 = next(r for r in latest.values() if r["source_tag"] == "batch_size_unit2")
    assert unit2["value"] == 54321 and unit2["path"] != by_name["batch_size"]["path"]
    # the fast poll group polls more often than the default one
    records = _tags(infra, tenant)
    counters = [r["value"] for r in records if r["tag_name"] == "update_counter"]
    offsets = [r for r in records if r["tag_name"] == "setpoint_offset"]
    assert len(counters) > 2 * len(offsets) > 0
    status = httpx.get(f"{adapter.url}/api/v1/sources/press1", timeout=5).json()["status"]
    assert status["connected"] and status["readings"] > 0


def test_device_outage_goes_bad_then_recovers(infra: Infra, modbus_stack: tuple[ModbusSimulator, Service, str]) -> None:
    sim, adapter, tenant = modbus_stack
    wait_until(lambda: any(r["tag_name"] == "update_counter" for r in _tags(infra, tenant)), 60, "first readings")
    sim.stop()
    # readiness goes false, and every point is published BAD (connection lost) once
    wait_until(lambda: httpx.get(f"{adapter.url}/readyz", timeout=5).status_code == 503, 30, "readyz 503")
    body = httpx.get(f"{adapter.url}/readyz", timeout=5).json()
    assert "press1" in body["checks"]["sources"]["error"]

    def lost() -> bool:
        latest = _latest(_tags(infra, tenant))
        return bool(latest) and all(r["quality"] == "BAD" and r["quality_code"] == 257 for r in latest.values())

    wait_until(lost, 30, "every tag BAD with code 257")
    sim.start()
    wait_until(lambda: httpx.get(f"{adapter.url}/readyz", timeout=5).status_code == 200, 60, "readyz 200 again")
    wait_until(
        lambda: (
            _latest(_tags(infra, tenant)).get("plant1/pressing/line4/press1/count/update_counter", {}).get("quality")
            == "GOOD"
        ),
        30,
        "GOOD readings after the device is back",
    )
    sources = httpx.get(f"{adapter.url}/api/v1/sources", timeout=5).json()["sources"]
    assert sources[0]["status"]["reconnects"] >= 1


def test_sources_api_adds_and_removes_at_run_time(modbus_stack: tuple[ModbusSimulator, Service, str]) -> None:
    sim, adapter, _tenant = modbus_stack
    url = f"{adapter.url}/api/v1/sources"
    doc = {
        "name": "press2",
        "protocol": "modbus",
        "endpoint": f"modbus://127.0.0.1:{sim.port}",
        "unit_id": 2,
        "registers": [{"address": 3010, "data_type": "float32", "name": "oil_temperature"}],
        "polling_interval_ms": 100,
    }
    assert httpx.post(url, json=doc, timeout=5).status_code == 401  # the admin token is set
    auth = {"Authorization": "Bearer admin-secret"}
    r = httpx.post(url, json=doc, headers=auth, timeout=5)
    assert r.status_code == 201 and r.json() == {"status": "ok", "message": "Source 'press2' added"}
    assert httpx.post(url, json=doc, headers=auth, timeout=5).status_code == 409
    bad = httpx.post(url, json={**doc, "name": "x", "registers": [{"address": 0, "data_type": "nope"}]}, headers=auth)
    assert bad.status_code == 422 and "registers.0.data_type" in bad.json()["detail"]

    def connected() -> bool:
        got = httpx.get(f"{url}/press2", timeout=5).json()
        return bool(got["status"]["connected"] and got["status"]["readings"] > 0)

    wait_until(connected, 30, "press2 reading")
    r = httpx.delete(f"{url}/press2", headers=auth, timeout=5)
    assert r.json() == {"status": "ok", "message": "Source 'press2' removed"}
    assert httpx.get(f"{url}/press2", timeout=5).status_code == 404
    assert [s["name"] for s in httpx.get(url, timeout=5).json()["sources"]] == ["press1"]
    assert json.loads(httpx.get(f"{adapter.url}/api/v1/status", timeout=5).text)["spool"]["dropped"] == {}


def test_rtu_framing_over_tcp(infra: Infra, tenant: str, tmp_path: Path) -> None:
    sim = ModbusSimulator(free_port(), "--framer", "rtu")
    sim.start()
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        f"""
sources:
  - name: rtu_gateway
    protocol: modbus
    endpoint: "modbus+rtu-tcp://127.0.0.1:{sim.port}"
    unit_id: 2
    polling_interval_ms: 100
    registers:
      - {{address: 3010, data_type: float32, name: oil_temperature}}
      - {{address: 3016, data_type: string, length: 5, name: recipe}}
"""
    )
    adapter = Service(
        "ingest-modbus",
        "otbus_ingest_modbus",
        {
            **infra.env(),
            "OTBUS_TENANT": tenant,
            "OTBUS_SOURCES_FILE": str(sources),
            "OTBUS_STATE_DIR": str(tmp_path / "st"),
        },
        free_port(),
    )
    adapter.start()
    try:

        def values() -> dict[str, Any] | None:
            got = _raw_values(infra, tenant)
            return got if len(got) == 2 else None

        assert wait_until(values, 30, "RTU readings") == {"oil_temperature": 3.5, "recipe": "OTBUS-SIM"}
    finally:
        adapter.stop()
        sim.stop()


class PtyLink:
    """Two pseudo-terminals joined back to back, like a null-modem cable between two serial ports."""

    def __init__(self) -> None:
        import os
        import pty
        import tty

        self._os = os
        self.master_a, slave_a = pty.openpty()
        self.master_b, slave_b = pty.openpty()
        for fd in (slave_a, slave_b):
            tty.setraw(fd)
        self.path_a, self.path_b = os.ttyname(slave_a), os.ttyname(slave_b)
        self._slaves = (slave_a, slave_b)  # held open so the links stay up between opens
        self.moved = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        peer = {self.master_a: self.master_b, self.master_b: self.master_a}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(peer), [], [], 0.1)
            for fd in ready:
                try:
                    data = self._os.read(fd, 4096)
                except OSError:
                    continue
                self._os.write(peer[fd], data)
                self.moved += len(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for fd in (self.master_a, self.master_b, *self._slaves):
            self._os.close(fd)


def test_serial_rtu_over_a_pseudo_terminal_pair(infra: Infra, tenant: str, tmp_path: Path) -> None:
    link = PtyLink()
    sim = ModbusSimulator(free_port(), "--serial", link.path_a, "--baudrate", "38400")
    sim.marker = b"Modbus RTU on"
    sim.start()
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        f"""
sources:
  - name: rtu_serial
    protocol: modbus
    endpoint: "modbus+rtu://{link.path_b}"
    baudrate: 38400
    unit_id: 1
    timeout_s: 1
    polling_interval_ms: 100
    registers:
      - {{address: 3004, data_type: uint32, name: cycles_total}}
      - {{address: 3012, data_type: float64, name: line_pressure}}
      - {{address: 3016, data_type: string, length: 5, name: recipe}}
"""
    )
    adapter = Service(
        "ingest-modbus",
        "otbus_ingest_modbus",
        {**infra.env(), "OTBUS_TENANT": tenant, "OTBUS_SOURCES_FILE": str(sources), "OTBUS_STATE_DIR": str(tmp_path)},
        free_port(),
    )
    adapter.start()
    try:

        def values() -> dict[str, Any] | None:
            got = _raw_values(infra, tenant)
            return got if len(got) == 3 else None

        got = wait_until(values, 30, "serial RTU readings")
        assert got == {"cycles_total": 3_000_000_000, "line_pressure": -2.25e10, "recipe": "OTBUS-SIM"}
        assert link.moved > 0, "nothing went over the pseudo-terminals"
    finally:
        adapter.stop()
        sim.stop()
        link.close()
