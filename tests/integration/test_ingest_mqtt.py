"""ingest-mqtt against real Mosquitto, real Kafka and the normalizer: JSON and Sparkplug B from
the simulator, bad payloads to the DLQ, and a persistent session across an adapter restart."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from otbus_core.schemas import DEAD_LETTER, TAG_RECORD
from otbus_core.sparkplug import DT, encode_payload
from otbus_core.topics import dlq_topic, tags_topic
from tests.support import (
    ARTIFACTS,
    Infra,
    Service,
    free_port,
    infra_cmd,
    start_infra,
    topic_records,
    wait_until,
)

pytestmark = pytest.mark.integration

SIM = [sys.executable, "-m", "otbus_ot_simulator"]


@pytest.fixture(scope="module")
def mqtt_url() -> str:
    return start_infra("mosquitto").mqtt_url


def _tags(infra: Infra, tenant: str) -> list[dict[str, Any]]:
    return topic_records(infra, tags_topic(tenant), TAG_RECORD)


def _dlq(infra: Infra, tenant: str) -> list[dict[str, Any]]:
    return topic_records(infra, dlq_topic(tenant), DEAD_LETTER)


def _simulate(*args: str, timeout: float = 120) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    p = subprocess.run(
        [sys.executable, "-m", "otbus_ot_simulator", *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return p.stdout


def _publish(url: str, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    """Publish with a plain paho client (what any device or gateway would do)."""
    u = urlsplit(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{uuid.uuid4().hex[:8]}")
    c.connect(u.hostname or "127.0.0.1", u.port or 1883, 30)
    c.loop_start()
    infos = [c.publish(t, body, qos=qos) for t, body in messages]
    for i in infos:
        i.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()


class Adapter:
    def __init__(self, infra: Infra, tenant: str, tmp: Path, sources: str) -> None:
        f = tmp / "sources.yaml"
        f.write_text(sources)
        self.service = Service(
            "ingest-mqtt",
            "otbus_ingest_mqtt",
            {
                **infra.env(),
                "OTBUS_TENANT": tenant,
                "OTBUS_SOURCES_FILE": str(f),
                "OTBUS_STATE_DIR": str(tmp / "state"),
                "OTBUS_PEER_UNREACHABLE_AFTER_S": "3",
            },
            free_port(),
        )

    def sources(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.service.url}/api/v1/sources", timeout=5).json()["sources"]  # type: ignore[no-any-return]


def test_json_from_the_simulator_bad_payloads_and_a_kept_session(
    infra: Infra, tenant: str, tmp_path: Path, mqtt_url: str, normalizer: Service
) -> None:
    prefix = f"otbus-test/{tenant}"
    adapter = Adapter(
        infra,
        tenant,
        tmp_path,
        f"""
sources:
  - name: broker
    protocol: mqtt
    endpoint: "{mqtt_url}"
    client_id: "otbus-test-{tenant}"
    topics: ["{prefix}/#"]
    qos: 1
    site: plant1
    area: assembly
    line: line2
""",
    )
    adapter.service.start()
    try:
        out = _simulate(
            "mqtt-json", "--url", mqtt_url, "--prefix", prefix, "--tags", "40", "--count", "400", "--rate", "400"
        )
        assert "published 400" in out
        wait_until(lambda: len(_tags(infra, tenant)) >= 400, 60, "400 tag records")
        tags = _tags(infra, tenant)
        assert len(tags) == 400
        assert all(r["quality"] == "GOOD" and r["protocol"] == "mqtt" and r["source_id"] == "broker" for r in tags)
        assert all(r["path"].startswith("plant1/assembly/line2/") for r in tags)
        assert len({r["source_tag"] for r in tags}) == 40

        # bad payloads: each to the DLQ with its reason; the good one among them still arrives
        _publish(
            mqtt_url,
            [
                (f"{prefix}/bad/json", b"{not json"),
                (f"{prefix}/bad/type", b'{"value": {"nested": 1}}'),
                (f"{prefix}/bad/missing", b'{"reading": 1}'),
                (f"{prefix}/good/after", b'{"value": 42.5, "timestamp": 1767225600000}'),
            ],
        )
        wait_until(lambda: len(_dlq(infra, tenant)) >= 3, 30, "3 dead letters")
        reasons = sorted(d["reason"] for d in _dlq(infra, tenant))
        assert len(reasons) == 3
        assert any("not JSON" in r for r in reasons) and any("'value' is missing" in r for r in reasons)
        assert any("not dict" in r for r in reasons)
        assert {d["original_topic"] for d in _dlq(infra, tenant)} == {
            f"mqtt:{prefix}/bad/json",
            f"mqtt:{prefix}/bad/type",
            f"mqtt:{prefix}/bad/missing",
        }
        wait_until(lambda: any(r["value"] == 42.5 for r in _tags(infra, tenant)), 30, "the good message")
        assert adapter.sources()[0]["status"]["rejected"] == 3

        # the adapter is away while QoS 1 messages are published: its session keeps them
        assert adapter.service.stop() in (0, -15)
        _publish(mqtt_url, [(f"{prefix}/offline/t{i % 10}", b'{"value": %d}' % i) for i in range(200)])
        adapter.service.start()
        wait_until(lambda: sum(1 for r in _tags(infra, tenant) if "/offline/" in r["source_tag"]) >= 200, 60, "offline")
        offline = [r for r in _tags(infra, tenant) if "/offline/" in r["source_tag"]]
        assert sorted(r["value"] for r in offline) == list(range(200))
        for t in range(10):  # per tag in the order published
            assert [r["value"] for r in offline if r["source_tag"].endswith(f"/t{t}")] == list(range(t, 200, 10))
    finally:
        adapter.service.stop()


def test_sparkplug_births_data_rebirth_and_death(
    infra: Infra, tenant: str, tmp_path: Path, mqtt_url: str, normalizer: Service
) -> None:
    group = f"g{tenant}"
    log = ARTIFACTS / f"simulator-sparkplug-{tenant}.log"
    with log.open("wb") as f:
        args = [
            "--url",
            mqtt_url,
            "--group",
            group,
            "--nodes",
            "2",
            "--devices",
            "2",
            "--tags",
            "40",
            "--interval",
            "0.2",
        ]
        sim = subprocess.Popen(
            [*SIM, "sparkplug", *args],
            stdout=f,
            stderr=f,
        )
    # the adapter starts after the nodes were born: it must ask for rebirths (NCMD) to learn the aliases
    time.sleep(2)
    adapter = Adapter(
        infra,
        tenant,
        tmp_path,
        f"""
sources:
  - name: spb
    protocol: mqtt
    endpoint: "{mqtt_url}"
    client_id: "otbus-test-spb-{tenant}"
    topics: ["spBv1.0/{group}/#"]
    site: plant1
    area: packaging
""",
    )
    adapter.service.start()
    try:

        def all_metrics() -> dict[str, dict[str, Any]] | None:
            latest = {r["source_tag"]: r for r in _tags(infra, tenant)}
            return latest if len(latest) >= 40 else None

        latest = wait_until(all_metrics, 60, "every Sparkplug metric")
        assert len(latest) == 40
        assert {tag.split("/")[1] for tag in latest} == {"edge0", "edge1"}
        assert all(r["protocol"] == "sparkplug" and r["quality"] == "GOOD" for r in latest.values())
        assert {r["data_type"] for r in latest.values()} <= {"DOUBLE", "INT64", "BOOLEAN"}
        dead = _dlq(infra, tenant)
        assert dead and all(d["error_type"] == "MissingBirth" for d in dead)  # the data before the rebirths
    finally:
        sim.terminate()
        sim.wait(30)
    try:
        # the nodes died (DDEATH, NDEATH): every metric is now BAD
        def all_bad() -> bool:
            latest = {r["source_tag"]: r for r in _tags(infra, tenant)}
            return len(latest) == 40 and all(r["quality"] == "BAD" and r["value"] is None for r in latest.values())

        wait_until(all_bad, 30, "every metric BAD after the deaths")
        assert b"published" in log.read_bytes()
    finally:
        adapter.service.stop()


def test_sparkplug_births_are_kept_across_an_adapter_restart(
    infra: Infra, tenant: str, tmp_path: Path, mqtt_url: str, normalizer: Service
) -> None:
    """Data after a restart, with no BIRTH since, is read by alias from the kept tables: no rebirth, no DLQ."""
    group, t0 = f"k{tenant}", 1767225600000
    u = urlsplit(mqtt_url)
    commands: list[str] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-ncmd-{uuid.uuid4().hex[:8]}")
    watcher.on_message = lambda _c, _u, msg: commands.append(msg.topic)
    watcher.connect(u.hostname or "127.0.0.1", u.port or 1883, 30)
    watcher.subscribe(f"spBv1.0/{group}/+/#", qos=0)
    watcher.loop_start()
    adapter = Adapter(
        infra,
        tenant,
        tmp_path,
        f"""
sources:
  - name: spb
    protocol: mqtt
    endpoint: "{mqtt_url}"
    client_id: "otbus-test-keep-{tenant}"
    topics: ["spBv1.0/{group}/#"]
""",
    )

    def subscribed() -> bool:
        return bool(adapter.sources()[0]["status"]["connected"])

    def spb(kind: str, metrics: list[dict[str, Any]], seq: int, device: str = "") -> tuple[str, bytes]:
        topic = f"spBv1.0/{group}/{kind}/edge1" + (f"/{device}" if device else "")
        return topic, encode_payload(metrics, seq, t0 + seq)

    def latest() -> dict[str, Any]:
        return {r["source_tag"]: r["value"] for r in _tags(infra, tenant)}

    try:
        adapter.service.start()
        wait_until(subscribed, 30, "the adapter subscribed")
        births = [
            spb(
                "NBIRTH",
                [
                    {"name": "bdSeq", "datatype": DT.Int64, "value": 0},
                    {"name": "Temperature", "alias": 1, "datatype": DT.Double, "value": 20.5},
                ],
                0,
            ),
            spb("DBIRTH", [{"name": "Speed", "alias": 10, "datatype": DT.Int32, "value": 100}], 1, "press1"),
        ]
        _publish(mqtt_url, births, qos=0)
        born = {f"{group}/edge1/Temperature": 20.5, f"{group}/edge1/press1/Speed": 100}
        wait_until(lambda: latest() == born, 30, "the birth values")
        state = tmp_path / "state" / "ingest-mqtt" / "sparkplug" / "spb.json"
        assert state.exists() and "Temperature" in state.read_text()

        assert adapter.service.stop() in (0, -15)
        adapter.service.start()
        wait_until(subscribed, 30, "the restarted adapter subscribed")
        data = [
            spb("NDATA", [{"alias": 1, "datatype": DT.Double, "value": 99.5}], 2),
            spb("DDATA", [{"alias": 10, "datatype": DT.Int32, "value": 7}], 3, "press1"),
        ]
        _publish(mqtt_url, data, qos=0)
        after = {f"{group}/edge1/Temperature": 99.5, f"{group}/edge1/press1/Speed": 7}
        wait_until(lambda: latest() == after, 30, "the data after the restart, read by alias")
        assert _dlq(infra, tenant) == []
        spb_status = adapter.sources()[0]["status"]
        assert spb_status["rejected"] == 0
        time.sleep(1)  # a rebirth request would be published right after the data
        assert [c for c in commands if "/NCMD/" in c] == [], "a rebirth was asked although the BIRTH was kept"
    finally:
        watcher.loop_stop()
        watcher.disconnect()
        adapter.service.stop()


def test_broker_outage_reconnects_and_readiness_tells(
    infra: Infra, tenant: str, tmp_path: Path, mqtt_url: str, normalizer: Service
) -> None:
    prefix = f"otbus-test/{tenant}"
    adapter = Adapter(
        infra,
        tenant,
        tmp_path,
        f"""
sources:
  - name: broker
    protocol: mqtt
    endpoint: "{mqtt_url}"
    client_id: "otbus-test-outage-{tenant}"
    topics: ["{prefix}/#"]
    reconnect_initial_s: 0.5
    reconnect_max_s: 2
""",
    )
    adapter.service.start()
    try:
        _publish(mqtt_url, [(f"{prefix}/before", b'{"value": 1}')])
        wait_until(lambda: any(r["source_tag"].endswith("/before") for r in _tags(infra, tenant)), 30, "before")
        infra_cmd("stop", "mosquitto")
        try:
            wait_until(lambda: httpx.get(f"{adapter.service.url}/readyz", timeout=5).status_code == 503, 30, "503")
            body = httpx.get(f"{adapter.service.url}/readyz", timeout=5).json()
            assert "broker" in body["checks"]["sources"]["error"]
        finally:
            infra_cmd("start", "mosquitto")
        wait_until(lambda: httpx.get(f"{adapter.service.url}/readyz", timeout=5).status_code == 200, 60, "200 again")
        _publish(mqtt_url, [(f"{prefix}/after", b'{"value": 2}')])
        wait_until(lambda: any(r["source_tag"].endswith("/after") for r in _tags(infra, tenant)), 30, "after")
        status = adapter.sources()[0]["status"]
        assert status["connected"] and status["reconnects"] >= 1
        metrics = httpx.get(f"{adapter.service.url}/metrics", timeout=5).text
        assert 'otbus_adapter_reconnects_total{source="broker"}' in metrics
        assert 'otbus_adapter_connected{source="broker"} 1.0' in metrics
        assert "otbus_spool_records 0.0" in metrics
    finally:
        adapter.service.stop()
