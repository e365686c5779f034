"""librdkafka configuration shared by producers, consumers and admin clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Set
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from otbus_core.settings import OtbusSettings

__all__ = ["Headers", "admin_client", "base_config", "find_event_ids", "headers_of", "kafka_reachable", "position"]

Headers = list[tuple[str, str | bytes | None]]


_RDKAFKA_LOG = logging.getLogger("librdkafka")


def base_config(settings: OtbusSettings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": settings.service_name,
        "logger": _RDKAFKA_LOG,
        **settings.kafka_config,
    }


def admin_client(settings: OtbusSettings) -> AdminClient:
    return AdminClient(base_config(settings))


def kafka_reachable(admin: AdminClient, timeout: float = 2.0) -> None:
    """Raise unless the broker answers a metadata request within `timeout`."""
    md = admin.list_topics(timeout=timeout)
    if not md.brokers:
        raise ConnectionError("no broker in the cluster metadata")


def position(msg: Message) -> tuple[str, int, int]:
    """topic, partition and offset of a consumed message (never None for one)."""
    topic, part, off = msg.topic(), msg.partition(), msg.offset()
    if topic is None or part is None or off is None:
        raise ValueError("message has no position (not a consumed message)")
    return topic, part, off


def headers_of(msg: Message) -> Headers:
    h = msg.headers()
    if h is None:
        return []
    if isinstance(h, dict):
        return list(h.items())
    return list(h)


def find_event_ids(
    config: dict[str, Any],
    topics: Iterable[str],
    ids: Set[bytes],
    since_ms: int,
    *,
    max_records: int = 2_000_000,
    timeout: float = 30.0,
) -> tuple[set[bytes], bool]:
    """Which of `ids` (`ce_id` header values) are in `topics` among records timestamped from `since_ms` on.

    Reads each partition from the first offset at or after `since_ms` to its end at call
    time, without a consumer group. Returns the ids found and whether the whole range was
    read (False when `max_records` or `timeout` cut it short). Raises KafkaException when
    the broker cannot be asked.
    """
    found: set[bytes] = set()
    if not ids:
        return found, True
    c = Consumer({**config, "group.id": "otbus-id-scan", "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        start: list[TopicPartition] = []
        for topic in topics:
            md = c.list_topics(topic, timeout=10)
            t = md.topics.get(topic)
            if t is None or (t.error is not None and t.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
                continue  # no such topic: nothing of ours can be in it
            if t.error is not None:  # e.g. no leader yet after a restart: not an answer
                raise KafkaException(t.error)
            parts = [TopicPartition(topic, p, since_ms) for p in t.partitions]
            for tp in c.offsets_for_times(parts, timeout=10):
                if tp.error is not None:
                    raise KafkaException(tp.error)
                if tp.offset >= 0:  # else nothing that recent in this partition
                    start.append(tp)
        ends: dict[tuple[str, int], int] = {}
        for tp in start:
            _low, high = c.get_watermark_offsets(tp, timeout=10)
            if high > tp.offset:
                ends[(tp.topic, tp.partition)] = high
        if not ends:
            return found, True
        c.assign([tp for tp in start if (tp.topic, tp.partition) in ends])
        deadline = time.monotonic() + timeout
        seen = 0
        while ends and seen < max_records and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ends.pop((m.topic() or "", m.partition() or 0), None)
                        continue
                    raise KafkaException(err)
                seen += 1
                topic, part, off = position(m)
                if off + 1 >= ends.get((topic, part), 0):
                    ends.pop((topic, part), None)
                for k, v in headers_of(m):
                    if k == "ce_id":
                        if isinstance(v, bytes) and v in ids:
                            found.add(v)
                        break
        return found, not ends
    finally:
        c.close()
