"""The spool drainer against real Kafka: records an earlier process got into Kafka without
hearing back are recognised after a restart and not sent twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Producer

from otbus_core.ids import uuid7
from otbus_core.kafka import admin_client
from otbus_core.publisher import SpoolDrainer
from otbus_core.settings import OtbusSettings
from otbus_core.spool import Spool, SpoolRecord
from otbus_core.topics import TopicSpec, ensure_topics, raw_topic
from tests.support import Infra, read_topic, wait_until

pytestmark = pytest.mark.integration


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
    drainer = SpoolDrainer(spool, settings)
    drainer.start()
    try:
        wait_until(lambda: spool.depth_records == 0, 30, "the spool drained")
    finally:
        drainer.stop()
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
