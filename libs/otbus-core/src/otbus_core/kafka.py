"""librdkafka configuration shared by producers, consumers and admin clients."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Message
from confluent_kafka.admin import AdminClient

from otbus_core.settings import OtbusSettings

__all__ = ["Headers", "admin_client", "base_config", "headers_of", "kafka_reachable", "position"]

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
