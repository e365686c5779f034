"""The spool drainer against real Kafka: records an earlier process got into Kafka without
hearing back are recognised after a restart and not sent twice; and the batcher in front
of it publishes at once while Kafka has everything, and batches while records queue up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from otbus_core.adapter import AdapterSettings, Batcher
from otbus_core.codec import AvroCodec
from otbus_core.ids import uuid7
from otbus_core.kafka import admin_client
from otbus_core.publisher import RawEncoder, Reading, SpoolDrainer
from otbus_core.schemas import RAW_READING_BATCH
from otbus_core.settings import OtbusSettings
from otbus_core.sources import SourceConfig
from otbus_core.spool import Spool, SpoolRecord
from otbus_core.topics import TopicSpec, ensure_topics, raw_topic
from tests.support import Infra, read_topic, wait_until

pytestmark = pytest.mark.integration

CODEC = AvroCodec()


def _drain(spool: Spool, settings: OtbusSettings) -> SpoolDrainer:
    """A drainer run until the spool is empty, then stopped."""
    drainer = SpoolDrainer(spool, settings)
    drainer.start()
    try:
        wait_until(lambda: spool.depth_records == 0, 30, "the spool drained")
    finally:
        drainer.stop()
    return drainer


def test_records_already_in_kafka_are_acknowledged_not_sent_again(infra: Infra, tenant: str, tmp_path: Path) -> None:
    settings = OtbusSettings(kafka_bootstrap=infra.kafka_bootstrap)
    topic = raw_topic(tenant, "modbus")
    ensure_topics(admin_client(settings), [TopicSpec(topic, 3)])
    # an unrelated record of another source on the same topic, and one of ours from long ago
    other = Producer({"bootstrap.servers": infra.kafka_bootstrap})
    other.produce(topic, b"other", b"another-source", headers=[("ce_id", uuid7().encode())])
    ids = [uuid7().encode() for _ in range(10)]
    records = [SpoolRecord(topic, b"dev1", f"r{i}".encode(), [("ce_id", i_d)], 3) for i, i_d in enumerate(ids)]
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    spool.append(records)
    spool.close()
    # the earlier process: its first four records reached Kafka, the acknowledgments did not reach it
    for r in records[:4]:
        other.produce(r.topic, r.value, r.key, headers=r.headers)
    assert other.flush(10) == 0

    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    assert spool.depth_records == 10
    try:
        drainer = _drain(spool, settings)
    finally:
        spool.close()
    assert drainer.skipped_resends == 4
    assert drainer.delivered_records == 6

    got = [m for m in read_topic(infra.kafka_bootstrap, topic) if m.key() == b"dev1"]
    assert [dict(m.headers())["ce_id"] for m in got] == ids  # each once, in order
    assert [m.value() for m in got] == [f"r{i}".encode() for i in range(10)]


def test_a_fresh_spool_does_not_look_in_kafka(infra: Infra, tenant: str, tmp_path: Path) -> None:
    settings = OtbusSettings(kafka_bootstrap=infra.kafka_bootstrap)
    topic = raw_topic(tenant, "modbus")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    drainer = SpoolDrainer(spool, settings)
    drainer.start()
    try:
        spool.append([SpoolRecord(topic, b"dev1", b"v", [("ce_id", uuid7().encode())], 1)])
        wait_until(lambda: spool.depth_records == 0, 30, "the spool drained")
    finally:
        drainer.stop()
        spool.close()
    assert drainer.skipped_resends == 0 and drainer.delivered_records == 1


class _Runtime:
    """What the batcher uses of an adapter runtime: settings, encoder and spool (all real)."""

    def __init__(self, settings: AdapterSettings, spool: Spool) -> None:
        self.settings = settings
        self.spool = spool
        self.encoder = RawEncoder(AvroCodec())


def _readings_per_record(bootstrap: str, topic: str) -> list[int]:
    return [len(CODEC.decode(m.value(), RAW_READING_BATCH)["tags"]) for m in read_topic(bootstrap, topic)]


def test_readings_go_out_at_once_while_kafka_has_everything(infra: Infra, tenant: str, tmp_path: Path) -> None:
    # a linger far longer than the test: only the idle rule (and the drainer's wake-up) can publish
    settings = AdapterSettings(kafka_bootstrap=infra.kafka_bootstrap, tenant=tenant)
    src = SourceConfig(name="dev1", protocol="modbus", endpoint="modbus://127.0.0.1:1")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    runtime = _Runtime(settings, spool)
    spool.append(runtime.encoder.records(tenant, "modbus", "dev1", {}, [Reading("a", 0)]))  # queued
    drainer = SpoolDrainer(spool, settings)
    batcher = Batcher(runtime, 1000, linger=600.0, idle=lambda: spool.depth_records == 0)  # type: ignore[arg-type]
    drainer.on_idle = batcher.wake
    batcher.start()
    try:
        batcher.add(src, "modbus", [Reading("a", 1)])  # a record is queued: this one waits
        time.sleep(0.5)
        assert spool.depth_records == 1
        drainer.start()  # delivers the queued record, and its acknowledgment wakes the batcher
        wait_until(lambda: drainer.delivered_readings == 2, 20, "the waiting reading delivered")
        batcher.add(src, "modbus", [Reading("a", 2)])  # nothing queued: out at once
        wait_until(lambda: drainer.delivered_readings == 3, 20, "the third reading delivered")
    finally:
        batcher.stop()
        drainer.stop()
        spool.close()
    assert _readings_per_record(infra.kafka_bootstrap, raw_topic(tenant, "modbus")) == [1, 1, 1]


def test_readings_wait_for_company_while_records_are_queued(infra: Infra, tenant: str, tmp_path: Path) -> None:
    settings = AdapterSettings(kafka_bootstrap=infra.kafka_bootstrap, tenant=tenant)
    src = SourceConfig(name="dev1", protocol="modbus", endpoint="modbus://127.0.0.1:1")
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    batcher = Batcher(_Runtime(settings, spool), 1000, linger=5.0, idle=lambda: spool.depth_records == 0)  # type: ignore[arg-type]
    batcher.start()
    try:
        batcher.add(src, "modbus", [Reading("a", 0)])  # nothing queued: out at once, not after 5 s
        wait_until(lambda: spool.depth_records == 1, 2, "the first record spooled")
        # no drainer yet, so that record stays queued: the next readings wait for the linger
        for i in range(1, 6):
            batcher.add(src, "modbus", [Reading("a", i)])
        time.sleep(1.0)
        assert spool.depth_records == 1
        wait_until(lambda: spool.depth_records == 2, 20, "the second record spooled")
        _drain(spool, settings)
    finally:
        batcher.stop()
        spool.close()
    assert _readings_per_record(infra.kafka_bootstrap, raw_topic(tenant, "modbus")) == [1, 5]
